"""What every input reader (ARCHS4, GDC/TCGA, AnnData) gives the corpus writer.

A reader is an :class:`ExpressionSource`: a table of samples plus a way to read any block of
them as ``log1p(TPM)`` already aligned to a :class:`~bulkformer.data.genes.GeneReference`
(zero in missing columns). Alignment of source genes to the reference is computed once, by
:func:`align_genes`, and is the same object for every reader.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .genes import GeneReference, strip_version
from .normalize import covered_columns, valid_lengths

__all__ = ["Alignment", "Block", "ExpressionSource", "align_genes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alignment:
    """How source genes map onto a reference.

    gene_map : (J,) int64, reference column of each source gene, -1 when unused.
    lengths : (J,) float64, length (bp) used for TPM of each source gene; NaN when unknown.
    covered : (G,) bool, reference columns that receive a value (the rest are "missing").
    """

    reference_id: str
    gene_map: np.ndarray
    lengths: np.ndarray
    covered: np.ndarray
    n_duplicates: int  # source genes that share a reference column with another one (summed)
    n_unknown_length: int  # source genes without a usable length (excluded from TPM)
    n_fallback_length: int = 0  # reference genes given the fallback length (no known length)

    @property
    def n_matched(self) -> int:
        return int(self.covered.sum())

    @property
    def n_unused(self) -> int:
        return int((self.gene_map < 0).sum())

    def report(self) -> str:
        return (
            f"matched {self.n_matched:,} / {len(self.covered):,} reference genes; "
            f"{self.n_unused:,} source genes unused; {self.n_duplicates:,} duplicate source "
            f"genes summed; {self.n_unknown_length:,} source genes without a length "
            f"(excluded from TPM); {self.n_fallback_length:,} reference genes given the "
            "fallback length"
        )


def align_genes(
    source_ids,
    reference: GeneReference,
    *,
    source_lengths: np.ndarray | None = None,
    source_symbols=None,
    by_symbol: bool = False,
    default_lengths: dict | pd.Series | None = None,
    fallback_length: float | None = 1000.0,
) -> Alignment:
    """Match source genes to the reference by Ensembl ID (with or without version suffix).

    Parameters
    ----------
    source_ids : (J,) gene IDs as the source gives them.
    reference : the target gene order.
    source_lengths : (J,) lengths in bp when the source has them; otherwise lengths are looked
        up by unversioned ID in ``default_lengths`` (a mapping ID → bp, e.g. the embedded table
        of all Ensembl genes) and then in the reference's own lengths.
    fallback_length : length (bp) given to source genes that match a reference gene but have no
        known length anywhere (BulkFormer assumes 1 kb); ``None`` excludes them from TPM, and
        their reference column is then "missing". Source genes outside the reference never get
        the fallback: without a length they stay out of the TPM denominator.
    source_symbols, by_symbol : when ``by_symbol`` is true, source genes whose ID matches
        nothing are matched by symbol (only to symbols unique in the reference).
    """
    ids = strip_version(source_ids)
    J = len(ids)
    gene_map = reference.index_of(ids, strip=False)
    if by_symbol:
        if source_symbols is None:
            raise ValueError("by_symbol=True needs source_symbols")
        sym = pd.Series(reference.symbols)
        uniq = sym[~sym.duplicated(keep=False) & (sym != "")]
        lut = pd.Index(uniq.to_numpy())
        pos = lut.get_indexer(np.asarray(source_symbols, dtype=object))
        fill = (gene_map < 0) & (pos >= 0)
        gene_map[fill] = uniq.index.to_numpy()[pos[fill]]
        log.info("matched %d more genes by symbol", int(fill.sum()))
    if source_lengths is not None:
        lengths = np.asarray(source_lengths, dtype=np.float64)
        if lengths.shape != (J,):
            raise ValueError(f"source_lengths has shape {lengths.shape}, expected ({J},)")
    else:
        lengths = np.full(J, np.nan)
        if default_lengths is not None:
            s = pd.Series(default_lengths, dtype=np.float64)
            lengths = s.reindex(ids).to_numpy(dtype=np.float64)
        ref_len = np.where(gene_map >= 0, reference.lengths[np.maximum(gene_map, 0)], np.nan)
        lengths = np.where(np.isfinite(lengths), lengths, ref_len)
    n_fallback = 0
    if fallback_length is not None:
        need = (gene_map >= 0) & ~valid_lengths(lengths)
        n_fallback = int(need.sum())
        lengths = np.where(need, float(fallback_length), lengths)
    used = gene_map[gene_map >= 0]
    n_dup = int(len(used) - len(np.unique(used)))
    covered = covered_columns(gene_map, lengths, len(reference))
    return Alignment(
        reference_id=reference.id,
        gene_map=gene_map.astype(np.int64),
        lengths=lengths,
        covered=covered,
        n_duplicates=n_dup,
        n_unknown_length=int((~valid_lengths(lengths)).sum()),
        n_fallback_length=n_fallback,
    )


@dataclass
class Block:
    """A block of samples read from a source.

    values : (n, G) float32 ``log1p(TPM)`` aligned to the reference (0 in missing columns).
    nonzero : (n,) int64 number of non-zero source genes (QC).
    total : (n,) float64 total counts (QC).
    """

    values: np.ndarray
    nonzero: np.ndarray
    total: np.ndarray


class ExpressionSource(abc.ABC):
    """A readable collection of bulk RNA-seq samples."""

    #: human-readable location (file or directory), used in messages and the manifest
    path: str

    #: samples the source itself left out of :attr:`samples` (e.g. the ARCHS4 single-cell
    #: filter): index = sample id, column ``reason``; None when it drops none. A corpus build
    #: lists them in ``excluded.tsv`` (``source_row`` −1) and counts them in the manifest.
    filtered: pd.DataFrame | None = None

    @property
    @abc.abstractmethod
    def samples(self) -> pd.DataFrame:
        """One row per sample, index = unique sample id; metadata columns (labels live here)."""

    @property
    @abc.abstractmethod
    def gene_ids(self) -> np.ndarray:
        """(J,) source gene IDs as stored."""

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @abc.abstractmethod
    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        """Read samples ``rows`` (positions in :attr:`samples`) as aligned log1p(TPM)."""

    def block_cuts(self, block_size: int) -> np.ndarray:
        """Boundaries (0 … n_samples, increasing) of the row blocks a corpus build reads:
        every ``block_size`` rows by default. Sources stored in chunks override it so that a
        chunk is not decoded by several blocks."""
        n = self.n_samples
        return np.r_[np.arange(0, n, block_size), n].astype(np.int64) if n else np.zeros(1, int)
