"""Pretraining validation that can be compared with something: several random masks of the
validation rows, and the baselines scored on exactly the same masked positions.

For every validation row ``r`` and mask ``m < n_masks`` the masked genes are drawn from a
generator seeded by ``(seed, m, r)``: the positions do not depend on batching, ranks or the step,
so every validation of a run scores the same positions and the model's MSE is comparable across
steps and with the baselines, which are computed once (z scale, masked non-missing genes)::

    gene_mean  each gene's mean over (up to max_train) training rows
    knn        mean of the k nearest training rows on the row's visible genes
               (:func:`bulkformer.eval.impute.knn_impute`)
    pca        the probabilistic-PCA imputer of the evaluation
               (:class:`bulkformer.eval.imputers.PCAImputer`), k chosen on a held-out fifth of
               the training rows (:func:`bulkformer.eval.imputers.select_imputers`)
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["val_mask", "BaselineImputers"]

log = logging.getLogger(__name__)


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
        self.pca = None
        self.rank = 0
        if len(train) > 2:
            from ..eval.imputers import fit_pca_imputer

            self.pca, self.rank, _ = fit_pca_imputer(
                self.train, self.observed, fraction=fraction, seed=seed
            )
        log.info("validation baselines: %d training rows, PCA rank %d", len(train), self.rank)

    def predict(self, x: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions (n, G) float32 of every baseline for rows ``x`` seeing ``visible``."""
        from ..eval.imputers import knn_impute

        out = {
            "gene_mean": np.broadcast_to(self.gene_mean, x.shape),
            "knn": knn_impute(self.train, self.observed, x, visible, k=self.k),
        }
        if self.pca is not None:
            out["pca"] = self.pca.predict(x, visible, self.rank)
        return out
