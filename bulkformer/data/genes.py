"""The gene reference: the ordered list of protein-coding genes every corpus, ESM2 matrix and
checkpoint is aligned to.

A reference is a table with one row per gene, in a fixed order:

``gene_id``  Ensembl gene ID without version (``ENSG00000141510``)
``symbol``   HGNC symbol (may be empty)
``length``   gene length in bp (union of exons); NaN when unknown

Its :attr:`GeneReference.id` is a short hash of the ordered gene IDs: two objects aligned to the
same reference share the id, and a mismatch is always an error, never a silent reorder.

On disk a reference is a TSV (optionally gzipped) with those three columns and ``#`` comment
lines above the header holding provenance (``# key: value``).

Building one (:meth:`GeneReference.build`, ``bulkformer genes build``): the genes are those with
``gene_biotype:protein_coding`` in the headers of an Ensembl peptide FASTA
(``Homo_sapiens.GRCh38.pep.all.fa``), **ordered by unversioned Ensembl gene ID** (plain string
order, which for ``ENSG`` + 11 digits is numeric order). Lengths are the union-of-exons length
of each gene in a GTF (``Homo_sapiens.GRCh38.NNN.gtf``): all ``exon`` lines of the gene, merged
where they overlap or touch, summed (bp, 1-based closed GTF coordinates).

The package ships a default reference (:meth:`GeneReference.default`) and a table of lengths of
all Ensembl genes of any biotype (:func:`default_gene_lengths`), used as TPM denominators for
source genes outside the reference; ``bulkformer/resources/PROVENANCE.md`` says how both were
derived.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import gzip
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._io import write_atomic

__all__ = [
    "GeneReference",
    "strip_version",
    "ReferenceMismatchError",
    "read_pep_genes",
    "gtf_gene_lengths",
    "default_gene_lengths",
    "resource_path",
    "union_length",
    "add_parser",
]

log = logging.getLogger(__name__)

_RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")
DEFAULT_REFERENCE_FILE = "gene_reference.tsv.gz"
DEFAULT_LENGTHS_FILE = "gene_lengths.tsv.gz"


def resource_path(name: str) -> str:
    """Absolute path of a data file shipped in ``bulkformer/resources``."""
    path = os.path.join(_RESOURCES, name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"bundled resource {name!r} not found at {path}: the package was installed without "
            "its data files (setup.py package_data bulkformer/resources/*)"
        )
    return path


class ReferenceMismatchError(ValueError):
    """Two objects (corpus, ESM2 matrix, checkpoint, stats) use different gene references."""


def strip_version(ids: Iterable[str]) -> np.ndarray:
    """Drop Ensembl version suffixes: ``ENSG00000141510.17`` → ``ENSG00000141510``.

    ``_PAR_Y`` suffixes used by GENCODE for pseudo-autosomal copies are kept, so that
    ``ENSG00000002586.20_PAR_Y`` becomes ``ENSG00000002586_PAR_Y`` and stays distinct.
    """
    s = pd.Series(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=object))
    s = s.astype(str)
    dotted = s.str.contains(".", regex=False).to_numpy()  # most files: no versions, no regex
    if dotted.any():
        s[dotted] = s[dotted].str.replace(r"^(ENS[A-Z]*G\d+)\.\d+", r"\1", regex=True)
    return s.to_numpy(dtype=object)


@dataclass(frozen=True)
class GeneReference:
    """An ordered protein-coding gene list (see module docstring)."""

    gene_ids: np.ndarray  # (G,) object array of unversioned Ensembl gene IDs, unique
    symbols: np.ndarray  # (G,) object array of symbols ('' when unknown)
    lengths: np.ndarray  # (G,) float64, bp; NaN when unknown
    provenance: dict = field(default_factory=dict)  # free-form 'key: value' facts

    def __post_init__(self) -> None:
        ids = np.asarray(self.gene_ids, dtype=object)
        sym = np.asarray(self.symbols, dtype=object)
        ln = np.asarray(self.lengths, dtype=np.float64)
        if not (len(ids) == len(sym) == len(ln)):
            raise ValueError(
                f"gene reference columns differ in length: gene_id {len(ids)}, "
                f"symbol {len(sym)}, length {len(ln)}"
            )
        if len(ids) == 0:
            raise ValueError("gene reference is empty")
        dup = pd.Index(ids).duplicated()
        if dup.any():
            raise ValueError(
                f"gene reference has duplicate gene_id values, e.g. {ids[dup][:3].tolist()}"
            )
        object.__setattr__(self, "gene_ids", ids)
        object.__setattr__(self, "symbols", sym)
        object.__setattr__(self, "lengths", ln)

    # ------------------------------------------------------------------ identity
    def __len__(self) -> int:
        return len(self.gene_ids)

    @property
    def id(self) -> str:
        """Short stable hash of the ordered gene IDs (``"gr-" + 12 hex digits``)."""
        h = hashlib.sha1("\n".join(self.gene_ids.tolist()).encode()).hexdigest()
        return f"gr-{h[:12]}"

    def check_same(self, other_id: str, what: str) -> None:
        """Raise :class:`ReferenceMismatchError` unless ``other_id`` equals :attr:`id`."""
        if other_id != self.id:
            raise ReferenceMismatchError(
                f"{what} was built for gene reference {other_id!r} but this gene reference is "
                f"{self.id!r} ({len(self)} genes): rebuild it against the same reference"
            )

    # ------------------------------------------------------------------ lookup
    def index_of(self, ids: Sequence[str], *, strip: bool = True) -> np.ndarray:
        """Position of each of ``ids`` in the reference, -1 where absent (int64, same length)."""
        q = strip_version(ids) if strip else np.asarray(ids, dtype=object)
        idx = pd.Index(self.gene_ids).get_indexer(q)
        return idx.astype(np.int64)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"gene_id": self.gene_ids, "symbol": self.symbols, "length": self.lengths}
        )

    def subset(self, n: int) -> GeneReference:
        """The first ``n`` genes (for tests and tiny models); provenance notes the cut."""
        prov = dict(self.provenance)
        prov["subset"] = f"first {n} of {len(self)} genes of {self.id}"
        return GeneReference(self.gene_ids[:n], self.symbols[:n], self.lengths[:n], prov)

    # ------------------------------------------------------------------ I/O
    def to_tsv(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file then rename); gzip when the name ends in ``.gz``."""
        path = os.fspath(path)
        buf = io.StringIO()
        for k, v in {**self.provenance, "reference_id": self.id, "n_genes": len(self)}.items():
            buf.write(f"# {k}: {str(v).replace(chr(10), ' ')}\n")
        self.to_frame().to_csv(buf, sep="\t", index=False, na_rep="NA")
        data = buf.getvalue().encode()
        data = gzip.compress(data, mtime=0) if path.endswith(".gz") else data
        write_atomic(path, data, fsync=False, unique=True)

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> GeneReference:
        path = os.fspath(path)
        opener = gzip.open if path.endswith(".gz") else open
        prov: dict = {}
        with opener(path, "rt") as f:
            lines = f.read().splitlines()
        body = []
        for line in lines:
            if line.startswith("#"):
                k, _, v = line[1:].partition(":")
                prov[k.strip()] = v.strip()
            else:
                body.append(line)
        df = pd.read_csv(
            io.StringIO("\n".join(body)),
            sep="\t",
            dtype={"gene_id": str, "symbol": str},
            keep_default_na=False,
            na_values={"length": ["NA", ""]},
        )
        missing = {"gene_id", "symbol", "length"} - set(df.columns)
        if missing:
            raise ValueError(
                f"{path}: gene reference TSV lacks column(s) {sorted(missing)}; expected "
                "gene_id, symbol, length"
            )
        recorded = prov.pop("reference_id", None)
        prov.pop("n_genes", None)
        ref = cls(
            df["gene_id"].to_numpy(object),
            df["symbol"].fillna("").to_numpy(object),
            df["length"].to_numpy(np.float64),
            prov,
        )
        if recorded is not None and recorded != ref.id:
            raise ValueError(
                f"{path}: records reference_id {recorded} but its gene list hashes to {ref.id} "
                "(file edited by hand?)"
            )
        return ref

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        pep: str | os.PathLike,
        gtf: str | os.PathLike,
        *,
        biotype: str = "protein_coding",
    ) -> GeneReference:
        """Build a reference from an Ensembl peptide FASTA and a GTF of the same release.

        Parameters
        ----------
        pep : ``Homo_sapiens.GRCh38.pep.all.fa`` (or ``.fa.gz``). Genes whose headers carry
            ``gene_biotype:<biotype>`` are kept; the symbol comes from ``gene_symbol:``.
        gtf : ``Homo_sapiens.GRCh38.NNN.gtf`` (or ``.gtf.gz``), streamed; only ``exon`` lines
            are parsed. A gene's length is its union-of-exons length (bp).
        biotype : gene biotype to keep (default ``protein_coding``).

        Returns
        -------
        GeneReference ordered by unversioned Ensembl gene ID. Genes absent from the GTF get a
        NaN length (logged). Provenance records input names, sizes, date and counts.
        """
        genes = read_pep_genes(pep, biotype=biotype)
        lengths = gtf_gene_lengths(gtf, gene_ids=genes["gene_id"])
        ln = lengths.reindex(genes["gene_id"]).to_numpy(np.float64)
        n_len = int(np.isfinite(ln).sum())
        if n_len == 0:
            raise ValueError(
                f"{os.fspath(gtf)}: none of the {len(genes):,} {biotype} genes of "
                f"{os.fspath(pep)} has an exon in the GTF (gene IDs e.g. "
                f"{genes['gene_id'].iloc[:2].tolist()}) — are both files from the same Ensembl "
                "release and species?"
            )
        if n_len < len(genes):
            missing = genes["gene_id"][~np.isfinite(ln)]
            log.warning(
                "%d of %d genes have no exon in %s (length NaN), e.g. %s",
                len(missing),
                len(genes),
                os.fspath(gtf),
                missing.iloc[:3].tolist(),
            )
        from .._version import __version__

        prov = {
            "source": "built by bulkformer genes build (GeneReference.build)",
            "bulkformer_version": __version__,
            "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pep_file": f"{os.path.basename(os.fspath(pep))} ({os.path.getsize(pep):,} bytes)",
            "gtf_file": f"{os.path.basename(os.fspath(gtf))} ({os.path.getsize(gtf):,} bytes)",
            "pep_records": genes.attrs["n_records"],
            "selection": f"genes with gene_biotype:{biotype} in the FASTA headers",
            "order": "unversioned Ensembl gene ID, ascending string order",
            "length": "union of the gene's GTF exon intervals (overlaps merged), bp",
            "n_with_length": n_len,
            "n_without_length": len(genes) - n_len,
        }
        return cls(genes["gene_id"].to_numpy(object), genes["symbol"].to_numpy(object), ln, prov)

    @classmethod
    def default(cls) -> GeneReference:
        """The reference shipped with the package (``bulkformer/resources/gene_reference.tsv.gz``).

        Protein-coding genes of GENCODE v36 (the gene model of GDC/TCGA STAR counts), ordered by
        unversioned Ensembl gene ID; see ``bulkformer/resources/PROVENANCE.md``. The object is
        cached: treat its arrays as read-only.
        """
        return _load_default_reference()


