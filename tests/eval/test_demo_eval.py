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
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| linear_probe |" in out and "| logreg_log1p_tpm |" in out and "| knn |" in out
    assert f"report: {tmp_path / 'd' / 'report' / 'report.md'}" in out
    d = tmp_path / "d"
    meta = json.loads((d / "pretrain" / "pretrained" / "bulkformer.json").read_text())
    manifest = json.loads((d / "corpus_genes" / "manifest.json").read_text())
    assert meta["reference_id"] == manifest["reference"]["id"]
    assert len(pd.read_csv(d / "pretrain" / "metrics.csv")) >= 1
    assert (d / "corpus" / "manifest.json").exists()
    assert (d / "report" / "projections.png").stat().st_size > 10000
    with pytest.raises(FileExistsError):
        demo.run_demo(d)
    with pytest.raises(ValueError, match="--label"):
        demo.run_demo(tmp_path / "e", archs4="x.h5")
