"""Imputation: masks, kNN against a brute-force loop, scores against numpy, baselines."""

import numpy as np
import pytest

from bulkformer.eval.embed import prepare_input
from bulkformer.eval.impute import imputation_scores, impute_eval, knn_impute, mask_genes


def test_mask_genes():
    obs = np.ones((4, 40), dtype=bool)
    obs[1, :10] = False
    m = mask_genes(obs, 0.15, seed=0)
    assert m.sum(1).tolist() == [6, 4, 6, 6]
    assert not (m & ~obs).any()
    np.testing.assert_array_equal(m, mask_genes(obs, 0.15, seed=0))
    with pytest.raises(ValueError):
        mask_genes(obs, 1.5)


def test_knn_matches_loop():
    r = np.random.default_rng(0)
    T, To = r.normal(size=(30, 12)), r.random((30, 12)) > 0.2
    X, V = r.normal(size=(5, 12)), r.random((5, 12)) > 0.3
    got = knn_impute(T, To, X, V, k=4)
    for i in range(5):
        d = []
        for j in range(30):
            both = V[i] & To[j]
            d.append(np.mean((X[i, both] - T[j, both]) ** 2) if both.any() else np.inf)
        nn = np.argsort(d, kind="stable")[:4]
        num = np.where(To[nn], T[nn], 0).sum(0)
        den = To[nn].sum(0)
        np.testing.assert_allclose(
            got[i], np.where(den > 0, num / np.maximum(den, 1), 0), rtol=1e-6, atol=1e-6
        )


def test_scores_vs_numpy():
    r = np.random.default_rng(1)
    t, p = r.normal(size=(3, 8)), r.normal(size=(3, 8))
    mask = r.random((3, 8)) > 0.5
    mean, std = r.normal(size=8), r.uniform(0.5, 2, size=8)
    s = imputation_scores(t, p, mean, std, mask)
    lt, lp = (t * std + mean)[mask], (p * std + mean)[mask]
    assert s["pearson_r"] == pytest.approx(np.corrcoef(lt, lp)[0, 1])
    assert s["mse"] == pytest.approx(np.mean((lt - lp) ** 2))
    assert s["pearson_r_z"] == pytest.approx(np.corrcoef(t[mask], p[mask])[0, 1])
    assert s["n_masked"] == mask.sum()
    assert np.isnan(imputation_scores(t, np.zeros_like(t), mean, std, mask)["pearson_r_z"])


def test_impute_eval_real(corpus, pretrained):
    prep = prepare_input(corpus, pretrained)
    sp = corpus.splits
    te, tr = np.r_[sp["val"], sp["test"]], sp["train"]
    res = impute_eval(prep, pretrained, te, tr, seed=0, n_masks=2)
    t = res.table
    assert list(t.index) == ["bulkformer", "gene_mean", "knn", "pca"]
    assert (t["n_masked"] == res.mask.sum()).all()  # the same positions for every method
    assert res.mask.sum(1).min() == round(0.15 * 64)
    # kNN and the linear imputer on real expression beat the gene mean, on both scales
    for m in ("knn", "pca"):
        assert t.loc[m, "mse"] < t.loc["gene_mean", "mse"]
        assert t.loc[m, "pearson_r_z"] > t.loc["gene_mean", "pearson_r_z"] + 0.2
    assert (t["pearson_r_std"] > 0).all()  # two masks differ
    s = t.attrs["settings"]
    assert s["n_masks"] == 2 and s["pca_k"] in set(res.validation.k)
    # the gene mean is the column mean of the training rows (all 64 genes observed)
    z = prep.z()
    np.testing.assert_allclose(res.predictions["gene_mean"][0], z[tr].mean(0), atol=1e-5)
