"""Proteins per gene: Ensembl pep or UniProt FASTA, canonical transcripts from a GTF, one
protein per gene.

Two FASTA dialects are read (:func:`read_proteins` tells them apart by the first header):

- Ensembl pep (``>ENSP… pep … gene:ENSG… transcript:ENST… gene_symbol:TP53 …``): proteins
  carry their gene ID; with a GTF the ``Ensembl_canonical`` transcript's protein is chosen,
  else the longest.
- UniProt / Swiss-Prot (``>sp|P04637|P53_HUMAN Cellular tumor antigen p53 OS=Homo sapiens
  OX=9606 GN=TP53 PE=1 SV=4``, ``tr|`` for TrEMBL): proteins are mapped to reference genes by a
  user table (accession → gene_id) when given, else by gene symbol (``GN=``) against the
  reference's symbols (exact, then case-insensitive; symbols several reference genes share are
  not used). Several proteins of one gene: the reviewed (``sp``) entry first, then the canonical
  entry (accession without an isoform suffix ``-N``), then the longest, then the smallest
  accession. Coverage and the ambiguous cases are reported (:class:`ProteinMapping`).

Residue policy (applied to the chosen protein of each gene only):

- letters are upper-cased;
- the 20 standard amino acids and ``X B Z U O`` are kept: all are tokens of the ESM alphabet
  (``U`` selenocysteine and ``O`` pyrrolysine are ESM tokens of their own);
- trailing ``*`` (stop) characters are stripped;
- an internal ``*`` (read-through stop, rare in Ensembl) is replaced by ``X`` with a warning;
- any other character (``J``, ``-``, ``.``, digits, …) is an error naming the file, the protein
  and the position.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.genes import GeneReference, strip_version

__all__ = [
    "ESM_RESIDUES",
    "GeneProteins",
    "ProteinMapping",
    "choose_proteins",
    "clean_sequence",
    "fasta_format",
    "map_uniprot",
    "read_canonical_transcripts",
    "read_mapping_table",
    "read_pep_fasta",
    "read_proteins",
    "read_uniprot_fasta",
]

logger = logging.getLogger(__name__)

#: Residue letters accepted in a protein sequence (all are tokens of the ESM alphabet).
ESM_RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWY" + "XBZUO")

_HEADER_FIELDS = ("gene", "transcript", "gene_symbol", "gene_biotype")
_HEADER_RE = re.compile(r"\b(gene|transcript|gene_symbol|gene_biotype):(\S+)")
_EXPECTED_HEADER = (
    ">ENSP00000354587.3 pep chromosome:GRCh38:21:... gene:ENSG00000160179.19 "
    "transcript:ENST00000380025.5 gene_biotype:protein_coding ... gene_symbol:ABCG1 ..."
)


def _open_text(path: str | os.PathLike):
    """Open a text file, transparently gunzipping it when it starts with the gzip magic."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt")
    return open(path)


_UNIPROT_RE = re.compile(r"^(sp|tr)\|([^|\s]+)\|(\S+)")
_GN_RE = re.compile(r"\bGN=(\S+)")


def fasta_format(path: str | os.PathLike) -> str:
    """``"uniprot"`` when the first header is UniProt's (``>sp|ACC|NAME …``), else ``"ensembl"``."""
    path = os.fspath(path)
    try:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    return "uniprot" if _UNIPROT_RE.match(line.lstrip(">").strip()) else "ensembl"
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such FASTA file") from None
        raise ValueError(f"{path}: cannot be read as a (gzipped) FASTA text file: {e}") from None
    return "ensembl"


