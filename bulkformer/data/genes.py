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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["GeneReference", "strip_version", "ReferenceMismatchError"]


class ReferenceMismatchError(ValueError):
    """Two objects (corpus, ESM2 matrix, checkpoint, stats) use different gene references."""


def strip_version(ids: Iterable[str]) -> np.ndarray:
    """Drop Ensembl version suffixes: ``ENSG00000141510.17`` → ``ENSG00000141510``.

    ``_PAR_Y`` suffixes used by GENCODE for pseudo-autosomal copies are kept, so that
    ``ENSG00000002586.20_PAR_Y`` becomes ``ENSG00000002586_PAR_Y`` and stays distinct.
    """
    s = pd.Series(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=object))
    s = s.astype(str)
    return s.str.replace(r"^(ENS[A-Z]*G\d+)\.\d+", r"\1", regex=True).to_numpy(dtype=object)


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
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(gzip.compress(data, mtime=0) if path.endswith(".gz") else data)
        os.replace(tmp, path)

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