@functools.lru_cache(maxsize=1)
def _load_default_reference() -> GeneReference:
    return GeneReference.from_tsv(resource_path(DEFAULT_REFERENCE_FILE))


@functools.lru_cache(maxsize=1)
def _load_default_lengths() -> pd.Series:
    path = resource_path(DEFAULT_LENGTHS_FILE)
    df = pd.read_csv(path, sep="\t", comment="#", dtype={"gene_id": str, "length": np.float64})
    if list(df.columns) != ["gene_id", "length"]:
        raise ValueError(f"{path}: expected columns gene_id, length; found {list(df.columns)}")
    return pd.Series(
        df["length"].to_numpy(np.float64), index=pd.Index(df["gene_id"]), name="length"
    )


def default_gene_lengths() -> pd.Series:
    """Lengths (bp, float64) of all Ensembl genes of any biotype with a known length.

    Index: unversioned Ensembl gene ID. Shipped as ``bulkformer/resources/gene_lengths.tsv.gz``
    (derivation in ``PROVENANCE.md``); pass it as ``default_lengths`` to
    :func:`~bulkformer.data.source.align_genes` so that TPM denominators include non-coding
    genes. Returns a fresh copy.
    """
    return _load_default_lengths().copy()


# ---------------------------------------------------------------------- builders' parsers
def _open_text(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


_HEADER_RE = {
    "gene": re.compile(r"(?:^|\s)gene:(\S+)"),
    "gene_biotype": re.compile(r"(?:^|\s)gene_biotype:(\S+)"),
    "gene_symbol": re.compile(r"(?:^|\s)gene_symbol:(\S+)"),
}


def read_pep_genes(pep: str | os.PathLike, *, biotype: str = "protein_coding") -> pd.DataFrame:
    """Genes of one biotype named in an Ensembl peptide FASTA's headers.

    Headers look like ``>ENSP00000354587.3 pep chromosome:GRCh38:21:… gene:ENSG00000160179.19
    transcript:ENST00000380025.5 gene_biotype:protein_coding transcript_biotype:protein_coding
    gene_symbol:ABCG1 description:…`` and are parsed with Biopython.

    Returns
    -------
    DataFrame with columns ``gene_id`` (unversioned), ``symbol`` ('' when absent) and
    ``n_proteins``, sorted by ``gene_id``; ``attrs["n_records"]`` holds the record count.
    """
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    path = os.fspath(pep)
    genes: dict[str, list] = {}
    n_records = n_ensembl = 0
    first_title = None
    with _open_text(path) as f:
        try:
            for title, _seq in SimpleFastaParser(f):
                n_records += 1
                if first_title is None:
                    first_title = title
                m_gene = _HEADER_RE["gene"].search(title)
                m_bt = _HEADER_RE["gene_biotype"].search(title)
                if not m_gene or not m_bt:
                    continue
                n_ensembl += 1
                if m_bt.group(1) != biotype:
                    continue
                gid = m_gene.group(1)
                m_sym = _HEADER_RE["gene_symbol"].search(title)
                entry = genes.get(gid)
                if entry is None:
                    genes[gid] = [m_sym.group(1) if m_sym else "", 1]
                else:
                    entry[1] += 1
                    if not entry[0] and m_sym:
                        entry[0] = m_sym.group(1)
        except ValueError as e:  # Biopython: text before the first '>' etc.
            raise ValueError(f"{path}: not a FASTA file ({e})") from e
    if n_records == 0:
        raise ValueError(f"{path}: no FASTA records (expected '>ENSP… pep … gene:ENSG…' headers)")
    if n_ensembl == 0:
        raise ValueError(
            f"{path}: {n_records:,} FASTA records but none has an Ensembl header with 'gene:' and "
            f"'gene_biotype:' fields (first header: {first_title[:120]!r}); expected Ensembl "
            "Homo_sapiens.GRCh38.pep.all.fa"
        )
    if not genes:
        raise ValueError(
            f"{path}: {n_ensembl:,} Ensembl headers but none with gene_biotype:{biotype}"
        )
    df = pd.DataFrame(
        {
            "gene_id": strip_version(list(genes)),
            "symbol": [v[0] for v in genes.values()],
            "n_proteins": [v[1] for v in genes.values()],
        }
    )
    # versioned IDs of one gene collapse to one row (they never differ within a release)
    df = df.groupby("gene_id", sort=True, as_index=False).agg(
        symbol=("symbol", "first"), n_proteins=("n_proteins", "sum")
    )
    df.attrs["n_records"] = n_records
    log.info("%s: %d records, %d %s genes", os.path.basename(path), n_records, len(df), biotype)
    return df


_GTF_GENE_ID = r'gene_id "([^"]+)"'


def gtf_gene_lengths(
    gtf: str | os.PathLike,
    *,
    gene_ids: Iterable[str] | None = None,
    chunksize: int = 1_000_000,
) -> pd.Series:
    """Union-of-exons length of every gene in a GTF, streamed (gzip detected by magic bytes).

    Only lines whose feature (column 3) is ``exon`` are used. Per gene, exon intervals (1-based,
    closed) on the same sequence are merged where they overlap and their lengths summed.

    Parameters
    ----------
    gtf : path to a GTF (Ensembl or GENCODE; versioned gene IDs are stripped, ``_PAR_Y`` kept).
    gene_ids : only compute these genes (unversioned IDs); default all.
    chunksize : lines per parsing chunk (memory bound).

    Returns
    -------
    float64 Series indexed by unversioned gene ID (name ``length``), sorted by ID.
    """
    path = os.fspath(gtf)
    wanted = None if gene_ids is None else pd.Index(strip_version(gene_ids)).unique()
    parts = []
    n_lines = 0
    with _open_text(path) as f:
        reader = pd.read_csv(
            f,
            sep="\t",
            header=None,
            comment="#",
            usecols=[0, 2, 3, 4, 8],
            names=[
                "seqname",
                "source",
                "feature",
                "start",
                "end",
                "score",
                "strand",
                "frame",
                "attribute",
            ],
            dtype={"seqname": str, "feature": str, "attribute": str},
            quoting=csv.QUOTE_NONE,
            chunksize=chunksize,
            engine="c",
        )
        try:
            for chunk in reader:
                n_lines += len(chunk)
                ex = chunk[chunk["feature"] == "exon"]
                if ex.empty:
                    continue
                gid = ex["attribute"].str.extract(_GTF_GENE_ID, expand=False)
                if gid.isna().any():
                    bad = ex["attribute"][gid.isna()].iloc[0]
                    raise ValueError(
                        f"{path}: an exon line has no gene_id attribute (attribute column: "
                        f"{bad[:120]!r})"
                    )
                gid = pd.Series(strip_version(gid.to_numpy()), index=ex.index)
                if wanted is not None:
                    keep = gid.isin(wanted).to_numpy()
                    ex, gid = ex[keep], gid[keep]
                start = pd.to_numeric(ex["start"], errors="coerce")
                end = pd.to_numeric(ex["end"], errors="coerce")
                if start.isna().any() or end.isna().any() or (end < start).any():
                    raise ValueError(
                        f"{path}: exon lines need integer start ≤ end in columns 4 and 5"
                    )
                parts.append(
                    pd.DataFrame(
                        {
                            "gene_id": gid.to_numpy(object),
                            "seqname": ex["seqname"].to_numpy(object),
                            "start": start.to_numpy(np.int64),
                            "end": end.to_numpy(np.int64),
                        }
                    )
                )
        except pd.errors.ParserError as e:
            raise ValueError(f"{path}: not a tab-separated 9-column GTF ({e})") from e
    if n_lines == 0:
        raise ValueError(f"{path}: no GTF lines (empty or only '#' comments)")
    if not parts:
        if wanted is not None:
            return pd.Series(np.full(len(wanted), np.nan), index=wanted, name="length")
        raise ValueError(
            f"{path}: {n_lines:,} GTF lines but no 'exon' feature in column 3 — gene lengths "
            "need exon lines (a gene-only or transcript-only GTF will not do)"
        )
    ex = pd.concat(parts, ignore_index=True)
    lengths = union_length(
        ex["gene_id"].to_numpy(object),
        ex["seqname"].to_numpy(object),
        ex["start"].to_numpy(),
        ex["end"].to_numpy(),
    )
    log.info(
        "%s: %d lines, %d exons, %d genes", os.path.basename(path), n_lines, len(ex), len(lengths)
    )
    if wanted is not None:
        lengths = lengths.reindex(wanted.sort_values())
    return lengths


def union_length(gene_ids, seqnames, starts, ends) -> pd.Series:
    """Per gene, total bp covered by closed intervals ``[start, end]`` (overlaps merged).

    Intervals on different sequences are not added up: a gene whose ID has exons on several
    sequences (Ensembl names a PAR gene on chrX and chrY alike; GENCODE suffixes the Y copy with
    ``_PAR_Y``, a gene of its own) gets the length of its longest sequence's union.

    Vectorized: sort by (gene, sequence, start), open a new block wherever a start exceeds the
    running maximum end of the earlier intervals of the same (gene, sequence), and sum the block
    spans. Returns float64 lengths indexed by gene ID, sorted.
    """
    g_codes, g_uniq = pd.factorize(np.asarray(gene_ids, dtype=object), sort=True)
    s_codes, _ = pd.factorize(np.asarray(seqnames, dtype=object))
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    order = np.lexsort((starts, s_codes, g_codes))
    g, s, st, en = g_codes[order], s_codes[order], starts[order], ends[order]
    group = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])].cumsum()
    run_max = pd.Series(en).groupby(group).cummax().to_numpy()
    prev_max = np.r_[np.int64(-1), run_max[:-1]]
    first = np.r_[True, group[1:] != group[:-1]]
    new_block = first | (st > prev_max)
    b_start = st[new_block]
    b_end = np.maximum.reduceat(en, np.flatnonzero(new_block))
    b_gene = g[new_block]
    span = (b_end - b_start + 1).astype(np.float64)
    # per (gene, sequence), then the longest sequence's: a gene ID annotated on two sequences
    # (Ensembl's PAR genes, on X and Y under one ID) is one gene, not twice as long
    b_group = group[new_block] - 1
    per_group = np.bincount(b_group, weights=span)
    gene_of_group = np.zeros(len(per_group), dtype=np.int64)
    gene_of_group[b_group] = b_gene
    total = np.zeros(len(g_uniq), dtype=np.float64)
    np.maximum.at(total, gene_of_group, per_group)
    return pd.Series(total, index=pd.Index(g_uniq, name="gene_id"), name="length")


