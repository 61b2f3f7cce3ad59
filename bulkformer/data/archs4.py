"""ARCHS4 gene-level HDF5 files: description, metadata, search, selection, QC and fast reads.

Works on every layout seen across ARCHS4 releases:

* v2.x (``human_gene_v2.*.h5``): ``data/expression`` genes × samples uint32, gene fields under
  ``meta/genes/`` (``ensembl_gene_id`` or ``ensembl_gene``, ``symbol``/``gene_symbol``,
  ``biotype``), sample fields under ``meta/samples/`` (``geo_accession``, ``series_id``, …,
  ``readsaligned`` or ``alignedreads``), ``meta/info/version``;
* the old layout with sample fields as ``meta/Sample_*`` datasets and gene symbols in
  ``meta/genes`` (a dataset) — read as well;
* a samples × genes ``data/expression`` (detected from the lengths of the gene *and* the sample
  fields; a square matrix they cannot tell apart must be stated, ``layout=``) is read
  transposed (:mod:`bulkformer.data.archs4_checks`).

Chunk shape and filters are always read from the file. Counts are read by the C++ engine
(:mod:`bulkformer.data.engine`); metadata fields are loaded one at a time, on demand.

Example
-------
>>> f = ARCHS4File("human_gene_v2.2.h5")                          # doctest: +SKIP
>>> idx = f.search("liver", fields=("source_name_ch1", "title"))  # doctest: +SKIP
>>> idx = f.filter(idx, min_nonzero=14_000)                       # doctest: +SKIP
>>> X = f.read(idx[:100], mode="counts")                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from functools import cached_property

import h5py
import numpy as np
import pandas as pd

from . import engine as _engine
from .archs4_checks import (
    LAYOUTS,
    ARCHS4FormatError,
    ARCHS4IndexError,
    ARCHS4KeyError,
    damaged_file_errors,
    field_length,
    lock_hint,
    orientation,
)
from .corpus.plan import DEFAULT_MIN_NONZERO
from .genes import strip_version
from .source import Alignment, Block, ExpressionSource

log = logging.getLogger(__name__)

__all__ = [
    "ARCHS4File",
    "ARCHS4Source",
    "ARCHS4FormatError",
    "ARCHS4KeyError",
    "ARCHS4IndexError",
]

# field-name variants seen across ARCHS4 releases, first match wins
GENE_ID_FIELDS = ("ensembl_gene_id", "ensembl_gene", "ensembl_id", "gene_id", "ensembl")
GENE_SYMBOL_FIELDS = ("symbol", "gene_symbol", "genes", "gene_name")
SAMPLE_ID_FIELDS = ("geo_accession", "Sample_geo_accession", "sample_id")
SERIES_FIELDS = ("series_id", "Sample_series_id")
ALIGNED_FIELDS = ("readsaligned", "alignedreads", "reads_aligned", "Sample_readsaligned")
SINGLECELL_FIELDS = ("singlecellprobability", "single_cell_probability")
DEFAULT_SEARCH_FIELDS = ("title", "source_name_ch1", "characteristics_ch1")


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "O" or values.dtype.kind == "S":
        return np.array(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values],
            dtype=object,
        )
    return values


class ARCHS4File:
    """An open ARCHS4 gene-level file.

    Parameters
    ----------
    path : the ``.h5`` file.
    layout : ``"auto"`` (default): genes × samples or samples × genes, decided from the lengths
        of both the gene (``meta/genes``) and the sample (``meta/samples``) fields; a square
        matrix whose metadata cannot tell is refused. ``"genes×samples"`` / ``"samples×genes"``
        (also spelt ``genes-by-samples`` / ``samples-by-genes``) state it; the metadata lengths
        must still agree.

    Raises
    ------
    FileNotFoundError, ARCHS4FormatError
        Missing file; not HDF5; no ``data/expression``; metadata fields of unequal lengths or
        lengths that fit neither orientation; an ambiguous square matrix.
    """

    def __init__(self, path: str | os.PathLike, *, layout: str = "auto"):
        self.path = os.fspath(path)
        if layout not in LAYOUTS:
            raise ValueError(
                f"layout {layout!r}: expected one of auto, genes-by-samples, samples-by-genes"
            )
        self.layout = layout
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise ARCHS4FormatError(f"{self.path}: a directory; expected an ARCHS4 .h5 file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise ARCHS4FormatError(
                f"{self.path}: not a readable HDF5 file ({e}){lock_hint(e)}"
            ) from None
        try:
            with damaged_file_errors(self.path, "the file layout (data/expression, meta/)"):
                self._open()
        except BaseException:
            self._h5.close()
            raise

    def _open(self) -> None:
        if "data/expression" not in self._h5:
            raise ARCHS4FormatError(
                f"{self.path}: no dataset 'data/expression' (expected an ARCHS4 gene-level "
                f"file; top-level groups: {sorted(self._h5.keys())})"
            )
        self.expression: h5py.Dataset = self._h5["data/expression"]
        if self.expression.ndim != 2:
            raise ARCHS4FormatError(
                f"{self.path}: data/expression has shape {self.expression.shape}, expected 2-D "
                "genes × samples"
            )
        self._sample_fields = self._find_sample_fields()
        self._gene_fields = self._find_gene_fields()
        n_gene_meta = field_length(self._h5, self.path, self._gene_fields, "meta/genes")
        n_meta = field_length(self._h5, self.path, self._sample_fields, "meta/samples")
        self.transposed = orientation(
            self.path, self.expression.shape, n_gene_meta, n_meta, self.layout
        )
        if self.transposed:
            log.info(
                "%s: data/expression is samples × genes (old layout): reading transposed", self.path
            )
        self.n_genes = n_gene_meta
        n0, n1 = self.expression.shape
        self.n_samples = n1 if not self.transposed else n0
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> ARCHS4File:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ARCHS4File({self.path!r}, genes={self.n_genes:,}, samples={self.n_samples:,}, "
            f"version={self.version!r})"
        )

    # ------------------------------------------------------------------ layout discovery
    def _find_sample_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if "meta/samples" in self._h5 and isinstance(self._h5["meta/samples"], h5py.Group):
            for k, v in self._h5["meta/samples"].items():
                if isinstance(v, h5py.Dataset):
                    out[k] = f"meta/samples/{k}"
        elif "meta" in self._h5:  # old layout: meta/Sample_title, ...
            for k, v in self._h5["meta"].items():
                if isinstance(v, h5py.Dataset) and k.startswith("Sample_"):
                    out[k[len("Sample_") :]] = f"meta/{k}"
        return out

    def _find_gene_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        node = self._h5.get("meta/genes")
        if isinstance(node, h5py.Group):
            for k, v in node.items():
                if isinstance(v, h5py.Dataset):
                    out[k] = f"meta/genes/{k}"
        elif isinstance(node, h5py.Dataset):  # old layout: meta/genes holds symbols
            out["symbol"] = "meta/genes"
        if "meta" in self._h5 and isinstance(self._h5["meta"], h5py.Group):
            for k in ("gene_ensemblid", "Gene_ensemblid", "ensembl_gene_id"):
                if k in self._h5["meta"] and "ensembl_gene_id" not in out:
                    out["ensembl_gene_id"] = f"meta/{k}"
        if not out:
            raise ARCHS4FormatError(
                f"{self.path}: no gene metadata (expected a group meta/genes with one of "
                f"{GENE_ID_FIELDS} or {GENE_SYMBOL_FIELDS})"
            )
        return out

    # ------------------------------------------------------------------ description
    @property
    def version(self) -> str:
        for p in ("meta/info/version", "info/version", "meta/version"):
            with damaged_file_errors(self.path, p):
                if p in self._h5:
                    v = self._h5[p][()]
                    v = v[0] if isinstance(v, np.ndarray) and v.shape else v
                    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return "unknown"

    def describe(self) -> dict:
        """Version, shape, orientation, chunking, filters and sizes, as a dict."""
        ds = self.expression
        filters = [name for _, name in _engine.filters_of(ds)]
        comp = ds.compression_opts if ds.compression == "gzip" else None
        return {
            "path": self.path,
            "file_size": os.path.getsize(self.path),
            "version": self.version,
            "shape": tuple(ds.shape),
            "layout": "samples × genes (transposed)" if self.transposed else "genes × samples",
            "n_genes": self.n_genes,
            "n_samples": self.n_samples,
            "dtype": ds.dtype.str,
            "chunks": ds.chunks,
            "filters": filters,
            "gzip_level": comp,
            "fast_path": _engine.fast_path_problem(ds) or "yes (C++ raw chunks)",
            "gene_fields": sorted(self._gene_fields),
            "sample_fields": sorted(self._sample_fields),
        }

    # ------------------------------------------------------------------ metadata
    @property
    def sample_fields(self) -> list[str]:
        return sorted(self._sample_fields)

    def _field(self, name: str, variants: Sequence[str] = ()) -> str | None:
        for cand in (name, *variants):
            if cand in self._sample_fields:
                return cand
        return None

    def sample_field(self, name: str) -> np.ndarray:
        """One sample metadata field for all samples (decoded strings or numbers), cached."""
        variants = {
            "geo_accession": SAMPLE_ID_FIELDS,
            "series_id": SERIES_FIELDS,
            "readsaligned": ALIGNED_FIELDS,
            "singlecellprobability": SINGLECELL_FIELDS,
        }.get(name, ())
        key = self._field(name, variants)
        if key is None:
            raise ARCHS4KeyError(
                f"{self.path}: no sample field {name!r} in meta/samples (available: "
                f"{', '.join(self.sample_fields) or 'none'})"
            )
        if key not in self._cache:
            with damaged_file_errors(self.path, self._sample_fields[key]):
                self._cache[key] = _decode(self._h5[self._sample_fields[key]][:])
        return self._cache[key]

    def _raw_field(self, name: str) -> np.ndarray:
        """A string field as raw bytes (for search), cached separately."""
        key = self._field(name)
        if key is None:
            raise ARCHS4KeyError(
                f"{self.path}: no sample field {name!r} in meta/samples (available: "
                f"{', '.join(self.sample_fields) or 'none'})"
            )
        ck = "raw:" + key
        if ck not in self._cache:
            with damaged_file_errors(self.path, self._sample_fields[key]):
                self._cache[ck] = self._h5[self._sample_fields[key]][:]
        return self._cache[ck]

    def samples(self, fields: Iterable[str] | None = None, rows=None) -> pd.DataFrame:
        """Sample metadata as a DataFrame indexed by GEO accession; fields loaded on demand."""
        fields = (
            list(fields)
            if fields is not None
            else [
                f
                for f in ("series_id", "title", "source_name_ch1", "characteristics_ch1")
                if self._field(f, SERIES_FIELDS if f == "series_id" else ()) is not None
            ]
        )
        ids = self.sample_ids
        rows = np.arange(self.n_samples) if rows is None else np.asarray(rows, dtype=np.int64)
        df = pd.DataFrame(
            {f: self.sample_field(f)[rows] for f in fields},
            index=pd.Index(ids[rows], name="sample_id"),
        )
        return df

    @cached_property
    def sample_ids(self) -> np.ndarray:
        try:
            return self.sample_field("geo_accession")
        except KeyError:
            return np.array([f"sample{i}" for i in range(self.n_samples)], dtype=object)

    @cached_property
    def genes(self) -> pd.DataFrame:
        """Gene metadata (all fields of meta/genes), one row per gene in file order."""
        with damaged_file_errors(self.path, "meta/genes"):
            return pd.DataFrame({k: _decode(self._h5[p][:]) for k, p in self._gene_fields.items()})

    @cached_property
    def gene_ids(self) -> np.ndarray:
        """Ensembl gene IDs without version; symbols when the file has no Ensembl IDs."""
        for k in GENE_ID_FIELDS:
            if k in self._gene_fields:
                return strip_version(self.genes[k].to_numpy())
        log.warning("%s: no Ensembl gene IDs in meta/genes; using gene symbols", self.path)
        return self.gene_symbols

    @property
    def has_ensembl_ids(self) -> bool:
        return any(k in self._gene_fields for k in GENE_ID_FIELDS)

    @cached_property
    def gene_symbols(self) -> np.ndarray:
        for k in GENE_SYMBOL_FIELDS:
            if k in self._gene_fields:
                return self.genes[k].to_numpy(dtype=object)
        return np.array([""] * self.n_genes, dtype=object)

    # ------------------------------------------------------------------ selection
    def search(
        self, pattern: str, fields: Sequence[str] = DEFAULT_SEARCH_FIELDS, *, case: bool = False
    ) -> np.ndarray:
        """Indices of samples where ``pattern`` (a regular expression) matches any field.

        Vectorised: each field is joined into one newline-separated byte string and scanned
        once by the regex engine; match offsets map back to samples with ``searchsorted``.
        Matching is per field value (a match cannot span two samples or two fields; ``^`` and
        ``$`` anchor at the start and end of each value).
        """
        try:
            rx = re.compile(pattern.encode(), re.MULTILINE | (0 if case else re.IGNORECASE))
        except re.error as e:
            raise ValueError(f"invalid search pattern {pattern!r}: {e}") from None
        hit = np.zeros(self.n_samples, dtype=bool)
        for name in fields:
            raw = self._raw_field(name)
            vals = [v if isinstance(v, bytes) else str(v).encode() for v in raw]
            vals = [v.replace(b"\n", b" ") for v in vals] if any(b"\n" in v for v in vals) else vals
            lengths = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
            starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
            blob = b"\n".join(vals)
            pos = np.fromiter((m.start() for m in rx.finditer(blob)), dtype=np.int64)
            if len(pos):
                idx = np.searchsorted(starts, pos, side="right") - 1
                hit[idx] = True
        return np.flatnonzero(hit)

    def select(
        self,
        *,
        gsm: Iterable[str] | None = None,
        series: Iterable[str] | None = None,
        index: Iterable[int] | None = None,
    ) -> np.ndarray:
        """Sample indices by GSM accession, GEO series (GSE) or position (unions the criteria)."""
        parts = []
        if gsm is not None:
            want = pd.Index(list(gsm))
            pos = pd.Index(self.sample_ids).get_indexer(want)
            missing = want[pos < 0]
            if len(missing):
                raise ARCHS4KeyError(
                    f"{self.path}: {len(missing)} of {len(want)} GSM id(s) not found in "
                    f"meta/samples/geo_accession, e.g. {list(missing[:5])}; expected GEO sample "
                    "accessions of this file (see `bulkformer archs4 search`)"
                )
            parts.append(pos)
        if series is not None:
            ser = pd.Series(self.sample_field("series_id"))
            wanted = set(series)
            # series_id may hold several comma-separated series
            exploded = ser.str.split(",").explode()
            parts.append(np.unique(exploded[exploded.isin(wanted)].index.to_numpy()))
        if index is not None:
            idx = np.asarray(list(index), dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= self.n_samples):
                raise ARCHS4IndexError(
                    f"{self.path}: sample index out of range [0, {self.n_samples})"
                )
            parts.append(idx)
        if not parts:
            return np.arange(self.n_samples)
        return np.unique(np.concatenate(parts)).astype(np.int64)

    # ------------------------------------------------------------------ QC
    def qc(self, samples=None, *, threads: int | None = None) -> pd.DataFrame:
        """Per-sample non-zero gene count and total counts, computed by the engine in one pass."""
        samples = np.arange(self.n_samples) if samples is None else np.asarray(samples, np.int64)
        _, nz, tot = self._read(samples, mode="counts", out=False, threads=threads)
        return pd.DataFrame(
            {"nonzero_genes": nz, "total_counts": tot},
            index=pd.Index(self.sample_ids[samples], name="sample_id"),
        )

    def filter(
        self,
        samples=None,
        *,
        min_nonzero: int = DEFAULT_MIN_NONZERO,
        max_singlecell: float | None = 0.5,
        threads: int | None = None,
    ) -> np.ndarray:
        """Samples passing QC: ≥ ``min_nonzero`` non-zero genes and, where the file has the
        field, single-cell probability < ``max_singlecell``."""
        samples = np.arange(self.n_samples) if samples is None else np.asarray(samples, np.int64)
        keep = np.ones(len(samples), dtype=bool)
        if max_singlecell is not None and self._field("singlecellprobability", SINGLECELL_FIELDS):
            scp = np.asarray(self.sample_field("singlecellprobability"), dtype=np.float64)
            keep &= scp[samples] < max_singlecell
        if min_nonzero:
            q = self.qc(samples[keep], threads=threads)
            sub = np.flatnonzero(keep)
            keep[sub] = q["nonzero_genes"].to_numpy() >= min_nonzero
        log.info("%s: %d / %d samples pass QC", self.path, int(keep.sum()), len(samples))
        return samples[keep]

    # ------------------------------------------------------------------ reads
    @property
    def chunk_index(self) -> _engine.ChunkIndex:
        """The full chunk index (cached per file by :func:`bulkformer.data.engine.chunk_index`)."""
        return _engine.chunk_index(self.expression, transposed=self.transposed)

    def _read(self, samples, **kw):
        # the engine indexes the chunk columns the request touches (cached per file)
        with damaged_file_errors(self.path, "data/expression"):
            return _engine.read_matrix(self.expression, samples, transposed=self.transposed, **kw)

    def read(
        self,
        samples,
        *,
        mode: str = "counts",
        alignment: Alignment | None = None,
        lengths: np.ndarray | None = None,
        dtype=np.float32,
        out: np.ndarray | None = None,
        threads: int | None = None,
        engine: str = "auto",
    ) -> np.ndarray:
        """Samples × genes matrix for ``samples`` (indices, in the given order).

        ``mode="counts"`` gives raw uint32 counts of all file genes; ``"log1p_tpm"`` needs gene
        lengths — from ``alignment`` (which also reorders columns to a reference) or ``lengths``
        (file gene order). See :func:`bulkformer.data.engine.read_matrix`.
        """
        samples = np.asarray(samples, dtype=np.int64)
        gene_map = n_out = None
        if alignment is not None:
            gene_map, lengths, n_out = alignment.gene_map, alignment.lengths, len(alignment.covered)
        out, _, _ = self._read(
            samples,
            mode=mode,
            gene_map=gene_map,
            lengths=lengths,
            n_out=n_out,
            out=out,
            dtype=dtype,
            qc=False,
            threads=threads,
            engine=engine,
        )
        return out


class ARCHS4Source(ExpressionSource):
    """An :class:`~bulkformer.data.source.ExpressionSource` over (a selection of) an ARCHS4 file.

    Parameters
    ----------
    path : the ARCHS4 ``.h5`` file (or an open :class:`ARCHS4File`).
    samples : which samples: indices, or GEO accessions (``GSM…`` strings); default all.
    search, search_field : keep samples whose metadata matches the regular expression
        ``search`` (in ``search_field``, or the default title/source/characteristics fields);
        intersected with ``samples``.
    max_singlecell : drop samples whose single-cell probability is ≥ this (where the file has
        the field); ``None`` keeps them. The ≥ 14,000 non-zero genes filter is applied by the
        corpus writer from the QC figures the engine computes while reading.
    fields : sample metadata fields carried into the corpus' ``samples.tsv`` (default: series,
        title, source name, characteristics, and ``sex``/``tissue`` fields when present).
    layout : orientation of ``data/expression`` (see :class:`ARCHS4File`); default decided
        from the metadata lengths.
    """

    def __init__(
        self,
        path,
        samples=None,
        *,
        search: str | None = None,
        search_field: str | Sequence[str] | None = None,
        max_singlecell: float | None = 0.5,
        fields: Sequence[str] | None = None,
        threads: int | None = None,
        layout: str = "auto",
    ):
        self.file = path if isinstance(path, ARCHS4File) else ARCHS4File(path, layout=layout)
        self.path = self.file.path
        f = self.file
        if samples is None:
            rows = np.arange(f.n_samples)
        else:
            samples = list(samples)
            if samples and all(isinstance(x, str) for x in samples):
                rows = f.select(gsm=samples)
            else:
                rows = f.select(index=samples)
        if search is not None:
            flds = (
                [search_field]
                if isinstance(search_field, str)
                else list(search_field or DEFAULT_SEARCH_FIELDS)
            )
            flds = [x for x in flds if f._field(x) is not None] or flds
            rows = np.intersect1d(rows, f.search(search, fields=flds))
            log.info("%s: %d samples match %r", self.path, len(rows), search)
        if max_singlecell is not None and f._field("singlecellprobability", SINGLECELL_FIELDS):
            scp = np.asarray(f.sample_field("singlecellprobability"), dtype=np.float64)
            keep = ~(scp[rows] >= max_singlecell)
            if (~keep).any():
                log.info(
                    "%s: dropping %d samples with single-cell probability >= %g",
                    self.path,
                    int((~keep).sum()),
                    max_singlecell,
                )
            gone = rows[~keep]
            self.filtered = pd.DataFrame(  # recorded in the corpus' excluded.tsv
                {
                    "reason": [
                        f"single-cell probability {v:.4g} >= {max_singlecell:g}" for v in scp[gone]
                    ]
                },
                index=pd.Index(f.sample_ids[gone], name="sample_id"),
            )
            rows = rows[keep]
        if len(rows) == 0:
            raise ValueError(f"{self.path}: no samples selected (check --search/--samples)")
        self.rows = np.asarray(rows, dtype=np.int64)
        if fields is None:
            fields = [
                x
                for x in (
                    "series_id",
                    "title",
                    "source_name_ch1",
                    "characteristics_ch1",
                    "sex",
                    "tissue",
                )
                if f._field(x, SERIES_FIELDS if x == "series_id" else ()) is not None
            ]
        self._fields = fields
        self.threads = threads

    def align(self, reference) -> Alignment:
        """Alignment to ``reference``: Ensembl IDs (symbols for files without them), lengths
        from the embedded all-gene table, then the reference, then the 1 kb fallback."""
        from .genes import default_gene_lengths
        from .source import align_genes

        by_symbol = not self.file.has_ensembl_ids
        return align_genes(
            self.gene_ids,
            reference,
            source_symbols=self.gene_symbols,
            by_symbol=by_symbol,
            default_lengths=default_gene_lengths(),
        )

    def fingerprint(self) -> dict:
        from .corpus import file_fingerprint

        fp = file_fingerprint(self.path)
        fp["rows_sha256"] = hashlib.sha256(self.rows.tobytes()).hexdigest()
        return fp

    @cached_property
    def samples(self) -> pd.DataFrame:
        df = self.file.samples(self._fields, rows=self.rows)
        df.insert(0, "source", os.path.basename(self.path))
        df.insert(1, "archs4_index", self.rows)
        return df

    @property
    def gene_ids(self) -> np.ndarray:
        return self.file.gene_ids

    @property
    def gene_symbols(self) -> np.ndarray:
        return self.file.gene_symbols

    @property
    def n_samples(self) -> int:
        return len(self.rows)

    def block_cuts(self, block_size: int) -> np.ndarray:
        """Blocks made of whole chunk columns: consecutive selected samples in the same chunk
        column (a "run") are never split across blocks, so each chunk is inflated once. Runs
        are packed into blocks of at most ``block_size`` samples; a run larger than that is a
        block of its own, split only beyond 4 × ``block_size`` (memory)."""
        chunks = self.file.expression.chunks
        if chunks is None:  # contiguous storage: nothing to align to
            return super().block_cuts(block_size)
        width = int(chunks[0] if self.file.transposed else chunks[1])
        return chunk_aligned_cuts(self.rows // width, block_size)

    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        rows = np.asarray(rows, dtype=np.int64)
        out, nz, tot = self.file._read(
            self.rows[rows],
            mode="log1p_tpm",
            gene_map=alignment.gene_map,
            lengths=alignment.lengths,
            n_out=len(alignment.covered),
            dtype=np.float32,
            threads=threads if threads is not None else self.threads,
        )
        return Block(values=out, nonzero=nz, total=tot)


def chunk_aligned_cuts(column: np.ndarray, block_size: int) -> np.ndarray:
    """Block boundaries over rows whose storage chunk column is ``column`` (in row order):
    maximal runs of equal columns are packed greedily into blocks of ≤ ``block_size`` rows; a
    longer run stands alone, cut into near-equal pieces of ≤ 4 × ``block_size``."""
    n = len(column)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(column)) + 1]
    ends = np.r_[starts[1:], n]
    cuts = [0]
    cap = 4 * block_size
    for a, b in zip(starts.tolist(), ends.tolist()):
        run = b - a
        if run > block_size:
            if cuts[-1] != a:
                cuts.append(a)
            pieces = -(-run // cap)
            cuts += [a + (run * i) // pieces for i in range(1, pieces)] + [b]
        elif b - cuts[-1] > block_size:  # the run starts the next block
            cuts.append(a)
    if cuts[-1] != n:
        cuts.append(n)
    return np.asarray(cuts, dtype=np.int64)


# ---------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    """``bulkformer archs4 info|search|qc``: look inside an ARCHS4 file before building."""
    from ..cli import int_at_least

    p = subparsers.add_parser(
        "archs4",
        help="inspect an ARCHS4 gene-level file (layout, metadata search, QC)",
        description="Inspect an ARCHS4 gene-level .h5 file: its layout, which samples match a "
        "metadata search, and their QC figures (computed by the C++ engine).",
    )
    sub = p.add_subparsers(dest="archs4_command", metavar="ACTION", required=True)
    i = sub.add_parser("info", help="version, shape, chunking, filters, fields")
    i.add_argument("file")
    i.set_defaults(func=_cli_info)
    s = sub.add_parser("search", help="samples whose metadata matches a regular expression")
    s.add_argument("file")
    s.add_argument("pattern", help="regular expression (case-insensitive unless --case)")
    s.add_argument(
        "--field",
        action="append",
        metavar="FIELD",
        help=f"field to search (repeatable; default: {', '.join(DEFAULT_SEARCH_FIELDS)})",
    )
    s.add_argument("--case", action="store_true", help="case-sensitive")
    s.add_argument("--limit", type=int, default=20, help="rows to print (default 20)")
    s.set_defaults(func=_cli_search)
    q = sub.add_parser("qc", help="non-zero genes and total counts of (selected) samples")
    q.add_argument("file")
    q.add_argument("--samples", nargs="+", metavar="GSM", help="only these GEO accessions")
    q.add_argument("--search", metavar="REGEX", help="only samples matching REGEX")
    q.add_argument("--min-nonzero", type=int_at_least(0), default=DEFAULT_MIN_NONZERO)
    q.add_argument("--threads", type=int_at_least(1), default=None, help="default: all cores")
    q.add_argument("--out", metavar="TSV", help="write the table here")
    q.set_defaults(func=_cli_qc)


def _cli_info(args) -> int:
    with ARCHS4File(args.file) as f:
        for k, v in f.describe().items():
            print(f"{k:14s} {v}")
    return 0


def _cli_search(args) -> int:
    with ARCHS4File(args.file) as f:
        idx = f.search(args.pattern, fields=args.field or DEFAULT_SEARCH_FIELDS, case=args.case)
        print(f"{len(idx):,} of {f.n_samples:,} samples match {args.pattern!r}")
        if len(idx):
            print(f.samples(rows=idx[: args.limit]).to_string(max_colwidth=60))
    return 0


def _cli_qc(args) -> int:
    with ARCHS4File(args.file) as f:
        idx = f.select(gsm=args.samples) if args.samples else np.arange(f.n_samples)
        if args.search:
            idx = np.intersect1d(idx, f.search(args.search))
        q = f.qc(idx, threads=args.threads)
        ok = q["nonzero_genes"] >= args.min_nonzero
        print(
            f"{int(ok.sum()):,} / {len(q):,} samples have >= {args.min_nonzero:,} non-zero "
            f"genes (median {int(q['nonzero_genes'].median()):,})"
        )
        if args.out:
            q.assign(passes=ok).to_csv(args.out, sep="\t")
            print(f"wrote {args.out}")
    return 0
