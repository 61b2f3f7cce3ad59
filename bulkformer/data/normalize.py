"""Normalization: the definitions, the one z-score routine, and streaming per-gene statistics.

Every source is normalized by the C++ engine (``bulkformer._C``, ``csrc/``): ARCHS4 HDF5 files
through :func:`bulkformer.data.engine.read_matrix` (inflate → gather → TPM → log1p fused in
one multithreaded pass), numbers already in memory (GDC, ``.h5ad``, arrays, the h5py fallback)
through :func:`bulkformer.data.engine.normalize_dense` — the same arithmetic. z-scores, for the
corpus and for ``embed`` alike, come from :func:`standardize`. The numpy reference of each
routine lives in :mod:`bulkformer.data.oracle` (test oracle and benchmark baseline only).

Definitions, for a sample ``s`` and source gene ``j`` with length ``L[j]`` in bp:

``TPM[j] = (C[j] / L[j]) / Σ_k (C[k] / L[k]) · 1e6``, the sum running over source genes with a
known, positive, finite length. Genes without one contribute nothing (TPM 0) and are reported.
Source genes map to output columns through ``gene_map`` (``-1`` = dropped); several source genes
mapped to the same column (duplicate IDs) have their TPMs summed. Then ``v = log1p(TPM)``
(natural log) and ``z = (v − μ) / σ``, computed as ``(v − shift) · scale`` in float32 with
``shift = μ``, ``scale = 1/σ``; σ = 0 (or not finite) → z = 0. Output columns that no source gene
of known length maps to ("missing") are 0 in every mode.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "valid_lengths",
    "covered_columns",
    "z_params",
    "standardize",
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


def z_params(mean, std, missing) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale), each (n_sources, G) float32, of z = (v − shift[s]) · scale[s].

    Parameters
    ----------
    mean, std : (G,) per-gene statistics of log1p(TPM) (e.g. a
        :class:`~bulkformer.data.corpus.CorpusStats`' ``mean`` and ``std``).
    missing : (n_sources, G) or (G,) bool, genes absent from each source.

    ``shift`` is μ and ``scale`` 1/σ (computed in float64, then rounded), with z = 0 where σ = 0
    or is not finite and where the gene is missing from the source.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    missing = np.atleast_2d(np.asarray(missing, dtype=bool))
    good = np.isfinite(std) & (std > 0)
    inv = np.where(good, 1.0 / np.where(good, std, 1.0), 0.0)
    mu = np.where(good, mean, 0.0).astype(np.float32)
    n_src = len(missing)
    shift = np.ascontiguousarray(np.broadcast_to(mu, (n_src, len(mu))))
    scale = np.stack([np.where(~missing[s], inv, 0.0) for s in range(n_src)]).astype(np.float32)
    return shift, scale


def standardize(
    values: np.ndarray,
    shift: np.ndarray,
    scale: np.ndarray,
    out: np.ndarray | None = None,
    *,
    src: np.ndarray | None = None,
    dtype=np.float16,
    threads: int | None = None,
) -> np.ndarray:
    """z-scores ``clip((values − shift[src]) · scale[src], ±65504)``, by the C++ engine.

    Parameters
    ----------
    values : (n, G) float32 log1p(TPM).
    shift, scale : (n_sources, G) float32 from :func:`z_params`.
    out : (n, G) float16 or float32 buffer (default: a new one of ``dtype``); not ``values``.
    src : (n,) int64 source row of each value row; may be omitted with one source.
    threads : worker threads (0/None: all cores).

    Returns
    -------
    ``out``. Computed in float32 without contraction, so bit-identical to the numpy expression
    ``((values - shift[src]) * scale[src]).clip(-65504, 65504).astype(out.dtype)``.
    """
    from bulkformer import _C

    values = np.ascontiguousarray(values, dtype=np.float32)
    if out is None:
        out = np.empty(values.shape, dtype=dtype)
    if src is not None:
        src = np.ascontiguousarray(src, dtype=np.int64)
    _C.standardize(
        values,
        np.ascontiguousarray(shift, dtype=np.float32),
        np.ascontiguousarray(scale, dtype=np.float32),
        out,
        src,
        threads=int(threads or 0),
    )
    return out


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