# ---------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    """Register ``bulkformer genes build``, ``genes lengths`` and ``genes info``."""
    p = subparsers.add_parser("genes", help="build or inspect a gene reference")
    sub = p.add_subparsers(dest="genes_command", metavar="ACTION")
    b = sub.add_parser(
        "build",
        help="build a protein-coding gene reference from an Ensembl pep FASTA and a GTF",
        description="Genes with gene_biotype:protein_coding in the FASTA headers, ordered by "
        "unversioned Ensembl gene ID; lengths = union of exons in the GTF.",
    )
    b.add_argument("--pep", required=True, help="Homo_sapiens.GRCh38.pep.all.fa[.gz]")
    b.add_argument("--gtf", required=True, help="Homo_sapiens.GRCh38.NNN.gtf[.gz]")
    b.add_argument("--out", required=True, help="output TSV (.tsv or .tsv.gz)")
    b.add_argument("--biotype", default="protein_coding", help="gene biotype to keep")
    b.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    b.set_defaults(func=_cmd_build)
    ln = sub.add_parser(
        "lengths",
        help="union-of-exons length of every gene in a GTF (for preprocess --lengths)",
        description="Write gene_id/length (bp) for every gene of a GTF (GENCODE or Ensembl, "
        "any biotype): all exon lines of a gene, merged where they overlap, summed. Versioned "
        "IDs are stripped; GENCODE's _PAR_Y copies stay genes of their own, and a gene ID "
        "annotated on two sequences (Ensembl's PAR genes) is not counted twice.",
        epilog="example:\n  bulkformer genes lengths --gtf gencode.v36.annotation.gtf.gz "
        "--out lengths.tsv\n  bulkformer preprocess --gdc gdc/ --sample-sheet sheet.tsv "
        "--lengths lengths.tsv --out corpus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ln.add_argument("--gtf", required=True, help="GTF (.gtf or .gtf.gz)")
    ln.add_argument("--out", required=True, help="output TSV (.tsv or .tsv.gz), written atomically")
    ln.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ln.set_defaults(func=_cmd_lengths)
    i = sub.add_parser("info", help="summarize a gene reference (default: the bundled one)")
    i.add_argument("ref", nargs="?", help="reference TSV; omitted = bundled default")
    i.set_defaults(func=_cmd_info)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _cmd_build(args) -> int:
    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out} exists (use --force to overwrite)")
    ref = GeneReference.build(args.pep, args.gtf, biotype=args.biotype)
    ref.to_tsv(args.out)
    n_len = int(np.isfinite(ref.lengths).sum())
    print(f"wrote {args.out}: {len(ref):,} genes, {n_len:,} with a length, id {ref.id}")
    return 0


