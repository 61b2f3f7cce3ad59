"""Cluster scores against sklearn, PNG figures, and the full evaluate() report."""

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from bulkformer.eval import evaluate
from bulkformer.eval.plots import cluster_scores, plot_projections, project

PNG = b"\x89PNG\r\n\x1a\n"


def _blobs(n=40, d=6, seed=0):
    r = np.random.default_rng(seed)
    y = np.repeat(["p", "q"], n // 2)
    return r.normal(size=(n, d)) + (y == "q")[:, None] * 3.0, y


def test_cluster_scores_vs_sklearn():
    X, y = _blobs()
    s = cluster_scores(X, y, seed=0)
    Xs = StandardScaler().fit_transform(X.astype(np.float32))
    assert s["silhouette"] == pytest.approx(silhouette_score(Xs, y), rel=1e-5)
    km = KMeans(2, n_init=10, random_state=0).fit_predict(Xs)
    assert s["ari_kmeans"] == pytest.approx(adjusted_rand_score(y, km))
    assert s["ari_kmeans"] > 0.8


def test_tsne_plot_png(tmp_path):
    X, y = _blobs()
    c = project(X, "tsne")
    assert c.shape == (40, 2) and np.isfinite(c).all()
    p = plot_projections({("feat", "tsne"): c, ("other", "tsne"): c[::-1]}, y, tmp_path / "a.png")
    data = p.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    with pytest.raises(ValueError, match="method"):
        project(X, "pca")


def test_evaluate_writes_report(corpus, ckpt, tmp_path):
    rep = evaluate(
        ckpt,
        corpus,
        label="label",
        out=tmp_path / "r",
        n_splits=3,
        finetune_epochs=1,
        rf_trees=20,
        n_masks=1,
        progress=False,
    )
    out = tmp_path / "r"
    for name in (
        "report.md",
        "report.html",
        "classification.csv",
        "imputation.csv",
        "clustering.csv",
        "timings.csv",
        "classification_folds.csv",
        "confusion_linear_probe.csv",
        "folds.tsv",
        "embeddings.npy",
    ):
        assert (out / name).stat().st_size > 0, name
    png = (out / "projections.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10000
    cls = pd.read_csv(out / "classification.csv", index_col=0)
    assert list(cls.index) == [
        "linear_probe",
        "rf_bulkformer",
        "finetune",
        "logreg_log1p_tpm",
        "pca50_logreg",
        "rf_log1p_tpm",
    ]
    np.testing.assert_allclose(cls["f1_weighted"], rep.classification["f1_weighted"])
    folds = pd.read_csv(out / "folds.tsv", sep="\t")
    assert sorted(folds["fold"].unique()) == [0, 1, 2] and len(folds) == 85
    imp = pd.read_csv(out / "imputation.csv", index_col=0)
    assert list(imp.index) == ["bulkformer", "gene_mean", "knn", "pca"]
    md = rep.markdown.read_text()
    assert "| linear_probe |" in md and "![projections](projections.png)" in md
    lp = rep.classification.loc["linear_probe"]
    assert f"{lp.f1_weighted:.3f} ± {lp.f1_weighted_std:.3f}" in md
    assert "r_z" in md and "{" not in md  # tables, not a JSON dump
    assert "<table" in rep.html.read_text()
    assert {"embed", "umap:BulkFormer embedding", "tsne:log1p TPM (z)"} <= set(rep.timings)
    assert np.load(out / "embeddings.npy").shape == (85, 16)
