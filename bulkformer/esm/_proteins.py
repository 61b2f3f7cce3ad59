"""Proteins per gene: Ensembl pep FASTA, canonical transcripts from a GTF, one protein per gene.

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
    "choose_proteins",
    "clean_sequence",
    "read_canonical_transcripts",
    "read_pep_fasta",
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
                        f"pep FASTA header like {_EXPECTED_HEADER!r}"
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
            f"such as Homo_sapiens.GRCh38.pep.all.fa.gz"
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
        ``"longest"`` or ``"canonical"`` (with fallback to longest).
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
        Table from :func:`read_pep_fasta`.
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
    df = df.sort_values(
        ["gene_id", "is_canonical", "length", "protein_id"], ascending=[True, False, False, True]
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
    return GeneProteins(
        seqs, pids, has, "canonical" if canonical is not None else "longest", n_canon
    )
