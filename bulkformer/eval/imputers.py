"""Imputation baselines, fitted on training rows only, with their settings chosen on training rows.

Every imputer takes the (n_train, G) z-scores of the training samples with their (n_train, G)
bool ``observed`` mask, and predicts the (n, G) z-scores of other samples from their
``visible`` genes (observed and not masked):

``gene_mean``  each gene's mean over the training rows where it is observed
``knn``        mean of the k training samples nearest on the visible genes
``pca``        linear: the training rows' top-k principal components, fitted to each sample's
               visible genes by least squares with a per-component ridge (the posterior mean
               of probabilistic PCA, noise = the mean discarded variance), then reconstructed

``k`` of kNN and of the PCA imputer is chosen by :func:`select_imputers` on a seeded
validation split of the training rows (masked like the test rows), never on the test rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

__all__ = [
    "gene_mean_impute",
    "knn_impute",
    "PCAImputer",
    "select_imputers",
    "fit_pca_imputer",
    "mask_genes",
    "KNN_GRID",
    "PCA_GRID",
]

log = logging.getLogger(__name__)

#: candidate neighbour counts of kNN (those above the number of fitting rows are dropped)
KNN_GRID = (1, 3, 5, 10, 20, 40)
#: candidate component counts of the PCA imputer (capped by rank: rows − 1, genes)
PCA_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def mask_genes(observed: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """(n, G) bool: ``round(fraction × observed genes)`` (at least 1) per row, seeded."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction = {fraction}: expected a number in (0, 1)")
    rng = np.random.default_rng(seed)
    mask = np.zeros_like(observed, dtype=bool)
    for i, obs in enumerate(observed):
        idx = np.flatnonzero(obs)
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        if k:
            mask[i, rng.choice(idx, size=k, replace=False)] = True
    return mask


def gene_mean_impute(train: np.ndarray, train_observed: np.ndarray) -> np.ndarray:
    """(G,) float64: each gene's mean over the training rows where it is observed (0 where
    it is observed in none)."""
    cnt = train_observed.sum(0)
    s = np.where(train_observed, train, 0.0).astype(np.float64).sum(0)
    return np.where(cnt > 0, s / np.maximum(cnt, 1), 0.0)


def knn_impute(
    train: np.ndarray, train_observed: np.ndarray, x: np.ndarray, visible: np.ndarray, k: int = 10
) -> np.ndarray:
    """kNN imputation over training samples.

    Parameters
    ----------
    train : (n_train, G) z-scores; train_observed : (n_train, G) bool.
    x : (n, G) z-scores of the samples to impute; visible : (n, G) bool genes usable for the
        distance (observed and not masked).
    k : neighbours.

    Returns
    -------
    (n, G) float32: for every sample, the mean over its k nearest training samples (mean squared
    difference over the genes visible in both) of their values (observed ones only).
    """
    T = np.where(train_observed, train, 0.0).astype(np.float64)
    To = train_observed.astype(np.float64)
    V = visible.astype(np.float64)
    X = np.where(visible, x, 0.0).astype(np.float64)
    # Σ_g v t (x − t)² over genes visible in both, as matrix products: (n, n_train)
    sq = (X**2) @ To.T - 2 * X @ T.T + V @ (T**2).T
    shared = V @ To.T
    dist = np.where(shared > 0, sq / np.maximum(shared, 1), np.inf)
    k = min(k, len(T))
    nn = np.argpartition(dist, k - 1, axis=1)[:, :k]  # (n, k)
    num = T[nn].sum(1)  # (n, G)
    den = To[nn].sum(1)
    return np.where(den > 0, num / np.maximum(den, 1), 0.0).astype(np.float32)


