"""Numpy reference implementations of the normalization routines: test oracles and benchmark
baselines only — production code never imports this module (``tests/data/test_normalize_path.py``
checks). Short and obviously right, in float64; the production routines are the C++ engine's
(:mod:`bulkformer.data.engine`, :func:`bulkformer.data.normalize.standardize`).

Definitions: see :mod:`bulkformer.data.normalize`.
"""

from __future__ import annotations

import numpy as np

from .normalize import valid_lengths

__all__ = ["log1p_tpm_ref", "tpm_given_ref", "zscore_ref", "qc_ref"]


def log1p_tpm_ref(
    counts: np.ndarray,
    lengths: np.ndarray,
    gene_map: np.ndarray | None = None,
    n_out: int | None = None,
) -> np.ndarray:
    """Reference ``log1p(TPM)``.

    Parameters
    ----------
    counts : (S, J) array of non-negative counts (any numeric dtype), samples × source genes.
    lengths : (J,) gene lengths in bp; non-finite or ≤ 0 means unknown (excluded from TPM).
    gene_map : (J,) int, output column of each source gene or -1; default identity.
    n_out : number of output columns; default J.

    Returns
    -------
    (S, n_out) float64. All-zero samples give all-zero rows, never NaN.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (samples × genes), got shape {counts.shape}")
    S, J = counts.shape
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.shape != (J,):
        raise ValueError(f"lengths has shape {lengths.shape}, expected ({J},) — one per gene")
    if gene_map is None:
        gene_map = np.arange(J, dtype=np.int64)
    gene_map = np.asarray(gene_map, dtype=np.int64)
    if n_out is None:
        n_out = J
    ok = valid_lengths(lengths)
    rate = np.zeros_like(counts)
    rate[:, ok] = counts[:, ok] / lengths[ok]
    denom = rate.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(denom > 0, 1e6 / denom, 0.0)
    tpm = rate * scale
    out = np.zeros((S, n_out), dtype=np.float64)
    keep = gene_map >= 0
    for j in np.flatnonzero(keep):  # duplicates summed; a Python loop is fine for a reference
        out[:, gene_map[j]] += tpm[:, j]
    return np.log1p(out)


def zscore_ref(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, covered: np.ndarray | None = None
) -> np.ndarray:
    """Reference z-score per column; σ = 0 (or non-finite) → 0; uncovered columns → 0."""
    values = np.asarray(values, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    good = np.isfinite(std) & (std > 0)
    if covered is not None:
        good &= np.asarray(covered, dtype=bool)
    safe = np.where(good, std, 1.0)
    z = (values - mean) / safe
    return np.where(good, z, 0.0)


def qc_ref(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample QC over all source genes: (non-zero gene count int64, total counts float64)."""
    counts = np.asarray(counts)
    return (counts != 0).sum(axis=1).astype(np.int64), counts.sum(axis=1, dtype=np.float64)


def tpm_given_ref(
    tpm: np.ndarray, gene_map: np.ndarray, n_out: int, *, log_given: bool = False
) -> np.ndarray:
    """Reference ``log1p`` of TPM taken as given (``values="tpm"``), or of ``expm1`` of given
    ``log1p(TPM)`` (``log_given``): (S, J) → (S, n_out) float64, duplicates summed in TPM
    space, unmapped columns 0."""
    tpm = np.asarray(tpm, dtype=np.float64)
    if log_given:
        tpm = np.expm1(tpm)
    gene_map = np.asarray(gene_map, dtype=np.int64)
    out = np.zeros((len(tpm), n_out), dtype=np.float64)
    for j in np.flatnonzero(gene_map >= 0):
        out[:, gene_map[j]] += tpm[:, j]
    return np.log1p(out)