def read_uniprot_fasta(path: str | os.PathLike) -> pd.DataFrame:
    """Read a UniProt FASTA (``uniprot_sprot.fasta``, a proteome ``UP000005640_9606.fasta``, …).

    Returns
    -------
    pandas.DataFrame
        One row per record (P rows): ``protein_id`` (accession, isoform suffix kept),
        ``entry_name``, ``symbol`` (``GN=``, '' when absent), ``reviewed`` (``sp``),
        ``isoform`` (accession with ``-N``), ``sequence`` (upper-cased, not yet cleaned) and
        ``length``.

    Raises
    ------
    ValueError
        Not FASTA, no records, a record whose header is not UniProt's, an accession repeated.
    """
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    path = os.fspath(path)
    rows = []
    try:
        with _open_text(path) as handle:
            for title, seq in SimpleFastaParser(handle):
                m = _UNIPROT_RE.match(title)
                if m is None:
                    raise ValueError(
                        f"{path}: FASTA record {title[:120]!r} is not a UniProt header; expected "
                        "'>sp|P04637|P53_HUMAN … GN=TP53 …' in every record (one dialect per file)"
                    )
                gn = _GN_RE.search(title)
                acc = m.group(2)
                rows.append(
                    (acc, m.group(3), gn.group(1) if gn else "", m.group(1) == "sp",
                     bool(re.search(r"-\d+$", acc)), seq.upper())
                )  # fmt: skip
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot be read as a (gzipped) FASTA text file: {e}") from e
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a FASTA file ({str(e).splitlines()[0]})") from e
    if not rows:
        raise ValueError(f"{path}: no FASTA records found (empty file?)")
    df = pd.DataFrame(
        rows, columns=["protein_id", "entry_name", "symbol", "reviewed", "isoform", "sequence"]
    )
    dup = df["protein_id"].duplicated()
    if dup.any():
        raise ValueError(
            f"{path}: accession {df['protein_id'][dup].iloc[0]!r} appears in several records; "
            "expected one record per UniProt accession"
        )
    df["length"] = df["sequence"].str.rstrip("*").str.len().astype(np.int64)
    logger.info(
        "%s: %d UniProt proteins (%d reviewed, %d with GN=)",
        path,
        len(df),
        int(df["reviewed"].sum()),
        int((df["symbol"] != "").sum()),
    )
    return df


