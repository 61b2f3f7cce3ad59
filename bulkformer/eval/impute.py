"""Imputation: hide a fraction of the observed genes of held-out samples and predict them.

For every held-out sample a seeded ``fraction`` of its observed genes is masked; the model
predicts them from the rest (``pred`` of :class:`~bulkformer.model.BulkFormerOutput`). Scores
are computed over all masked entries pooled, on the log1p(TPM) scale (z · σ + μ, the scale of
BulkFormer's reported Pearson r) and on the z scale:

``bulkformer``  the model's prediction
``gene_mean``   each gene's mean z over the training samples (≈ 0 = the corpus mean)
``knn``         mean of the k training samples nearest on the sample's unmasked genes
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

__all__ = ["ImputationResult", "mask_genes", "knn_impute", "impute_eval", "imputation_scores"]

log = logging.getLogger(__name__)


class ImputationResult:
    """``table``: one row per method (pearson_r, mse on log1p TPM; pearson_r_z, mse_z; n
    masked entries; seconds); ``mask``: (n_test, G) bool masked entries; ``predictions``: method
    → (n_test, G) z predictions."""

    def __init__(self, table: pd.DataFrame, mask: np.ndarray, predictions: dict, rows):
        self.table, self.mask, self.predictions, self.rows = table, mask, predictions, rows


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


def imputation_scores(
    truth: np.ndarray, pred: np.ndarray, mean: np.ndarray, std: np.ndarray, mask: np.ndarray
) -> dict:
    """Pearson r and MSE over the masked entries, on log1p TPM and on z (pooled)."""
    cols = np.nonzero(mask)[1]
    zt, zp = truth[mask].astype(np.float64), pred[mask].astype(np.float64)
    lt, lp = zt * std[cols] + mean[cols], zp * std[cols] + mean[cols]

    def r(a, b):
        if a.std() == 0 or b.std() == 0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    return {
        "pearson_r": r(lt, lp),
        "mse": float(np.mean((lt - lp) ** 2)),
        "pearson_r_z": r(zt, zp),
        "mse_z": float(np.mean((zt - zp) ** 2)),
        "n_masked": int(mask.sum()),
    }


def impute_eval(
    prep,
    pretrained,
    test_rows,
    train_rows,
    *,
    fraction: float = 0.15,
    k: int = 10,
    batch_size: int = 16,
    device=None,
    seed: int = 0,
) -> ImputationResult:
    """Mask ``fraction`` of the observed genes of ``test_rows``, impute, score vs baselines.

    Parameters
    ----------
    prep : :class:`~bulkformer.eval.embed.PreparedInput` of the data.
    pretrained : :class:`~bulkformer.model.pretrained.Pretrained`.
    test_rows, train_rows : row indices; baselines (gene mean, kNN) use ``train_rows`` only.
    """
    import torch

    from .._device import resolve_device

    test_rows = np.asarray(test_rows, dtype=np.int64)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise ValueError("imputation needs held-out (test) and training rows")
    st = pretrained.stats
    zt = prep.rows(test_rows)  # (n, G)
    obs_t = ~prep.missing(test_rows)
    mask = mask_genes(obs_t, fraction, seed)
    ztr = prep.rows(train_rows)
    obs_tr = ~prep.missing(train_rows)
    preds, secs = {}, {}

    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = pretrained.model.to(dev)
    was = model.training
    model.eval()
    out = np.empty_like(zt)
    with torch.no_grad():
        for a in range(0, len(zt), batch_size):
            sl = slice(a, a + batch_size)
            x = torch.from_numpy(np.where(mask[sl], 0.0, zt[sl]).astype(np.float32)).to(dev)
            res = model(
                x,
                missing=torch.from_numpy(~obs_t[sl]).to(dev),
                masked=torch.from_numpy(mask[sl]).to(dev),
            )
            out[sl] = res.pred.cpu().numpy()
    model.train(was)
    preds["bulkformer"], secs["bulkformer"] = out, time.perf_counter() - t0

    t0 = time.perf_counter()
    cnt = obs_tr.sum(0)
    gm = np.where(cnt > 0, np.where(obs_tr, ztr, 0).sum(0) / np.maximum(cnt, 1), 0.0)
    preds["gene_mean"] = np.broadcast_to(gm.astype(np.float32), zt.shape)
    secs["gene_mean"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    preds["knn"] = knn_impute(ztr, obs_tr, zt, obs_t & ~mask, k=k)
    secs["knn"] = time.perf_counter() - t0

    rows = []
    for name, p in preds.items():
        sc = imputation_scores(zt, p, st.mean, st.std, mask)
        rows.append({"method": name, **sc, "seconds": round(secs[name], 3)})
    table = pd.DataFrame(rows).set_index("method")
    log.info("imputation (%d masked entries): %s", int(mask.sum()), table["pearson_r"].to_dict())
    return ImputationResult(table, mask, preds, test_rows)
