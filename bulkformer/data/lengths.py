"""Gene lengths supplied by the user: a ``gene_id``/``length`` TSV replacing the embedded table.

TPM needs a length for every source gene (``TPM[j] = (C[j] / L[j]) / Σ_k (C[k] / L[k]) · 1e6``).
By default lengths come from the embedded table of all Ensembl genes, then the reference, then
a 1 kb fallback (BulkFormer's assumption) for reference genes that have none. With
``bulkformer preprocess --lengths TSV`` the table is the only source: every source gene is
looked up in it (by unversioned Ensembl ID, ``_PAR_Y`` kept), and ``--fallback-length`` says
what happens to genes it lacks:

``BP`` (default 1000)
    source genes that map to a reference gene get ``BP``; genes outside the reference that the
    table lacks stay out of the TPM denominator (as without ``--lengths``).
``none``
    every gene without a length is left out of the TPM denominator, and its reference column is
    *missing* for that source (the corpus' missing-gene mask is set, the model never sees a
    made-up value). Their number and examples are logged, and counted in the manifest's
    alignment report (``source genes without a length``).

The TSV (``bulkformer genes lengths --gtf X.gtf`` writes one): a header with columns
``gene_id`` and ``length`` (others ignored), ``#`` comment lines, gzip allowed; lengths in bp,
finite and > 0; one row per gene.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os

import numpy as np
import pandas as pd

from .._io import write_atomic
from .genes import GeneReference, default_gene_lengths, strip_version
from .normalize import covered_columns, valid_lengths
from .source import Alignment, Block, ExpressionSource

__all__ = [
    "LengthOverride",
    "apply_lengths",
    "parse_fallback",
    "read_lengths_tsv",
    "with_lengths",
    "write_lengths_tsv",
]

log = logging.getLogger(__name__)

#: the share of a source's reference-matched genes a --lengths table must cover without a warning
MIN_COVERAGE = 0.9


def parse_fallback(text) -> float | None:
    """``--fallback-length``: a length in bp (> 0) or ``none``."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("none", "off")):
        return None
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"--fallback-length {text!r}: expected a length in bp (e.g. 1000) or 'none'"
        ) from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"--fallback-length {text!r}: expected a length > 0 bp, or 'none'")
    return v


def read_lengths_tsv(path: str | os.PathLike) -> pd.Series:
    """Gene lengths from a TSV with columns ``gene_id`` and ``length`` (see module docstring).

    Returns
    -------
    float64 Series indexed by unversioned gene ID (``_PAR_Y`` suffixes kept), name ``length``.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; not text; no ``gene_id``/``length`` columns; a length that is not a
        finite number > 0 (the row is named); a gene listed twice with different lengths.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such lengths file")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if b"\0" in raw[:65536]:
        raise ValueError(f"{path}: binary data; expected a tab-separated gene_id/length table")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ValueError(
            f"{path}: no rows; expected a header 'gene_id<TAB>length' and one row per gene"
        )
    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        raise ValueError(
            f"{path}: not a tab-separated table ({' '.join(str(e).split())})"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("gene_id", "length") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: lacks column(s) {missing}; found {list(df.columns)[:6]} — expected a "
            "header with gene_id and length (tab-separated), as `bulkformer genes lengths` writes"
        )
    if df.empty:
        raise ValueError(f"{path}: a header but no gene rows")
    ids = df["gene_id"].str.strip()
    length = pd.to_numeric(df["length"].str.strip(), errors="coerce").to_numpy(np.float64)
    bad = ~valid_lengths(length) | (ids == "").to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: row {i + 2} (gene_id {ids.iloc[i]!r}) has length {df['length'].iloc[i]!r}; "
            "expected a gene ID and a length in bp, a finite number > 0"
        )
    s = pd.Series(length, index=pd.Index(strip_version(ids.to_numpy(object)), name="gene_id"))
    dup = s.index.duplicated(keep=False)
    if dup.any():
        g = s[dup].groupby(level=0)
        clash = g.nunique()
        clash = clash[clash > 1]
        if len(clash):
            gid = clash.index[0]
            raise ValueError(
                f"{path}: gene {gid} is listed {int(g.size()[gid])} times with different lengths "
                f"{sorted(s[gid].tolist())[:4]} (versions of one ID count as one gene); expected "
                "one length per gene"
            )
        s = s[~s.index.duplicated()]
    return s.rename("length")


def write_lengths_tsv(lengths: pd.Series, path: str | os.PathLike, provenance: dict) -> None:
    """Write ``gene_id``/``length`` rows atomically (temporary file, then rename); gzip when the
    name ends in ``.gz``. ``provenance`` becomes ``# key: value`` lines above the header."""
    path = os.fspath(path)
    buf = io.StringIO()
    for k, v in provenance.items():
        buf.write(f"# {k}: {' '.join(str(v).split())}\n")
    buf.write("gene_id\tlength\n")
    vals = np.asarray(lengths, dtype=np.float64)
    as_int = np.all(vals == np.round(vals))
    for gid, v in zip(lengths.index, vals):
        buf.write(f"{gid}\t{int(v) if as_int else repr(float(v))}\n")
    data = buf.getvalue().encode()
    write_atomic(path, gzip.compress(data, mtime=0) if path.endswith(".gz") else data)


