"""End-to-end `bulkformer demo` on the bundled data, reduced (few genes, few steps): the real
preprocess → pretrain → evaluate chain."""

import json

import pandas as pd
import pytest

import bulkformer.eval.demo as demo
from bulkformer.cli import main


def test_demo_reduced(tmp_path, capsys):
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--genes",
            "32",
            "--steps",
            "2",
            "--epochs",
            "1",
            "--folds",
            "3",
            "--seeds",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| linear_probe |" in out and "| logreg_log1p_tpm |" in out and "| knn |" in out
    assert "| rf_bulkformer |" in out and "| pca |" in out and "over 2 seeds" in out
    assert f"report: {tmp_path / 'd' / 'report' / 'report.md'}" in out
    d = tmp_path / "d"
    meta = json.loads((d / "pretrain" / "pretrained" / "bulkformer.json").read_text())
    manifest = json.loads((d / "corpus_genes" / "manifest.json").read_text())
    assert meta["reference_id"] == manifest["reference"]["id"]
    assert len(pd.read_csv(d / "pretrain" / "metrics.csv")) >= 1
    assert (d / "corpus" / "manifest.json").exists()
    assert (d / "report" / "projections.png").stat().st_size > 10000
    md = (d / "report" / "report.md").read_text()
    assert "What this demo shows, and what it cannot" in md and "cannot show" in md
    assert "{" not in md  # tables, not a JSON dump
    # the tables are mean ± std over the two seeds of the per-seed tables
    seeds = pd.read_csv(d / "report" / "classification_seeds.csv")
    lp = seeds[seeds.method == "linear_probe"].f1_weighted
    assert sorted(seeds.seed.unique()) == [0, 1]
    assert f"| {lp.mean():.3f} ± {lp.std(ddof=0):.3f} |" in md
    for s in (0, 1):
        assert (d / "report" / f"seed-{s}" / "folds.tsv").exists()
    assert (d / "pretrain-seed1" / "pretrained" / "bulkformer.json").exists()
    with pytest.raises(FileExistsError):
        demo.run_demo(d)
    with pytest.raises(ValueError, match="--label"):
        demo.run_demo(tmp_path / "e", archs4="x.h5")
