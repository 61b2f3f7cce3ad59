"""Pretraining validation that can be compared with something: several random masks of the
validation rows, and the baselines scored on exactly the same masked positions.

For every validation row ``r`` and mask ``m < n_masks`` the masked genes are drawn from a
generator seeded by ``(seed, m, r)``: the positions do not depend on batching, ranks or the step,
so every validation of a run scores the same positions and the model's MSE is comparable across
steps and with the baselines, which are computed once (z scale, masked non-missing genes)::

    gene_mean  each gene's mean over (up to max_train) training rows
    knn        mean of the k nearest training rows on the row's visible genes
               (:func:`bulkformer.eval.impute.knn_impute`)
    pca        PCA-k reconstruction fitted on the training rows: least squares of the visible
               genes on k components, k chosen on a held-out fifth of the training rows
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["val_mask", "pca_impute", "choose_pca_rank", "BaselineImputers", "PCA_RANKS"]

log = logging.getLogger(__name__)

#: candidate ranks of the PCA imputer (those below the number of fitting rows are tried)
PCA_RANKS = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 64)


def val_mask(observed: np.ndarray, rows: np.ndarray, fraction: float, mask: int, seed: int):
    """(n, G) bool: mask number ``mask`` of validation rows ``rows``.

    Each observed gene of row ``r`` is masked with probability ``fraction`` by a generator
    seeded with ``(seed, mask, r)``; missing genes (``observed`` False) are never masked.
    """
    out = np.empty(observed.shape, dtype=bool)
    for i, r in enumerate(np.asarray(rows, dtype=np.int64)):
        u = np.random.default_rng([int(seed), int(mask), int(r)]).random(observed.shape[1])
        out[i] = (u < fraction) & observed[i]
    return out


def _components(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mu = train.mean(0)
    _, s, vt = np.linalg.svd(train - mu, full_matrices=False)
    return mu, vt[:k].T * (s[:k] / np.sqrt(len(train)))  # (G,), (G, k)


def pca_impute(
    train: np.ndarray, x: np.ndarray, visible: np.ndarray, k: int, *, ridge: float = 1e-3
) -> np.ndarray:
    """PCA-k reconstruction imputer fitted on ``train`` (n_train, G).

    For each row of ``x`` (n, G) the component scores are the ridge-regularised least squares
    fit of its ``visible`` (n, G) genes; the prediction is ``mean + W · scores`` for every gene.
    Returns (n, G) float32.
    """
    mu, w = _components(np.asarray(train, dtype=np.float64), k)
    out = np.empty(x.shape, dtype=np.float32)
    eye = ridge * np.eye(w.shape[1])
    for i in range(len(x)):
        v = visible[i]
        a = w[v]  # (n_visible, k)
        c = np.linalg.solve(a.T @ a + eye, a.T @ (x[i, v] - mu[v]))
        out[i] = mu + w @ c
    return out


def choose_pca_rank(train: np.ndarray, fraction: float, seed: int = 0) -> int:
    """The rank of :data:`PCA_RANKS` with the lowest masked MSE when fitted on four fifths of
    ``train`` and scored on the rest (random masks of ``fraction``): training rows only."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train))
    n_tune = max(1, len(train) // 5)
    tune, fit = train[perm[:n_tune]], train[perm[n_tune:]]
    masked = rng.random(tune.shape) < fraction
    best, best_err = 1, np.inf
    for k in PCA_RANKS:
        if k >= len(fit) or k > train.shape[1]:
            break
        err = float(((pca_impute(fit, tune, ~masked, k) - tune)[masked] ** 2).mean())
        if err < best_err:
            best, best_err = k, err
    return best


class BaselineImputers:
    """Gene-mean, kNN and PCA imputers fitted on training rows (z-scores; missing genes 0).

    Parameters
    ----------
    train : (n_train, G) float z-scores; train_observed : (n_train, G) bool.
    fraction : the mask fraction (for choosing the PCA rank).
    k : neighbours of the kNN imputer.
    """

    def __init__(self, train, train_observed, *, fraction: float, k: int = 10, seed: int = 0):
        self.train = np.where(train_observed, train, 0.0).astype(np.float32)
        self.observed = np.asarray(train_observed, dtype=bool)
        cnt = self.observed.sum(0)
        self.gene_mean = (self.train.sum(0) / np.maximum(cnt, 1)).astype(np.float32)  # (G,)
        self.k = k
        self.rank = choose_pca_rank(self.train, fraction, seed) if len(train) > 2 else 0
        log.info("validation baselines: %d training rows, PCA rank %d", len(train), self.rank)

    def predict(self, x: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions (n, G) float32 of every baseline for rows ``x`` seeing ``visible``."""
        from ..eval.impute import knn_impute

        out = {
            "gene_mean": np.broadcast_to(self.gene_mean, x.shape),
            "knn": knn_impute(self.train, self.observed, x, visible, k=self.k),
        }
        if self.rank:
            out["pca"] = pca_impute(self.train, x, visible, self.rank)
        return out
