"""End-to-end wiring of `bulkformer demo` on the bundled data, with a stand-in trainer
(eval_data.stand_in_pretrain: the real bulkformer.train.pretrain's signature, a few steps)."""

import pytest
from eval_data import stand_in_pretrain

import bulkformer.eval.demo as demo
from bulkformer.cli import main


def test_demo_reduced(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(corpus_dir, out_dir, **kw):
        calls.append(kw)
        return stand_in_pretrain(corpus_dir, out_dir, **kw)

    monkeypatch.setattr(demo, "_pretrain_fn", lambda: fake)
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
    assert calls[0]["steps"] == 2 and calls[0]["config"] == "tiny"
    d = tmp_path / "d"
    assert (d / "corpus" / "manifest.json").exists()
    assert (d / "report" / "projections.png").stat().st_size > 10000
    with pytest.raises(FileExistsError):
        demo.run_demo(d)
    with pytest.raises(ValueError, match="--label"):
        demo.run_demo(tmp_path / "e", archs4="x.h5")
