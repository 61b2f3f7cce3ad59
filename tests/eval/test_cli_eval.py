"""`bulkformer embed | probe | finetune | demo` wiring (the heavy paths are tested via the API)."""

import anndata as ad
import numpy as np

from bulkformer.cli import main


def test_embed_cli(corpus, ckpt, tmp_path, capsys):
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(ckpt),
                "--corpus",
                str(corpus.path),
                "--out",
                str(tmp_path / "e.npy"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "e.npy").shape == (85, 16)
    adata = corpus.to_anndata()
    adata.write_h5ad(tmp_path / "z.h5ad")
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(tmp_path / "z.h5ad"),
                "--values",
                "z",
                "--out",
                str(tmp_path / "e.h5ad"),
                "--no-progress",
            ]
        )
        == 0
    )
    back = ad.read_h5ad(tmp_path / "e.h5ad")
    np.testing.assert_allclose(back.obsm["X_bulkformer"], np.load(tmp_path / "e.npy"), atol=1e-5)
    assert "wrote 85 × 16 embeddings" in capsys.readouterr().out
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(tmp_path / "z.h5ad"),
                "--layer",
                "nope",
                "--out",
                str(tmp_path / "x.npy"),
            ]
        )
        == 1
    )
    assert "no layer 'nope'" in capsys.readouterr().err


def test_probe_and_finetune_cli(corpus, ckpt, tmp_path, capsys):
    assert (
        main(
            [
                "probe",
                "--checkpoint",
                str(ckpt),
                "--corpus",
                str(corpus.path),
                "--label",
                "label",
                "--folds",
                "3",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| linear_probe |" in out and "| pca50_logreg |" in out
    assert (tmp_path / "p.csv").exists()
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(ckpt),
                "--corpus",
                str(corpus.path),
                "--label",
                "label",
                "--folds",
                "2",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert "| finetune |" in capsys.readouterr().out
    assert (
        main(
            [
                "probe",
                "--checkpoint",
                str(ckpt),
                "--corpus",
                str(corpus.path),
                "--label",
                "label",
                "--folds",
                "50",
            ]
        )
        == 1
    )
    assert "Use fewer folds" in capsys.readouterr().err
