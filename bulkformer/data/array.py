"""In-memory expression source: a numpy (or scipy sparse) matrix, samples × genes, as an
:class:`~bulkformer.data.source.ExpressionSource`.

For users who already hold a matrix (``ArraySource(counts, gene_ids, samples)``), for AnnData
objects in memory (:func:`bulkformer.data.h5ad.anndata_source`), for ``embed`` and as the test
source of the corpus writer. What the numbers are is ``values=`` (see
:mod:`bulkformer.data.matrix`); they are normalized by the C++ engine like every source.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .genes import GeneReference
from .matrix import align_matrix, check_value_kind, check_values, normalize_block
from .source import Alignment, Block, ExpressionSource

__all__ = ["ArraySource"]

log = logging.getLogger(__name__)

_CHECK_ROWS = 1024  # rows validated at a time


def _is_sparse(x) -> bool:
    return hasattr(x, "tocsr") and not isinstance(x, np.ndarray)


class ArraySource(ExpressionSource):
    """Samples held in memory as a matrix.

    Parameters
    ----------
    counts : (S, J) numpy array or scipy sparse matrix, samples × source genes, holding
        ``values``.
    gene_ids : (J,) source gene IDs (Ensembl, with or without version; or gene symbols, matched
        when no ID matches).
    samples : DataFrame (index = unique sample IDs, columns = metadata such as labels), or a
        sequence of S sample IDs; default ``S0 … S{S-1}``.
    lengths : (J,) gene lengths in bp; default: looked up by gene ID
        (see :func:`~bulkformer.data.matrix.align_values`).
    values : ``"counts"`` (default), ``"tpm"`` or ``"log1p_tpm"``.
    path : a name for messages and the corpus manifest.

    A dense matrix is validated once here, a sparse one block by block in :meth:`read_block`
    (NaN, negative values, non-integer counts, TPM above 1e6 → ValueError naming ``path``).
    """

    def __init__(
        self,
        counts,
        gene_ids,
        samples: pd.DataFrame | Sequence[str] | None = None,
        lengths: np.ndarray | None = None,
        *,
        values: str = "counts",
        path: str = "<memory>",
    ):
        self.values_kind = check_value_kind(values)
        self.sparse = _is_sparse(counts)
        x = counts.tocsr() if self.sparse else np.asarray(counts)
        if x.ndim != 2:
            raise ValueError(f"{path}: counts must be 2-D (samples × genes), got {x.shape}")
        self.gene_ids_ = np.asarray(gene_ids, dtype=object)
        if self.gene_ids_.shape != (x.shape[1],):
            raise ValueError(
                f"{path}: counts has shape {x.shape} but {len(self.gene_ids_)} gene IDs were "
                "given — expected samples × genes"
            )
        if samples is None:
            samples = pd.DataFrame(index=pd.Index([f"S{i}" for i in range(x.shape[0])]))
        elif not isinstance(samples, pd.DataFrame):
            samples = pd.DataFrame(index=pd.Index(list(samples)))
        if len(samples) != x.shape[0]:
            raise ValueError(f"{path}: counts has {x.shape[0]} rows but {len(samples)} samples")
        if samples.index.duplicated().any():
            dup = samples.index[samples.index.duplicated()][:3].tolist()
            raise ValueError(f"{path}: duplicate sample IDs, e.g. {dup}")
        samples = samples.copy()
        samples.index = samples.index.astype(str)
        self.samples_ = samples
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        self.path = path
        if not self.sparse:  # row blocks: the temporaries stay small for large matrices
            for r in range(0, x.shape[0], _CHECK_ROWS):
                check_values(x[r : r + _CHECK_ROWS], values, path, samples.index[r:])
        self.x = x

    @property
    def samples(self) -> pd.DataFrame:
        return self.samples_

    @property
    def gene_ids(self) -> np.ndarray:
        return self.gene_ids_

    def align(self, reference: GeneReference) -> Alignment:
        """Gene alignment of this source to ``reference`` (by ID, else by symbol)."""
        return align_matrix(
            self.gene_ids_, reference, self.values_kind, lengths=self.lengths, where=self.path
        )

    def fingerprint(self) -> dict:
        """Content hash of the matrix, for the corpus manifest (resume checks)."""
        if self.sparse:
            parts = (self.x.data, self.x.indices, self.x.indptr)
        else:
            parts = (self.x,)
        h = hashlib.sha256()
        for p in parts:
            h.update(np.ascontiguousarray(p).view(np.uint8).ravel()[: 1 << 26])
        h.update(str(self.x.shape).encode() + str(self.x.dtype).encode())
        h.update("\n".join(self.samples_.index).encode())
        return {"kind": "memory", "shape": list(self.x.shape), "sha256": h.hexdigest()}

    def read_matrix(self, rows: np.ndarray) -> np.ndarray:
        """Raw (n, J) numbers of samples ``rows`` (any order), dense, as stored."""
        x = self.x[np.asarray(rows, dtype=np.int64)]
        return x.toarray() if self.sparse else x

    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        x = self.read_matrix(rows)
        if self.sparse:
            check_values(x, self.values_kind, self.path, self.samples_.index[rows])
        return normalize_block(x, alignment, self.values_kind, threads=threads)
