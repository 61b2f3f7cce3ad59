"""In-memory expression source: a numpy matrix (samples × genes) as an :class:`ExpressionSource`.

Useful for users who already hold a matrix (``ArraySource(counts, gene_ids, samples)``), as the
test source of the corpus writer, and as the home of the small value-handling routines shared by
the matrix-shaped readers (this one and :mod:`bulkformer.data.h5ad`):

``values="counts"``     raw counts (non-negative integers) → TPM with gene lengths → log1p
``values="tpm"``        TPM taken as given (not renormalised over the covered genes) → log1p
``values="log1p_tpm"``  ``log1p(TPM)`` taken as given (BulkFormer's PreBULK.h5ad)

For counts, a reference column is *covered* when a source gene of known length maps to it (the
TPM definition needs the length); for the two TPM modes every mapped gene covers its column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .genes import GeneReference
from .normalize import valid_lengths
from .source import Alignment, Block, ExpressionSource, align_genes

__all__ = ["ArraySource", "VALUE_KINDS"]

log = logging.getLogger(__name__)

#: what the numbers of a matrix source are
VALUE_KINDS = ("counts", "tpm", "log1p_tpm")
#: largest possible TPM (one gene holds every read) and log1p(TPM), natural log
TPM_MAX = 1e6
LOG1P_TPM_MAX = float(np.log1p(TPM_MAX))


def check_value_kind(values: str) -> str:
    if values not in VALUE_KINDS:
        raise ValueError(f"values={values!r} is not one of {', '.join(VALUE_KINDS)}")
    return values


def check_values(x: np.ndarray, values: str, where: str, sample_ids: Sequence | None = None):
    """Raise ValueError on NaN/inf, negative numbers, non-integers where counts are expected
    (within ``COUNT_TOLERANCE``, the rule of every reader), and TPM that cannot be TPM: a value
    above 1e6 (``log1p``: above ln(1e6 + 1)) or a sample whose TPM add up to more than 1e6.

    ``x`` is (n, J); ``where`` names the file/field for the message; ``sample_ids`` (n,) name the
    offending sample.
    """
    x = np.asarray(x)
    if x.dtype.kind in "ub":  # unsigned: nothing can be wrong
        return
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(
                f"{where}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at "
                f"{_name(sample_ids, r)}, gene column {c}: expected finite {values}"
            )
    if x.dtype.kind in "fi":
        neg = x < 0
        if neg.any():
            r, c = np.argwhere(neg)[0]
            raise ValueError(
                f"{where}: {int(neg.sum())} negative value(s), first {x[r, c]!r} at "
                f"{_name(sample_ids, r)}, gene column {c}: expected non-negative {values}"
            )
    if values == "counts" and x.dtype.kind == "f":
        from .engine import COUNT_TOLERANCE

        frac = np.abs(x - np.rint(x)) > COUNT_TOLERANCE
        if frac.any():
            r, c = np.argwhere(frac)[0]
            raise ValueError(
                f"{where}: {int(frac.sum())} non-integer value(s), first {x[r, c]!r} at "
                f"{_name(sample_ids, r)}, gene column {c}: expected raw integer counts (within "
                f"{COUNT_TOLERANCE:g}) — round estimated counts (RSEM, salmon, kallisto) first; "
                "if the matrix holds TPM or log1p(TPM) say so (values='tpm' / 'log1p_tpm', --values)"
            )
    if values in ("tpm", "log1p_tpm") and x.dtype.kind in "fiu" and x.size:
        top = TPM_MAX if values == "tpm" else LOG1P_TPM_MAX
        over = x > top * (1 + 1e-4)  # float32 rounding of a sample that is all one gene
        if over.any():
            r, c = np.argwhere(over)[0]
            raise ValueError(
                f"{where}: {int(over.sum())} value(s) above {top:.6g}, the most a {values} value "
                f"can be (TPM sums to 1e6 per sample), first {float(x[r, c])!r} at "
                f"{_name(sample_ids, r)}, gene column {c}: is the matrix counts, or log2 / "
                "another scale? (--values counts for raw counts)"
            )
        xf = np.asarray(x, dtype=np.float64)
        total = (np.expm1(xf) if values == "log1p_tpm" else xf).sum(axis=1)
        over = total > TPM_MAX * 1.01  # TPM sums to 1e6 over all genes, less over a subset
        if over.any():
            r = int(np.flatnonzero(over)[0])
            raise ValueError(
                f"{where}: {int(over.sum())} sample(s) whose TPM add up to more than 1e6, first "
                f"{_name(sample_ids, r)} with {total[r]:.4g}: expected {values} (TPM sum to 1e6 "
                "per sample) — is the matrix another unit (FPKM, CPM of a subset, counts)?"
            )


def _name(sample_ids, r) -> str:
    return f"sample {sample_ids[r]!r}" if sample_ids is not None else f"row {r}"


def align_values(
    gene_ids,
    reference: GeneReference,
    values: str,
    *,
    lengths: np.ndarray | None = None,
    by_symbol: bool = False,
) -> Alignment:
    """Align source genes to ``reference`` for a matrix of ``values`` (see module docstring).

    Lengths come from ``lengths`` when given, else from the embedded table of Ensembl gene
    lengths when the package has one, else from the reference. ``by_symbol`` also matches
    ``gene_ids`` against the reference's symbols (for matrices indexed by gene symbol).
    """
    default = None
    if lengths is None and values == "counts":
        try:  # embedded table of all Ensembl genes (optional)
            from .genes import default_gene_lengths  # type: ignore[attr-defined]

            default = default_gene_lengths()
        except ImportError:
            default = None
    al = align_genes(
        gene_ids,
        reference,
        source_lengths=lengths,
        default_lengths=default,
        source_symbols=gene_ids if by_symbol else None,
        by_symbol=by_symbol,
    )
    if values != "counts":
        covered = np.zeros(len(reference), dtype=bool)
        covered[al.gene_map[al.gene_map >= 0]] = True
        al = dataclasses.replace(al, covered=covered, n_unknown_length=0)
    return al


def to_log1p_tpm(x: np.ndarray, alignment: Alignment, values: str) -> np.ndarray:
    """(n, J) matrix of ``values`` → (n, G) float32 ``log1p(TPM)`` aligned to the reference.

    Same numbers as :func:`~bulkformer.data.normalize.log1p_tpm_ref` (computed in float64,
    duplicates summed in TPM space in source order), vectorised; 0 in uncovered columns.
    """
    x = np.asarray(x, dtype=np.float64)
    gm = alignment.gene_map
    G = len(alignment.covered)
    if values == "counts":
        ok = valid_lengths(alignment.lengths)
        rate = x[:, ok] / alignment.lengths[ok]
        denom = rate.sum(axis=1)
        with np.errstate(divide="ignore"):
            scale = np.where(denom > 0, 1e6 / np.where(denom > 0, denom, 1.0), 0.0)
        rate *= scale[:, None]
        cols = gm[ok]
        keep = cols >= 0
        tpm, cols = rate[:, keep], cols[keep]
        log_given = None
    else:
        keep = gm >= 0
        tpm, cols = x[:, keep], gm[keep]
        log_given = values == "log1p_tpm"
    first = ~pd.Index(cols).duplicated()
    out = np.zeros((len(x), G), dtype=np.float64)
    if first.all() and log_given:
        out[:, cols] = tpm  # already log1p, nothing to sum
        return out.astype(np.float32)
    if log_given:
        tpm = np.expm1(tpm)
    out[:, cols[first]] = tpm[:, first]
    for j in np.flatnonzero(~first):  # duplicate IDs: few; summed in source order
        out[:, cols[j]] += tpm[:, j]
    np.log1p(out, out=out)
    return out.astype(np.float32)


def qc_figures(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(non-zero source genes int64, total float64) per sample, over all source genes."""
    return (x != 0).sum(axis=1).astype(np.int64), x.sum(axis=1, dtype=np.float64)