def read_mapping_table(path: str | os.PathLike) -> pd.DataFrame:
    """An accession → gene table (TSV/CSV): columns ``accession`` (or ``uniprot``,
    ``protein_id``, ``From``) and ``gene_id`` (or ``ensembl_gene_id``, ``To``); without such a
    header, the first two columns. Gene IDs lose their version; an accession may map to several
    genes (each gets the protein)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such mapping file")
    try:
        with _open_text(path) as f:
            first = f.readline()
        sep = "\t" if "\t" in first else ","
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as e:
        raise ValueError(
            f"{path}: not a readable TSV/CSV mapping table ({' '.join(str(e).split())[:200]}); "
            "expected columns accession and gene_id"
        ) from None
    cols = {c.strip().lower(): c for c in df.columns}
    acc = next((cols[c] for c in ("accession", "uniprot", "uniprot_accession", "protein_id",
                                  "from", "entry") if c in cols), None)  # fmt: skip
    gid = next(
        (cols[c] for c in ("gene_id", "ensembl_gene_id", "ensembl", "to") if c in cols), None
    )
    if acc is None or gid is None:
        if len(df.columns) < 2:
            raise ValueError(
                f"{path}: {len(df.columns)} column(s) {list(df.columns)}; expected accession and "
                "gene_id (tab- or comma-separated)"
            )
        acc, gid = acc or df.columns[0], gid or df.columns[1]
    out = pd.DataFrame(
        {"accession": df[acc].str.strip(), "gene_id": strip_version(df[gid].str.strip())}
    )
    out = out[(out["accession"] != "") & (out["gene_id"] != "")].drop_duplicates()
    if out.empty:
        raise ValueError(f"{path}: no accession → gene_id rows (columns {acc!r}, {gid!r})")
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class ProteinMapping:
    """How UniProt proteins reached reference genes.

    Attributes
    ----------
    method : ``"mapping table"`` or ``"gene symbol (GN=)"``.
    n_proteins, n_mapped_proteins : records read, and those that reached a reference gene.
    n_genes, n_covered : reference genes, and those with at least one protein.
    multi_protein_genes : dict gene_id → candidate accessions (several proteins for one gene;
        the choice rule of the module docstring picks one).
    ambiguous_symbols : dict symbol → reference gene IDs that share it (not used for mapping).
    """

    method: str
    n_proteins: int
    n_mapped_proteins: int
    n_genes: int
    n_covered: int
    multi_protein_genes: dict
    ambiguous_symbols: dict

    def summary(self, limit: int = 8) -> str:
        amb = sorted(self.ambiguous_symbols)
        multi = sorted(self.multi_protein_genes)
        txt = (
            f"mapped by {self.method}: {self.n_mapped_proteins:,} of {self.n_proteins:,} "
            f"proteins reach a reference gene; {self.n_covered:,} of {self.n_genes:,} genes "
            f"({100 * self.n_covered / max(self.n_genes, 1):.1f}%) have a protein; "
            f"{len(multi):,} genes had several proteins (chosen: reviewed > canonical > longest "
            "> accession)"
        )
        if multi:
            txt += " e.g. " + ", ".join(
                f"{g} [{' '.join(self.multi_protein_genes[g][:3])}]" for g in multi[:3]
            )
        if amb:
            txt += (
                f"; {len(amb)} ambiguous symbol(s) shared by several reference genes, not used: "
                + ", ".join(amb[:limit])
                + (" …" if len(amb) > limit else "")
            )
        return txt


def map_uniprot(
    proteins: pd.DataFrame,
    reference: GeneReference,
    *,
    mapping: pd.DataFrame | None = None,
    source: str = "FASTA",
    mapping_name: str = "the mapping table",
) -> tuple[pd.DataFrame, ProteinMapping]:
    """Give UniProt proteins (:func:`read_uniprot_fasta`) the reference genes they belong to.

    Returns the table with ``gene_id``, ``transcript_id`` ('') and ``rank`` (choice order:
    0 reviewed canonical, 1 reviewed isoform, 2 unreviewed canonical, 3 unreviewed isoform)
    columns, one row per (protein, gene) pair that reached the reference, and the
    :class:`ProteinMapping` report.
    """
    df = proteins.copy()
    ambiguous: dict = {}
    if mapping is not None:
        method = "mapping table"
        base = df["protein_id"].str.replace(r"-\d+$", "", regex=True)
        exact = df[["protein_id"]].merge(
            mapping, left_on="protein_id", right_on="accession", how="inner"
        )
        hit = set(exact["protein_id"])
        rest = df.loc[~df["protein_id"].isin(hit), ["protein_id"]].assign(accession=base)
        by_base = rest.merge(mapping, on="accession", how="inner")
        pairs = pd.concat([exact, by_base], ignore_index=True)[["protein_id", "gene_id"]]
    else:
        method = "gene symbol (GN=)"
        sym = pd.Series(reference.symbols, dtype=object).fillna("").astype(str)
        counts = sym[sym != ""].value_counts()
        for s_ in counts.index[counts > 1]:
            ambiguous[s_] = reference.gene_ids[(sym == s_).to_numpy()].tolist()
        uniq = sym[(sym != "") & ~sym.isin(list(ambiguous))]
        exact = pd.Series(reference.gene_ids[uniq.index.to_numpy()], index=uniq.to_numpy())
        upper = uniq.str.upper()
        upper_ok = ~upper.duplicated(keep=False)
        loose = pd.Series(
            reference.gene_ids[uniq.index.to_numpy()[upper_ok.to_numpy()]],
            index=upper[upper_ok].to_numpy(),
        )
        gid = df["symbol"].map(exact)
        gid = gid.where(gid.notna(), df["symbol"].str.upper().map(loose))
        pairs = pd.DataFrame({"protein_id": df["protein_id"], "gene_id": gid}).dropna()
        used_amb = sorted(set(df["symbol"]) & set(ambiguous))
        ambiguous = {k: ambiguous[k] for k in used_amb}
    pairs = pairs[pairs["gene_id"].isin(set(reference.gene_ids.tolist()))]
    out = df.merge(pairs, on="protein_id", how="inner")
    out["transcript_id"] = ""
    out["rank"] = 2 * (~out["reviewed"]).astype(int) + out["isoform"].astype(int)
    per_gene = out.groupby("gene_id")["protein_id"].agg(list)
    multi = {g: sorted(v) for g, v in per_gene.items() if len(v) > 1}
    report = ProteinMapping(
        method=method,
        n_proteins=len(df),
        n_mapped_proteins=int(out["protein_id"].nunique()),
        n_genes=len(reference),
        n_covered=int(per_gene.shape[0]),
        multi_protein_genes=multi,
        ambiguous_symbols=ambiguous,
    )
    if out.empty:
        ex = df["symbol"][df["symbol"] != ""].head(3).tolist()
        raise ValueError(
            f"{source}: none of its {len(df):,} UniProt proteins maps to a gene of reference "
            f"{reference.id} by {method} (GN= symbols e.g. {ex}, reference symbols e.g. "
            f"{reference.symbols[:3].tolist()}); "
            + (
                f"check that the accessions and Ensembl gene IDs of {mapping_name} are those "
                "of this FASTA and reference"
                if mapping is not None
                else "give --mapping ACCESSION_TO_GENE.tsv, or use the proteome of the "
                "reference's species"
            )
        )
    logger.info("%s: %s", source, report.summary())
    return out, report


def read_proteins(
    path: str | os.PathLike,
    reference: GeneReference,
    *,
    mapping: str | os.PathLike | pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, ProteinMapping | None]:
    """Proteins of either FASTA dialect with their reference ``gene_id``, ready for
    :func:`choose_proteins`; the mapping report for UniProt (``None`` for Ensembl)."""
    path = os.fspath(path)
    if fasta_format(path) == "ensembl":
        if mapping is not None:
            logger.warning("%s: an Ensembl pep FASTA carries its gene IDs; --mapping ignored", path)
        return read_pep_fasta(path), None
    table = mapping
    if mapping is not None and not isinstance(mapping, pd.DataFrame):
        table = read_mapping_table(mapping)
    name = os.fspath(mapping) if isinstance(mapping, (str, os.PathLike)) else "the mapping table"
    return map_uniprot(
        read_uniprot_fasta(path), reference, mapping=table, source=path, mapping_name=name
    )


def read_pep_fasta(path: str | os.PathLike) -> pd.DataFrame:
    """Read an Ensembl peptide FASTA (``Homo_sapiens.GRCh38.pep.all.fa``, gzipped or not).

    Parameters
    ----------
    path
        FASTA whose headers follow Ensembl's pep format (``gene:``, ``transcript:`` fields).

    Returns
    -------
    pandas.DataFrame
        One row per record (P rows), columns ``protein_id``, ``gene_id`` (unversioned),
        ``transcript_id`` (unversioned), ``symbol``, ``biotype``, ``sequence`` (as in the file,
        upper-cased, not yet cleaned) and ``length`` (int, residues).

    Raises
    ------
    ValueError
        Empty file, not FASTA, or a record without Ensembl-style ``gene:``/``transcript:``
        fields.
    """
    from Bio import SeqIO

    path = os.fspath(path)
    rows = []
    try:
        with _open_text(path) as handle:
            for rec in SeqIO.parse(handle, "fasta"):
                fields = dict(_HEADER_RE.findall(rec.description))
                if "gene" not in fields or "transcript" not in fields:
                    raise ValueError(
                        f"{path}: FASTA record {rec.id!r} has header {rec.description[:120]!r} "
                        f"without Ensembl 'gene:' and 'transcript:' fields; expected an Ensembl "
                        f"pep FASTA header like {_EXPECTED_HEADER!r} (or, in every record, a "
                        "UniProt header like '>sp|P04637|P53_HUMAN … GN=TP53 …')"
                    )
                rows.append(
                    (
                        rec.id,
                        fields["gene"],
                        fields["transcript"],
                        fields.get("gene_symbol", ""),
                        fields.get("gene_biotype", ""),
                        str(rec.seq).upper(),
                    )
                )
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot be read as a (gzipped) FASTA text file: {e}") from e
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a FASTA file ({str(e).splitlines()[0]})") from e
    if not rows:
        raise ValueError(
            f"{path}: no FASTA records found (empty file?); expected an Ensembl pep FASTA "
            f"such as Homo_sapiens.GRCh38.pep.all.fa.gz, or a UniProt FASTA"
        )
    df = pd.DataFrame(
        rows, columns=["protein_id", "gene_id", "transcript_id", "symbol", "biotype", "sequence"]
    )
    df["gene_id"] = strip_version(df["gene_id"])
    df["transcript_id"] = strip_version_tx(df["transcript_id"])
    df["length"] = df["sequence"].str.rstrip("*").str.len().astype(np.int64)
    logger.info("%s: %d proteins of %d genes", path, len(df), df["gene_id"].nunique())
    return df


def strip_version_tx(ids: Iterable[str]) -> np.ndarray:
    """Drop version suffixes of Ensembl transcript IDs: ``ENST00000380025.5`` → ``ENST…025``."""
    s = pd.Series(list(ids), dtype=object).astype(str)
    return s.str.replace(r"^(ENS[A-Z]*T\d+)\.\d+", r"\1", regex=True).to_numpy(dtype=object)


_GTF_TX_RE = re.compile(r'transcript_id "([^"]+)"')


def read_canonical_transcripts(path: str | os.PathLike) -> set[str]:
    """Unversioned IDs of the transcripts tagged ``Ensembl_canonical`` in an Ensembl GTF.

    Parameters
    ----------
    path
        GTF (gzipped or not); only ``transcript`` lines carrying the attribute
        ``tag "Ensembl_canonical"`` are used.

    Returns
    -------
    set of str
        Transcript IDs without version.
    """
    path = os.fspath(path)
    out: list[str] = []
    n_tx = 0
    with _open_text(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            parts = line.split("\t", 8)
            if len(parts) != 9:
                raise ValueError(
                    f"{path}: line {line[:80]!r} has {len(parts)} tab-separated fields; "
                    "expected a GTF with 9 columns"
                )
            if parts[2] != "transcript":
                continue
            n_tx += 1
            if 'tag "Ensembl_canonical"' not in parts[8]:
                continue
            m = _GTF_TX_RE.search(parts[8])
            if m:
                out.append(m.group(1))
    if n_tx == 0:
        raise ValueError(f"{path}: no 'transcript' lines found; expected an Ensembl GTF")
    if not out:
        logger.warning(
            "%s: none of %d transcripts is tagged Ensembl_canonical; falling back to the "
            "longest protein for every gene",
            path,
            n_tx,
        )
    return set(strip_version_tx(out).tolist())


def clean_sequence(seq: str, *, where: str = "") -> str:
    """Apply the module's residue policy to one sequence (see module docstring).

    Parameters
    ----------
    seq
        Protein sequence (any case).
    where
        Text naming the sequence (file, protein) for messages.

    Returns
    -------
    str
        Upper-case sequence of ESM residue letters, without trailing stops.
    """
    s = seq.upper().rstrip("*")
    if "*" in s:
        logger.warning(
            "%s: %d internal stop codon(s) '*' replaced by 'X'", where or "sequence", s.count("*")
        )
        s = s.replace("*", "X")
    bad = set(s) - ESM_RESIDUES
    if bad:
        pos = min(s.index(c) for c in bad)
        raise ValueError(
            f"{where or 'sequence'}: non-standard residue {s[pos]!r} at position {pos + 1} "
            f"(all unexpected: {sorted(bad)}); expected amino-acid letters "
            f"{''.join(sorted(ESM_RESIDUES))} (trailing '*' allowed)"
        )
    if not s:
        raise ValueError(f"{where or 'sequence'}: empty protein sequence")
    return s


@dataclass(frozen=True)
class GeneProteins:
    """The protein chosen for every gene of a reference.

    Attributes
    ----------
    sequences : list of (str or None), length G
        Cleaned sequence per reference gene, ``None`` where the FASTA has no protein.
    protein_ids : numpy.ndarray of object, shape (G,)
        Chosen protein ID (``''`` where none).
    has_protein : numpy.ndarray of bool, shape (G,)
    choice : str
        ``"longest"``, ``"canonical"`` (with fallback to longest) or, for UniProt proteins,
        ``"uniprot (reviewed > canonical > longest)"``.
    n_canonical : int
        Genes whose protein came from an ``Ensembl_canonical`` transcript.
    """

    sequences: list
    protein_ids: np.ndarray
    has_protein: np.ndarray
    choice: str
    n_canonical: int


def choose_proteins(
    proteins: pd.DataFrame,
    reference: GeneReference,
    *,
    canonical: set[str] | None = None,
    source: str = "FASTA",
) -> GeneProteins:
    """Pick one protein per reference gene.

    Parameters
    ----------
    proteins
        Table from :func:`read_pep_fasta` (or :func:`read_proteins`, which also maps UniProt
        proteins; their ``rank`` column orders reviewed before unreviewed entries).
    reference
        The gene reference (G genes) defining the output order.
    canonical
        Unversioned canonical transcript IDs (:func:`read_canonical_transcripts`). When given,
        a gene's protein is the one of its canonical transcript, else (none) the longest.
        When ``None``, always the longest. Ties are broken by protein ID.
    source
        Name of the FASTA, for messages.

    Returns
    -------
    GeneProteins

    Raises
    ------
    ValueError
        No gene of the reference is in the FASTA, or a chosen sequence has a non-standard
        residue.
    """
    df = proteins[proteins["gene_id"].isin(set(reference.gene_ids.tolist()))].copy()
    if df.empty:
        raise ValueError(
            f"{source}: none of the {len(reference)} genes of reference {reference.id} "
            f"(e.g. {reference.gene_ids[:3].tolist()}) has a protein in the FASTA, whose genes "
            f"are e.g. {proteins['gene_id'].head(3).tolist()}; expected the Ensembl pep FASTA "
            "of the same species and annotation"
        )
    df["is_canonical"] = (
        df["transcript_id"].isin(canonical) if canonical else np.zeros(len(df), dtype=bool)
    )
    if "rank" not in df.columns:  # Ensembl pep: no UniProt review status
        df["rank"] = 0
    df = df.sort_values(
        ["gene_id", "is_canonical", "rank", "length", "protein_id"],
        ascending=[True, False, True, False, True],
    )
    best = df.drop_duplicates("gene_id", keep="first").set_index("gene_id")
    g = len(reference)
    seqs: list = [None] * g
    pids = np.full(g, "", dtype=object)
    has = np.zeros(g, dtype=bool)
    n_canon = 0
    pos = reference.index_of(best.index.to_numpy(object), strip=False)
    for i, (gid, row) in zip(pos, best.iterrows()):
        seqs[i] = clean_sequence(row["sequence"], where=f"{source}: {row['protein_id']} ({gid})")
        pids[i] = row["protein_id"]
        has[i] = True
        n_canon += bool(row["is_canonical"])
    n_missing = int((~has).sum())
    if n_missing:
        logger.warning(
            "%d of %d reference genes have no protein in %s (e.g. %s); they get zero "
            "embeddings and has_protein=False",
            n_missing,
            g,
            source,
            reference.gene_ids[~has][:5].tolist(),
        )
    if canonical is not None:
        logger.info(
            "proteins: %d from Ensembl_canonical transcripts, %d longest (fallback)",
            n_canon,
            int(has.sum()) - n_canon,
        )
    if "reviewed" in proteins.columns:
        choice = "uniprot (reviewed > canonical > longest)"
    else:
        choice = "canonical" if canonical is not None else "longest"
    return GeneProteins(seqs, pids, has, choice, n_canon)