class PCAImputer:
    """Linear imputer: top-k principal components of the training rows, fitted per sample.

    ``fit`` centres the training rows on their gene means (unobserved entries take the gene
    mean), keeps the top ``max_k`` right singular vectors ``V`` (G, max_k) and the component
    variances ``λ``. ``predict(x, visible, k)`` solves, for each sample with visible genes S,

        (V_Sᵀ V_S + σ² diag(1/λ)) c = V_Sᵀ (x_S − μ_S),   x̂ = μ + V c

    with σ² the mean variance left in the discarded directions (probabilistic PCA). An exactly
    rank-r matrix is recovered exactly for k ≥ r (σ² = 0).
    """

    def fit(self, train: np.ndarray, train_observed: np.ndarray, max_k: int = max(PCA_GRID)):
        """Fit on (n_train, G) z-scores and their observed mask; returns self."""
        n, G = train.shape
        mu = gene_mean_impute(train, train_observed)
        X = np.where(train_observed, train, mu).astype(np.float64) - mu
        k = max(1, min(max_k, n - 1 if n > 1 else 1, G))
        if min(n, G) <= 3000:
            _, s, vt = np.linalg.svd(X, full_matrices=False)
        else:  # large corpora: the top components only
            from sklearn.utils.extmath import randomized_svd

            _, s, vt = randomized_svd(X, k, random_state=0)
        total = float((X**2).sum()) / n  # total variance (trace of the covariance)
        self.mean_ = mu
        self.components_ = vt[:k].T.copy()  # (G, k)
        self.variances_ = s[:k] ** 2 / n  # (k,)
        self.total_var_ = total
        self.n_genes_ = G
        return self

    @property
    def max_k(self) -> int:
        return self.components_.shape[1]

    def noise(self, k: int) -> float:
        """σ² of a k-component model: the variance outside the top k, per remaining dimension."""
        rest = max(self.total_var_ - float(self.variances_[:k].sum()), 0.0)
        return rest / max(self.n_genes_ - k, 1)

    def penalty(self, k: int) -> np.ndarray:
        """(k,) the ridge of each component, ``σ² / λ`` (both offset by a tiny ε)."""
        eps = 1e-12 * max(self.total_var_, 1e-30)
        return (self.noise(k) + eps) / (self.variances_[:k] + eps)

    def predict(self, x: np.ndarray, visible: np.ndarray, k: int | list[int]) -> np.ndarray | dict:
        """(n, G) float32 reconstructions with k components (a dict k → array for a list).

        Parameters
        ----------
        x : (n, G) z-scores; only the ``visible`` entries are read.
        visible : (n, G) bool.
        k : component count(s), each at most :attr:`max_k`.
        """
        ks = [k] if np.isscalar(k) else list(k)
        if max(ks) > self.max_k:
            raise ValueError(f"k = {max(ks)} > {self.max_k} fitted components")
        V, mu = self.components_, self.mean_
        kmax = max(ks)
        Vk = V[:, :kmax]
        out = {kk: np.empty(x.shape, dtype=np.float32) for kk in ks}
        gram = Vk.T @ Vk  # (kmax, kmax)
        pens = {kk: self.penalty(kk) for kk in ks}
        for i in range(len(x)):
            vis = visible[i]
            r = np.where(vis, x[i] - mu, 0.0)  # (G,)
            # V_Sᵀ V_S = VᵀV − V_Hᵀ V_H over the hidden genes H (cheap when few are hidden)
            if 2 * vis.sum() >= len(vis):
                VH = Vk[~vis]
                A = gram - VH.T @ VH
            else:
                VS = Vk[vis]
                A = VS.T @ VS
            rhs = r @ Vk  # (kmax,)
            for kk in ks:
                c = np.linalg.solve(A[:kk, :kk] + np.diag(pens[kk]), rhs[:kk])
                out[kk][i] = mu + V[:, :kk] @ c
        return out[ks[0]] if np.isscalar(k) else out


def _mse(truth, pred, mask) -> float:
    return float(np.mean((truth[mask].astype(np.float64) - pred[mask]) ** 2))


def select_imputers(
    train: np.ndarray,
    train_observed: np.ndarray,
    *,
    fraction: float = 0.15,
    val_fraction: float = 0.2,
    seed: int = 0,
    knn_grid=KNN_GRID,
    pca_grid=PCA_GRID,
) -> tuple[dict, pd.DataFrame]:
    """Choose kNN's k and the PCA imputer's k on the training rows alone.

    A seeded ``val_fraction`` of the training rows is held out and masked (``fraction`` of its
    observed genes); both imputers are fitted on the rest and each candidate is scored by MSE
    (z) on those masked entries.

    An empty grid leaves its method out (no key in the result).

    Returns
    -------
    ({"knn": k, "pca": k}, table) — the table has one row per (method, k) with its
    validation MSE.
    """
    n = len(train)
    rng = np.random.default_rng(seed + 7919)
    perm = rng.permutation(n)
    n_val = int(round(val_fraction * n))
    if n < 4 or n_val < 1 or n - n_val < 2:
        log.warning("imputer selection: %d training rows are too few to hold some out", n)
        return {"knn": min(10, max(n, 1)), "pca": max(1, min(8, n - 1))}, pd.DataFrame()
    va, fi = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    vobs = train_observed[va]
    vmask = mask_genes(vobs, fraction, seed + 7919)
    visible = vobs & ~vmask
    truth = train[va]
    rows = []
    for k in [k for k in knn_grid if k <= len(fi)]:
        p = knn_impute(train[fi], train_observed[fi], truth, visible, k=k)
        rows.append({"method": "knn", "k": k, "val_mse_z": _mse(truth, p, vmask)})
    if pca_grid:
        pca = PCAImputer().fit(train[fi], train_observed[fi], max_k=max(pca_grid))
        ks = [k for k in pca_grid if k <= pca.max_k] or [pca.max_k]
        for k, p in pca.predict(truth, visible, ks).items():
            rows.append({"method": "pca", "k": k, "val_mse_z": _mse(truth, p, vmask)})
    table = pd.DataFrame(rows)
    best = {
        m: int(table.loc[table[table.method == m].val_mse_z.idxmin(), "k"])
        for m in ("knn", "pca")
        if len(table) and (table.method == m).any()
    }
    log.info("imputer settings chosen on %d validation rows: %s", len(va), best)
    return best, table


def fit_pca_imputer(
    train: np.ndarray,
    train_observed: np.ndarray,
    *,
    fraction: float = 0.15,
    seed: int = 0,
    grid=PCA_GRID,
) -> tuple[PCAImputer, int, pd.DataFrame]:
    """The PCA imputer of the training rows at the rank :func:`select_imputers` chooses on them
    (candidates ``grid``): ``(imputer, k, validation table)``, ``k`` at most ``max(grid)`` and
    the fitted rank."""
    chosen, table = select_imputers(
        train, train_observed, fraction=fraction, seed=seed, knn_grid=(), pca_grid=grid
    )
    k = min(chosen.get("pca", min(grid)), max(grid))  # (too few rows: a default, capped too)
    pca = PCAImputer().fit(train, train_observed, max_k=k)
    return pca, min(k, pca.max_k), table
