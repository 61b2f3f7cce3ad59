"""Matrix-shaped inputs (``.h5ad`` files, in-memory arrays and AnnData): what their numbers are,
their validation, their gene alignment and their normalization (by the C++ engine).

``values="counts"``     raw counts (non-negative integers) → TPM with gene lengths → log1p
``values="tpm"``        TPM taken as given (not renormalised over the covered genes) → log1p
``values="log1p_tpm"``  ``log1p(TPM)`` taken as given (BulkFormer's PreBULK.h5ad): turned back
                        into TPM (``expm1``, float64) so that duplicate genes sum in TPM space,
                        then log1p

For counts, a reference column is *covered* when a source gene of known length maps to it (the
TPM definition needs the length); for the two TPM modes every mapped gene covers its column.
Every mode is normalized by :func:`bulkformer.data.engine.normalize_dense`, the arithmetic of
the ARCHS4 reader (float32 C/L, float64 denominator, float32 log1p): a corpus mixing sources
uses one arithmetic.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from . import engine
from .genes import GeneReference
from .source import Alignment, Block, align_genes

__all__ = [
    "VALUE_KINDS",
    "MAX_LOG1P_TPM",
    "MAX_TPM",
    "check_value_kind",
    "check_values",
    "align_values",
    "align_matrix",
    "normalize_block",
]

log = logging.getLogger(__name__)

#: what the numbers of a matrix source are
VALUE_KINDS = ("counts", "tpm", "log1p_tpm")
#: the largest physical TPM (all of a sample's expression in one gene), with float32 slack
MAX_TPM = 1e6 * (1 + 1e-6)
#: the largest physical log1p(TPM) = ln(1e6 + 1), with float32 slack
MAX_LOG1P_TPM = float(np.log1p(1e6)) * (1 + 1e-6)


def check_value_kind(values: str) -> str:
    if values not in VALUE_KINDS:
        raise ValueError(f"values={values!r} is not one of {', '.join(VALUE_KINDS)}")
    return values


def check_values(x: np.ndarray, values: str, where: str, sample_ids: Sequence | None = None):
    """Raise ValueError on NaN/inf, negative numbers, non-integers where counts are expected,
    and TPM above 1e6 or log1p(TPM) above ln(1e6 + 1) (no sample has more than all of it).

    ``x`` is (n, J); ``where`` names the file/field for the message; ``sample_ids`` (n,) name the
    offending sample.
    """
    x = np.asarray(x)
    if x.dtype.kind == "b":
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
        frac = np.abs(x - np.rint(x)) > engine.COUNT_TOLERANCE
        if frac.any():
            r, c = np.argwhere(frac)[0]
            raise ValueError(
                f"{where}: {int(frac.sum())} non-integer value(s), first {x[r, c]!r} at "
                f"{_name(sample_ids, r)}, gene column {c}: expected raw integer counts (within "
                f"{engine.COUNT_TOLERANCE:g}) — round estimated counts (RSEM, salmon, kallisto) "
                "first; if the matrix holds TPM or log1p(TPM) say so (values='tpm' / "
                "'log1p_tpm', --values)"
            )
    cap = {"tpm": (MAX_TPM, "1e6"), "log1p_tpm": (MAX_LOG1P_TPM, "ln(1e6 + 1) = 13.8155")}
    if values in cap:
        top, text = cap[values]
        big = x > top
        if big.any():
            r, c = np.argwhere(big)[0]
            hint = (
                " — raw counts? say values='counts'"
                if values == "tpm"
                else (" — TPM or counts rather than log1p(TPM)? say values='tpm' / 'counts'")
            )
            raise ValueError(
                f"{where}: {int(big.sum())} value(s) above {text}, first {x[r, c]!r} at "
                f"{_name(sample_ids, r)}, gene column {c}: expected {values} ≤ {text}{hint}"
            )
        xf = np.asarray(x, dtype=np.float64)
        total = (np.expm1(xf) if values == "log1p_tpm" else xf).sum(axis=1)
        over = total > 1e6 * 1.01  # TPM sums to 1e6 over all genes, less over a subset
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


def align_matrix(
    gene_ids,
    reference: GeneReference,
    values: str,
    *,
    lengths: np.ndarray | None = None,
    where: str = "input",
) -> Alignment:
    """:func:`align_values` by Ensembl ID; when not a single ID matches (a matrix indexed by
    gene symbol, as many ``.h5ad`` files are), by symbol instead, with a warning naming
    ``where`` (the file and the gene field)."""
    al = align_values(gene_ids, reference, values, lengths=lengths)
    if al.n_matched == 0:
        by_sym = align_values(gene_ids, reference, values, lengths=lengths, by_symbol=True)
        if by_sym.n_matched > 0:
            log.warning(
                "%s: no gene ID is an Ensembl ID of the reference; matched by gene symbol "
                "instead (%s)",
                where,
                by_sym.report(),
            )
            return by_sym
    return al


def normalize_block(
    x: np.ndarray, alignment: Alignment, values: str, *, threads: int | None = None
) -> Block:
    """(n, J) validated numbers of ``values`` → :class:`Block` of (n, G) float32 log1p(TPM)
    aligned to the reference (0 in uncovered columns) plus QC over all source genes
    (non-zero count, sum of the numbers as given), all by the C++ engine."""
    x = np.asarray(x)
    G = len(alignment.covered)
    if values == "counts":
        v, nz, tot = engine.normalize_dense(
            x, alignment.gene_map, alignment.lengths, G, values="counts", threads=threads
        )
        return Block(v, nz, tot)
    if values == "tpm":
        v, nz, tot = engine.normalize_dense(
            x, alignment.gene_map, None, G, values="tpm", threads=threads
        )
        return Block(v, nz, tot)
    check_value_kind(values)
    nz, tot = engine.qc_dense(x, threads=threads)
    tpm = np.expm1(np.asarray(x, dtype=np.float64))
    v, _, _ = engine.normalize_dense(
        tpm, alignment.gene_map, None, G, values="tpm", qc=False, threads=threads
    )
    return Block(v, nz, tot)