def apply_lengths(
    alignment: Alignment,
    source_ids,
    reference: GeneReference,
    *,
    table: pd.Series | None,
    fallback_length: float | None,
    where: str = "source",
    table_name: str = "--lengths",
    given: np.ndarray | None = None,
) -> Alignment:
    """``alignment`` with its TPM lengths recomputed (the gene mapping is kept).

    ``table`` (ID → bp) is the only source of lengths when given (looked up by the source's
    gene ID, else by the ID of the reference gene it matched); otherwise ``given`` (the
    source's own (J,) lengths), else the embedded table, then the reference, as :func:`~bulkformer.data.source.align_genes` does. Reference-matched
    genes without a length get ``fallback_length`` (``None``: excluded from TPM, column missing).
    """
    ids = strip_version(source_ids)
    gm = alignment.gene_map
    mapped = gm >= 0
    if table is not None:
        lengths = table.reindex(ids).to_numpy(np.float64)
        # sources indexed by symbol: look the matched reference gene's ID up as well
        by_ref = table.reindex(reference.gene_ids[np.maximum(gm, 0)]).to_numpy(np.float64)
        lengths = np.where(np.isfinite(lengths) | ~mapped, lengths, by_ref)
        n_hit = int((mapped & np.isfinite(lengths)).sum())
        if mapped.any() and n_hit == 0:
            raise ValueError(
                f"{table_name}: lacks all {int(mapped.sum()):,} reference genes of {where} "
                f"(e.g. {list(ids[mapped][:3])}; IDs in the table e.g. "
                f"{list(table.index[:3])}): expected Ensembl gene IDs (column gene_id)"
            )
        if mapped.any() and n_hit < MIN_COVERAGE * int(mapped.sum()):
            log.warning(
                "%s: has lengths for only %d of the %d reference genes of %s",
                table_name,
                n_hit,
                int(mapped.sum()),
                where,
            )
    elif given is not None:
        lengths = np.asarray(given, dtype=np.float64)
    else:
        lengths = default_gene_lengths().reindex(ids).to_numpy(np.float64)
        ref_len = np.where(mapped, reference.lengths[np.maximum(gm, 0)], np.nan)
        lengths = np.where(np.isfinite(lengths), lengths, ref_len)
    need = mapped & ~valid_lengths(lengths)
    n_fallback = 0
    if fallback_length is not None:
        n_fallback = int(need.sum())
        lengths = np.where(need, float(fallback_length), lengths)
    elif need.any():
        log.warning(
            "%s: %d reference gene(s) have no length (e.g. %s): left out of the TPM denominator "
            "and marked missing (--fallback-length none)",
            where,
            int(need.sum()),
            list(ids[need][:5]),
        )
    return dataclasses.replace(
        alignment,
        lengths=lengths,
        covered=covered_columns(gm, lengths, len(alignment.covered)),
        n_unknown_length=int((~valid_lengths(lengths)).sum()),
        n_fallback_length=n_fallback,
    )


class LengthOverride(ExpressionSource):
    """A source whose TPM lengths come from a user table and/or another fallback.

    Everything but :meth:`align` and :meth:`fingerprint` is the wrapped source's; the
    fingerprint adds the table's hash and the fallback, so that a build with other lengths is
    never resumed from a partial made with these.
    """

    def __init__(
        self,
        source: ExpressionSource,
        table: pd.Series | None,
        fallback_length: float | None,
        table_name: str = "--lengths",
    ):
        self.inner = source
        self.table = table
        self.fallback_length = fallback_length
        self.table_name = table_name
        h = hashlib.sha256()
        if table is not None:
            h.update("\n".join(map(str, table.index)).encode())
            h.update(np.ascontiguousarray(table.to_numpy(np.float64)).tobytes())
        self.table_sha256 = h.hexdigest() if table is not None else None

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def path(self) -> str:
        return self.inner.path

    @property
    def samples(self) -> pd.DataFrame:
        return self.inner.samples

    @property
    def gene_ids(self) -> np.ndarray:
        return self.inner.gene_ids

    @property
    def n_samples(self) -> int:
        return self.inner.n_samples

    def block_cuts(self, block_size: int) -> np.ndarray:
        return self.inner.block_cuts(block_size)

    def read_block(self, rows, alignment: Alignment, *, threads: int | None = None) -> Block:
        return self.inner.read_block(rows, alignment, threads=threads)

    def align(self, reference: GeneReference) -> Alignment:
        from .source import align_genes

        fn = getattr(self.inner, "align", None)
        al = fn(reference) if callable(fn) else align_genes(self.inner.gene_ids, reference)
        kind = getattr(self.inner, "values_kind", "counts")
        if kind != "counts":
            log.info("%s: holds %s; gene lengths are not used", self.path, kind)
            return al
        return apply_lengths(
            al,
            self.inner.gene_ids,
            reference,
            table=self.table,
            fallback_length=self.fallback_length,
            where=str(self.path),
            table_name=self.table_name,
            given=getattr(self.inner, "lengths", None),
        )

    def fingerprint(self) -> dict:
        from .corpus import file_fingerprint

        fn = getattr(self.inner, "fingerprint", None)
        fp = dict(fn() if callable(fn) else file_fingerprint(self.inner.path))
        fp["lengths"] = {"table_sha256": self.table_sha256, "fallback_length": self.fallback_length}
        return fp


def with_lengths(sources, table_path: str | None, fallback: str | float | None = 1000.0) -> list:
    """``sources`` wrapped in :class:`LengthOverride` when a table or a non-default fallback is
    asked for (unchanged otherwise)."""
    fb = parse_fallback(fallback) if isinstance(fallback, str) else fallback
    if table_path is None and fb == 1000.0:
        return list(sources)
    table = read_lengths_tsv(table_path) if table_path is not None else None
    if table is not None:
        log.info("%s: lengths of %d genes (replacing the embedded table)", table_path, len(table))
    return [LengthOverride(s, table, fb, table_name=table_path or "--lengths") for s in sources]
