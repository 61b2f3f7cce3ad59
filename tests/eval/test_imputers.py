"""Imputation baselines on hand-checkable data: gene mean, the PCA imputer on an exactly
low-rank matrix, the choice of k on training rows only."""

import numpy as np
import pytest

from bulkformer.eval.imputers import (
    PCAImputer,
    gene_mean_impute,
    knn_impute,
    mask_genes,
    select_imputers,
)


def _low_rank(n=40, g=23, r=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, r)) @ rng.normal(size=(r, g)) + rng.normal(size=g) * 2


def test_gene_mean_is_column_mean_of_observed_training_rows():
    t = np.array([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0], [5.0, 0.0, 9.0]])
    obs = np.array([[True, True, False], [True, False, False], [True, True, False]])
    np.testing.assert_allclose(gene_mean_impute(t, obs), [3.0, 1.0, 0.0])
    np.testing.assert_allclose(gene_mean_impute(t, np.ones_like(obs)), t.mean(0))


def test_pca_imputer_recovers_exact_low_rank():
    X = _low_rank()
    obs = np.ones_like(X, dtype=bool)
    rng = np.random.default_rng(1)
    vis = rng.random((10, X.shape[1])) > 0.3  # 30% hidden, different per row
    p = PCAImputer().fit(X[:30], obs[:30])
    got = p.predict(X[30:], vis, [1, 2, 3, 6])
    np.testing.assert_allclose(got[3], X[30:], atol=1e-4)
    np.testing.assert_allclose(got[6], X[30:], atol=1e-4)  # extra components: no harm
    assert np.abs(got[2] - X[30:])[~vis].max() > 0.1  # too few components cannot
    assert p.noise(3) < 1e-10 < p.noise(2)
    # a single k gives the same array as in the list
    np.testing.assert_allclose(p.predict(X[30:], vis, 3), got[3], rtol=1e-6)


def test_pca_imputer_matches_least_squares_by_hand():
    """Per sample: ridge-regularised least squares of the visible genes on the components."""
    rng = np.random.default_rng(2)
    X = _low_rank(n=25, g=11, r=4) + 0.3 * rng.normal(size=(25, 11))
    obs = np.ones_like(X, dtype=bool)
    p = PCAImputer().fit(X[:20], obs[:20])
    vis = rng.random((5, 11)) > 0.4
    got = p.predict(X[20:], vis, 2)
    mu = X[:20].mean(0)
    _, s, vt = np.linalg.svd(X[:20] - mu, full_matrices=False)
    V, lam = vt[:2].T, s[:2] ** 2 / 20
    sigma2 = (s[2:] ** 2).sum() / 20 / (11 - 2)
    for i in range(5):
        S = vis[i]
        A = V[S].T @ V[S] + np.diag(sigma2 / lam)
        c = np.linalg.solve(A, V[S].T @ (X[20 + i, S] - mu[S]))
        np.testing.assert_allclose(got[i], mu + V @ c, rtol=1e-5, atol=1e-5)


def test_pca_imputer_unobserved_training_entries_take_gene_mean():
    X = _low_rank(n=30, g=9, r=2)
    obs = np.ones_like(X, dtype=bool)
    obs[0, 0] = False
    Xb = X.copy()
    Xb[0, 0] = 1e6  # must not be read
    p = PCAImputer().fit(Xb, obs)
    assert np.isfinite(p.components_).all() and abs(p.mean_[0] - X[1:, 0].mean()) < 1e-9


def test_select_chooses_k_on_training_rows():
    X = _low_rank(n=60, g=30, r=4, seed=3)
    X = X + 0.05 * np.random.default_rng(3).normal(size=X.shape)
    obs = np.ones_like(X, dtype=bool)
    best, table = select_imputers(X, obs, seed=0)
    assert best["pca"] >= 4  # the grid's first k that holds the rank
    row = table[(table.method == "pca") & (table.k == best["pca"])]
    assert row.val_mse_z.iloc[0] == table[table.method == "pca"].val_mse_z.min()
    assert set(table.method) == {"knn", "pca"} and best["knn"] in set(
        table[table.method == "knn"].k
    )
    # structureless noise: the more neighbours averaged, the better; low rank: few are best
    noise = np.random.default_rng(4).normal(size=(60, 200))
    best, _ = select_imputers(noise, np.ones_like(noise, dtype=bool), seed=0)
    assert best["knn"] == 40 and best["pca"] == 1
    best, _ = select_imputers(X, obs, seed=0)
    assert best["knn"] <= 10


def test_knn_and_mask_shapes():
    X = _low_rank()
    m = mask_genes(np.ones_like(X, dtype=bool), 0.2, seed=0)
    assert (m.sum(1) == round(0.2 * X.shape[1])).all()
    p = knn_impute(X[:30], np.ones((30, X.shape[1]), bool), X[30:], ~m[30:], k=1)
    assert p.shape == (10, X.shape[1]) and p.dtype == np.float32
    with pytest.raises(ValueError, match="fitted components"):
        PCAImputer().fit(X[:5], np.ones((5, X.shape[1]), bool)).predict(X[:1], m[:1], 10)
