"""Fit the model's linear prior (:class:`bulkformer.model.prior.PCAPrior`) on training rows.

Before the first step, pretraining fits probabilistic PCA on (up to ``max_rows``, seeded) training
rows of the corpus — :class:`bulkformer.eval.imputers.PCAImputer`, the linear imputer the
evaluation scores beside the model — with the rank chosen by masked MSE on a held-out fifth of
those rows (:func:`bulkformer.eval.imputers.select_imputers`, candidates up to the config's
``pca_prior``). Validation and test rows are never read.
"""

from __future__ import annotations

import logging
import time

import numpy as np

__all__ = ["fit_prior", "MAX_PRIOR_ROWS"]

log = logging.getLogger(__name__)

#: training rows the prior is fitted on at most (a seeded sample of them beyond that)
MAX_PRIOR_ROWS = 20_000


def fit_prior(
    prior,
    x: np.ndarray,
    observed: np.ndarray,
    *,
    fraction: float,
    seed: int = 0,
) -> dict:
    """Fit ``prior`` (a :class:`~bulkformer.model.prior.PCAPrior`) on training rows.

    Parameters
    ----------
    x : (n, G) z-scores of training rows; observed : (n, G) bool (False: missing).
    fraction : the pretraining mask fraction (the rank is chosen on masks of that size).

    Returns
    -------
    ``{"rank", "rows", "seconds", "val_mse_z"}``: the chosen rank (0 when the rows are too few
    to fit anything: the prior then stays at 0), and the validation MSE of every candidate.
    """
    from ..eval.imputers import PCA_GRID, fit_pca_imputer

    t0 = time.perf_counter()
    n = len(x)
    if n < 3:
        log.warning("PCA prior: %d training rows are too few to fit it; it stays off", n)
        return {"rank": 0, "rows": n, "seconds": 0.0, "val_mse_z": {}}
    grid = tuple(k for k in PCA_GRID if k <= prior.max_rank) or (prior.max_rank,)
    pca, k, table = fit_pca_imputer(x, observed, fraction=fraction, seed=seed, grid=grid)
    prior.set(pca.mean_, pca.components_[:, :k], pca.penalty(k))
    val = {}
    if len(table):
        val = {int(r.k): float(r.val_mse_z) for r in table.itertuples() if r.method == "pca"}
    out = {"rank": int(k), "rows": int(n), "seconds": time.perf_counter() - t0, "val_mse_z": val}
    log.info("PCA prior: rank %d fitted on %d training rows in %.1f s", k, n, out["seconds"])
    return out