class ArraySource(ExpressionSource):
    """Samples held in memory as a numpy matrix.

    Parameters
    ----------
    counts : (S, J) array, samples × source genes, holding ``values``.
    gene_ids : (J,) source gene IDs (Ensembl, with or without version).
    samples : DataFrame (index = unique sample IDs, columns = metadata such as labels), or a
        sequence of S sample IDs; default ``S0 … S{S-1}``.
    lengths : (J,) gene lengths in bp; default: looked up by gene ID (see :func:`align_values`).
    values : ``"counts"`` (default), ``"tpm"`` or ``"log1p_tpm"`` (module docstring).
    path : a name for messages and the corpus manifest.

    The matrix is validated once here (NaN, negative values, non-integer counts → ValueError).
    """

    def __init__(
        self,
        counts: np.ndarray,
        gene_ids,
        samples: pd.DataFrame | Sequence[str] | None = None,
        lengths: np.ndarray | None = None,
        *,
        values: str = "counts",
        path: str = "<memory>",
    ):
        self.values_kind = check_value_kind(values)
        x = np.asarray(counts)
        if x.ndim != 2:
            raise ValueError(f"{path}: counts must be 2-D (samples × genes), got {x.shape}")
        self.gene_ids_ = np.asarray(gene_ids, dtype=object)
        if self.gene_ids_.shape != (x.shape[1],):
            raise ValueError(
                f"{path}: counts has shape {x.shape} but {len(self.gene_ids_)} gene IDs were "
                "given — expected samples × genes"
            )
        if samples is None:
            samples = pd.DataFrame(index=pd.Index([f"S{i}" for i in range(len(x))]))
        elif not isinstance(samples, pd.DataFrame):
            samples = pd.DataFrame(index=pd.Index(list(samples)))
        if len(samples) != len(x):
            raise ValueError(f"{path}: counts has {len(x)} rows but {len(samples)} samples")
        if samples.index.duplicated().any():
            dup = samples.index[samples.index.duplicated()][:3].tolist()
            raise ValueError(f"{path}: duplicate sample IDs, e.g. {dup}")
        samples = samples.copy()
        samples.index = samples.index.astype(str)
        self.samples_ = samples
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        self.path = path
        check_values(x, values, path, samples.index)
        self.x = x

    @property
    def samples(self) -> pd.DataFrame:
        return self.samples_

    @property
    def gene_ids(self) -> np.ndarray:
        return self.gene_ids_

    def align(self, reference: GeneReference) -> Alignment:
        """Gene alignment of this source to ``reference`` (used by the corpus writer)."""
        return align_values(self.gene_ids_, reference, self.values_kind, lengths=self.lengths)

    def fingerprint(self) -> dict:
        """Content hash of the matrix, for the corpus manifest (resume checks)."""
        h = hashlib.sha256(np.ascontiguousarray(self.x).view(np.uint8).ravel()[: 1 << 26])
        h.update(str(self.x.shape).encode() + str(self.x.dtype).encode())
        h.update("\n".join(self.samples_.index).encode())
        return {"kind": "memory", "shape": list(self.x.shape), "sha256": h.hexdigest()}

    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        x = self.x[np.asarray(rows)]
        nz, tot = qc_figures(x)
        return Block(to_log1p_tpm(x, alignment, self.values_kind), nz, tot)