def _cmd_lengths(args) -> int:
    from .lengths import write_lengths_tsv

    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out} exists (use --force to overwrite)")
    if os.path.abspath(args.out) == os.path.abspath(args.gtf):
        raise ValueError(f"--out {args.out} is the input GTF")
    lengths = gtf_gene_lengths(args.gtf)
    prov = {
        "source": "bulkformer genes lengths (union of each gene's GTF exons, bp)",
        "gtf_file": f"{os.path.basename(args.gtf)} ({os.path.getsize(args.gtf):,} bytes)",
        "n_genes": len(lengths),
    }
    write_lengths_tsv(lengths, args.out, prov)
    n_par = int(pd.Index(lengths.index).str.endswith("_PAR_Y").sum())
    print(
        f"wrote {args.out}: {len(lengths):,} genes (median {np.median(lengths):,.0f} bp"
        + (f", {n_par} _PAR_Y copies" if n_par else "")
        + ")"
    )
    return 0


def _cmd_info(args) -> int:
    ref = GeneReference.from_tsv(args.ref) if args.ref else GeneReference.default()
    ln = ref.lengths[np.isfinite(ref.lengths)]
    print(f"reference   {args.ref or 'bundled default (' + DEFAULT_REFERENCE_FILE + ')'}")
    print(f"id          {ref.id}")
    print(f"genes       {len(ref):,}")
    print(f"with length {len(ln):,} (median {np.median(ln) if len(ln) else float('nan'):,.0f} bp)")
    print(f"no length   {len(ref) - len(ln):,}")
    print(f"first/last  {ref.gene_ids[0]} … {ref.gene_ids[-1]}")
    for k, v in ref.provenance.items():
        print(f"# {k}: {v}")
    return 0
