"""Normalization: counts → TPM → log1p → per-gene z-score, and streaming per-gene statistics.

Two implementations of every routine live side by side:

* the numpy reference in this file (``*_ref`` functions): short, obviously right, the test
  oracle, the benchmark baseline and the fallback for sources the C++ engine does not read;
* the C++ engine in ``bulkformer._C`` (``csrc/``), used by :mod:`bulkformer.data.archs4` for
  HDF5 files, which fuses inflate → gather → TPM → log1p → z in one multithreaded pass.

Definitions (DESIGN.md "Key definitions"), for a sample ``s`` and source gene ``j`` with length
``L[j]`` in bp:

``TPM[j] = (C[j] / L[j]) / Σ_k (C[k] / L[k]) · 1e6``, the sum running over source genes with a
known, positive, finite length. Genes without one contribute nothing (TPM 0) and are reported.
Source genes map to output columns through ``gene_map`` (``-1`` = dropped); several source genes
mapped to the same column (duplicate IDs) have their TPMs summed. Then ``v = log1p(TPM)``
(natural log) and ``z = (v − μ) / σ`` with σ = 0 → z = 0. Output columns that no source gene of
known length maps to ("missing") are 0 in every mode.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "valid_lengths",
    "covered_columns",
    "log1p_tpm_ref",
    "zscore_ref",
    "qc_ref",
    "GeneStats",
]


def valid_lengths(lengths: np.ndarray) -> np.ndarray:
    """Boolean mask of usable gene lengths (finite and > 0)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return np.isfinite(lengths) & (lengths > 0)


def covered_columns(gene_map: np.ndarray, lengths: np.ndarray, n_out: int) -> np.ndarray:
    """(n_out,) bool: output columns reached by at least one source gene of known length."""
    gene_map = np.asarray(gene_map, dtype=np.int64)
    ok = (gene_map >= 0) & valid_lengths(lengths)
    cov = np.zeros(n_out, dtype=bool)
    cov[gene_map[ok]] = True
    return cov


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


class GeneStats:
    """Streaming per-gene count / mean / M2 in float64 (Welford, merged with Chan et al.).

    ``update(block)`` takes (n, G) rows; ``merge(other)`` combines two partial results;
    ``mean`` and ``std`` (population) are read at the end. This is also the container the C++
    engine fills (``as_array`` / ``from_array`` use a (3, G) float64 layout: count, mean, M2).
    """

    def __init__(self, n_genes: int):
        self.count = np.zeros(n_genes, dtype=np.float64)
        self.mean_ = np.zeros(n_genes, dtype=np.float64)
        self.m2 = np.zeros(n_genes, dtype=np.float64)

    def update(self, block: np.ndarray) -> GeneStats:
        block = np.asarray(block, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != len(self.count):
            raise ValueError(f"block has shape {block.shape}, expected (n, {len(self.count)})")
        if len(block) == 0:
            return self
        other = GeneStats(len(self.count))
        other.count[:] = len(block)
        other.mean_ = block.mean(axis=0)
        other.m2 = ((block - other.mean_) ** 2).sum(axis=0)
        return self.merge(other)

    def merge(self, other: GeneStats) -> GeneStats:
        n = self.count + other.count
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = other.mean_ - self.mean_
            frac = np.where(n > 0, other.count / np.where(n > 0, n, 1), 0.0)
            self.mean_ = self.mean_ + delta * frac
            self.m2 = self.m2 + other.m2 + delta**2 * self.count * frac
        self.count = n
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.mean_.copy()

    @property
    def std(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(self.count > 0, self.m2 / np.where(self.count > 0, self.count, 1), 0.0)
        return np.sqrt(np.maximum(var, 0.0))

    def as_array(self) -> np.ndarray:
        return np.stack([self.count, self.mean_, self.m2])

    @classmethod
    def from_array(cls, arr: np.ndarray) -> GeneStats:
        arr = np.asarray(arr, dtype=np.float64)
        st = cls(arr.shape[1])
        st.count, st.mean_, st.m2 = arr[0].copy(), arr[1].copy(), arr[2].copy()
        return st
