"""Reader for GDC/TCGA "STAR - Counts" files: a directory of
``*.rna_seq.augmented_star_gene_counts.tsv`` (optionally ``.gz``) plus the GDC sample sheet.

File format (one sample per file)::

    # gene-model: GENCODE v36
    gene_id  gene_name  gene_type  unstranded  stranded_first  stranded_second  tpm_unstranded  ...
    N_unmapped      <empty>  <empty>  2338730  ...
    N_multimapping  ...  (N_noFeature, N_ambiguous)
    ENSG00000000003.15  TSPAN6  protein_coding  2530  1270  1260  31.4  9.9  10.2
    ... 60,660 genes with versioned Ensembl IDs (including ``_PAR_Y`` copies)

Only the chosen counts column (``unstranded`` by default) is read. The first file is parsed in
full (header, special ``N_*`` rows, gene list); every other file is parsed with numpy on its raw
bytes: newline and tab positions, a byte-for-byte check that its gene_id column equals the first
file's, and a vectorized decimal parse of the counts field that rejects anything but digits
(NaN, negatives, decimals, empty fields). Files are read by a thread pool (zlib, file reads and
the numpy passes release the GIL).

Sample sheet (``gdc_sample_sheet.*.tsv``): columns File ID, File Name, Data Category, Data Type,
Project ID, Case ID, Sample ID, Sample Type. Each counts file must appear in it (by File Name);
``Project ID`` becomes the ``cancer_type`` label (e.g. ``TCGA-BRCA``) and ``Sample ID`` the
sample index, which must be unique. Sheet rows whose file is not on disk are dropped (logged).
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import engine as _engine
from .genes import GeneReference, default_gene_lengths
from .source import Alignment, Block, ExpressionSource, align_genes

__all__ = [
    "GDCSource",
    "GDC_SUFFIX",
    "GDC_COLUMNS",
    "COUNT_COLUMNS",
    "SHEET_COLUMNS",
    "find_gdc_files",
    "read_sample_sheet",
]

log = logging.getLogger(__name__)

GDC_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
GDC_COLUMNS = (
    "gene_id",
    "gene_name",
    "gene_type",
    "unstranded",
    "stranded_first",
    "stranded_second",
    "tpm_unstranded",
    "fpkm_unstranded",
    "fpkm_uq_unstranded",
)
COUNT_COLUMNS = ("unstranded", "stranded_first", "stranded_second")
SHEET_COLUMNS = ("File Name", "Project ID", "Sample ID", "Sample Type")
_SHEET_LABELS = {
    "File ID": "file_id",
    "Case ID": "case_id",
    "Project ID": "cancer_type",
    "Sample Type": "sample_type",
    "Data Category": "data_category",
    "Data Type": "data_type",
}


def find_gdc_files(path: str | os.PathLike) -> list[str]:
    """All ``*.rna_seq.augmented_star_gene_counts.tsv[.gz]`` under ``path`` (recursive, sorted)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory (expected a GDC download directory)")
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(GDC_SUFFIX) or name.endswith(GDC_SUFFIX + ".gz"):
                out.append(os.path.join(root, name))
    if not out:
        raise FileNotFoundError(f"{path}: no *{GDC_SUFFIX}[.gz] files found (searched recursively)")
    return sorted(out)


def read_sample_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a GDC sample sheet (TSV); checks the columns bulkformer uses are present."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: a directory; expected the GDC sample sheet TSV file")
    with open(path, "rb") as f:
        head = f.read(4096)
    gz = head[:2] == b"\x1f\x8b"
    if b"\0" in head and not gz:
        raise ValueError(
            f"{path}: binary data, not a sample sheet; expected the tab-separated text "
            "gdc_sample_sheet.*.tsv from the GDC portal"
        )
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            compression="gzip" if gz else None,
        )
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected the tab-separated "
            "GDC sample sheet"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as e:
        raise ValueError(
            f"{path}: not a tab-separated sample sheet ({one_line_error(e)}); expected columns "
            f"{list(SHEET_COLUMNS)} …"
        ) from None
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: sample sheet lacks column(s) {missing}; found {list(df.columns)} "
            "(expected a GDC sample sheet: File ID, File Name, …, Sample ID, Sample Type)"
        )
    dup = df["File Name"].duplicated()
    if dup.any():
        raise ValueError(
            f"{path}: File Name repeated in the sample sheet, e.g. "
            f"{df['File Name'][dup].iloc[:3].tolist()}"
        )
    return df


def one_line_error(e: BaseException) -> str:
    return " ".join(str(e).split())


_PAD = 32  # slack bytes after the data so fixed-width byte windows never run off the end


def _read_bytes(path: str) -> memoryview:
    """File contents (gunzipped when gzip) followed by ``_PAD`` zero bytes, without the pad.

    The returned view excludes the pad, but the pad is in memory right after it: parsers may
    read up to ``_PAD`` bytes past the end through a numpy view of ``view.obj``.
    """
    size = os.path.getsize(path)
    buf = bytearray(size + _PAD)
    with open(path, "rb") as f:
        n = f.readinto(memoryview(buf)[:size])
    if n != size:
        raise OSError(f"{path}: read {n} of {size} bytes (file changed while reading?)")
    gz = buf[:2] == b"\x1f\x8b"
    if gz:
        try:
            data = gzip.decompress(memoryview(buf)[:size])
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
        buf = bytearray(len(data) + _PAD)
        buf[: len(data)] = data
        size = len(data)
    if size == 0:
        raise ValueError(
            f"{path}: empty file{' (after gunzip)' if gz else ''} (0 bytes); expected a GDC STAR "
            "- Counts file (an interrupted download? fetch it again)"
        )
    if buf.find(b"\0", 0, min(size, 65536)) >= 0:
        raise ValueError(
            f"{path}: binary data (NUL bytes); expected a tab-separated GDC STAR - Counts text file"
        )
    return memoryview(buf)[:size]


@dataclass(frozen=True)
class _Layout:
    """What every file must look like, learned from the first file."""

    header: bytes  # header line, without newline
    skip_lines: int  # comment lines + header line before the data rows
    ncols: int
    col: int  # index of the counts column
    n_special: int  # leading N_* rows
    n_lines: int  # data rows (special + genes)
    id_words: np.ndarray  # (n_lines, W/8) uint64: gene_id field + tab, zero-padded to W bytes
    id_mask: np.ndarray  # (n_lines, W/8) uint64: 0xFF in the bytes that are real
    tab_off: np.ndarray  # (n_lines, k ≤ 3) int64: offsets of the tabs ending the string columns


def _padded(data) -> tuple[bytearray, int]:
    """(buffer, n): ``data`` as the first n bytes of a buffer with ``_PAD`` bytes after them."""
    mv = memoryview(data)
    obj = mv.obj
    if isinstance(obj, bytearray) and len(obj) >= len(mv) + _PAD and mv.c_contiguous:
        if (
            np.frombuffer(obj, np.uint8, count=1).ctypes.data
            == np.frombuffer(mv, np.uint8, count=1).ctypes.data
        ):  # the view starts at the buffer start
            return obj, len(mv)
    buf = bytearray(len(mv) + _PAD)
    buf[: len(mv)] = mv
    return buf, len(mv)


def _learn_layout(path: str, data: bytes, column: str):
    text = bytes(data).decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    comments = []
    while i < len(lines) and lines[i].startswith("#"):
        comments.append(lines[i])
        i += 1
    if i >= len(lines):
        raise ValueError(f"{path}: no header line (expected columns {list(GDC_COLUMNS)})")
    header = lines[i].rstrip("\r").split("\t")
    if "gene_id" not in header:
        raise ValueError(
            f"{path}: header lacks column 'gene_id' (found {header[:6]}…); expected a GDC STAR "
            "- Counts file"
        )
    if column not in header:
        raise ValueError(
            f"{path}: header lacks the counts column {column!r} (found {header}); choose one of "
            f"{[c for c in COUNT_COLUMNS if c in header] or list(COUNT_COLUMNS)}"
        )
    if header.index("gene_id") != 0:
        raise ValueError(f"{path}: gene_id must be the first column, found {header}")
    rows = [ln.split("\t", 1)[0] for ln in lines[i + 1 :]]
    n_special = 0
    while n_special < len(rows) and rows[n_special].startswith("N_"):
        n_special += 1
    genes = rows[n_special:]
    if not genes:
        raise ValueError(f"{path}: no gene rows after the header")
    bad = [g for g in genes if g.startswith("N_")]
    if bad:
        raise ValueError(f"{path}: special row {bad[0]!r} among the gene rows")
    dup = pd.Index(genes).duplicated()
    if dup.any():
        raise ValueError(f"{path}: gene_id repeated, e.g. {np.asarray(genes)[dup][:3].tolist()}")
    meta = pd.DataFrame(
        [ln.rstrip("\r").split("\t", 3)[:3] for ln in lines[i + 1 + n_special :]],
        columns=["gene_id", "gene_name", "gene_type"][: min(3, len(header))],
    )
    # tabs before the counts field that sit at fixed offsets (after the string columns
    # gene_id, gene_name, gene_type); fields between those and the counts field are skipped
    n_fixed = min(header.index(column), 3)
    widths = []  # byte widths of the first n_fixed fields of every row
    for r, ln in enumerate(lines[i + 1 :]):
        fields = ln.encode().split(b"\t", n_fixed)
        if len(fields) <= n_fixed:
            raise ValueError(
                f"{path}: row {r + 1} after the header ({rows[r]}) has fewer than "
                f"{len(header)} tab-separated fields"
            )
        widths.append([len(f) + 1 for f in fields[:n_fixed]])
    tab_off = np.cumsum(np.asarray(widths, dtype=np.int64).reshape(len(rows), n_fixed), axis=1) - 1
    enc = [r.encode() + b"\t" for r in rows]
    lens = np.array([len(e) for e in enc], dtype=np.int64)
    width = -(-int(lens.max()) // 8) * 8
    if width > _PAD:
        raise ValueError(f"{path}: gene_id longer than 31 characters: {max(rows, key=len)!r}")
    id_bytes = np.frombuffer(b"".join(e.ljust(width, b"\0") for e in enc), dtype=np.uint8)
    id_bytes = id_bytes.reshape(len(enc), width).copy()
    id_mask = np.where(np.arange(width) < lens[:, None], 0xFF, 0).astype(np.uint8)
    layout = _Layout(
        header=lines[i].rstrip("\r").encode(),  # CRLF and LF files may be mixed
        skip_lines=i + 1,
        ncols=len(header),
        col=header.index(column),
        n_special=n_special,
        n_lines=len(rows),
        id_words=id_bytes.view(np.uint64),
        id_mask=id_mask.view(np.uint64),
        tab_off=tab_off,
    )
    return layout, meta, rows[:n_special], comments


def _parse_counts(path: str, data: bytes, lay: _Layout, column: str, row_names) -> np.ndarray:
    """Counts column of one file as int64 (n_lines,) — special rows first, then genes.

    Only newline positions are searched for; the counts field is located from the first
    file's layout after checking, per row, that the gene_id bytes are the same and that the
    tabs before the field sit where they sat in the first file. The field is parsed digit by
    digit, vectorized over rows still inside their number.
    """
    buf, n = _padded(data)
    off = 0
    last = b""
    for _ in range(lay.skip_lines):  # comment + header lines
        nxt = buf.find(b"\n", off, n)
        if nxt < 0:
            raise ValueError(
                f"{path}: ends before the data rows (expected a GDC STAR - Counts file)"
            )
        last = bytes(buf[off:nxt])
        off = nxt + 1
    last = last.rstrip(b"\r")
    if last != lay.header:
        hdr = last.decode(errors="replace").rstrip("\r").split("\t")
        if column not in hdr:
            raise ValueError(f"{path}: header lacks the counts column {column!r} (found {hdr})")
        raise ValueError(
            f"{path}: header {hdr} differs from the first file's "
            f"{lay.header.decode(errors='replace').split(chr(9))}: all files must share one layout"
        )
    if buf[n - 1] != 10:  # last line without a newline: add one
        buf, n = _padded(bytes(buf[:n]) + b"\n")
    full = np.frombuffer(buf, dtype=np.uint8)  # includes the zero pad
    body = full[off:n]
    nl = np.flatnonzero(body == 10)
    if len(nl) != lay.n_lines:
        raise ValueError(
            f"{path}: {len(nl):,} data rows, expected {lay.n_lines:,} like the first file — the "
            "gene list differs (another gene model or a truncated file?)"
        )
    n_tabs = int(np.count_nonzero(body == 9))
    if n_tabs != lay.n_lines * (lay.ncols - 1):
        raise ValueError(
            f"{path}: {n_tabs:,} tab separators in {lay.n_lines:,} rows, expected "
            f"{lay.ncols - 1} per row ({lay.ncols} columns): a row has missing or extra fields"
        )
    ls = np.empty(lay.n_lines, dtype=np.int64)
    ls[0] = 0
    ls[1:] = nl[:-1] + 1
    start = ls + lay.tab_off[:, -1] + 1  # first byte after the string columns
    W = lay.id_words.shape[1] * 8  # ≤ 32 (checked when learning the layout)
    win = np.lib.stride_tricks.as_strided(
        full[off:], shape=(len(body), _PAD), strides=(1, 1), writeable=False
    )  # win[p] = body[p : p + 32] (reading into the zero pad at the end), a view
    # gene_id column identical to the first file's, byte for byte, then the tabs in place
    ids = np.ascontiguousarray(win[ls, :W]).view(np.uint64)
    same = np.array_equal(ids & lay.id_mask, lay.id_words)
    tabs_ok = same and all(
        (body[ls + lay.tab_off[:, k]] == 9).all() for k in range(lay.tab_off.shape[1])
    )
    if not tabs_ok:
        i = _first_bad_row(body, ls, nl, lay, row_names)
        if not same:
            got = bytes(body[ls[i] : nl[i]]).decode(errors="replace").split("\t", 1)[0]
            raise ValueError(
                f"{path}: gene list differs from the first file's at row {i + 1} after the "
                f"header: gene_id {got!r}, expected {row_names[i]!r}"
            )
        raise ValueError(
            f"{path}: row {i + 1} after the header ({row_names[i]}) has fields of other widths "
            "than in the first file before the counts column (gene_name/gene_type differ?)"
        )
    for _ in range(lay.col - lay.tab_off.shape[1]):  # skip numeric fields before ours
        is_tab = win[start, :_PAD] == 9
        step = np.argmax(is_tab, axis=1)
        if not is_tab[np.arange(lay.n_lines), step].all():
            i = int(np.flatnonzero(~is_tab[np.arange(lay.n_lines), step])[0])
            raise ValueError(
                f"{path}: row {i + 1} after the header ({row_names[i]}) has a field wider than "
                f"{_PAD - 1} characters before the {column} column"
            )
        start = start + step + 1
    # the counts field: up to 15 digits then the separator, over a (rows, 16) byte window
    term = 9 if lay.col < lay.ncols - 1 else 10
    raw = np.ascontiguousarray(win[start, :16])
    isd = (raw - np.uint8(48)) < 10  # bytes below '0' wrap to ≥ 10
    width = np.argmin(isd, axis=1)  # first non-digit (0 if none: caught below)
    end_byte = raw[np.arange(lay.n_lines), width]
    ok = (width > 0) & ((end_byte == term) | ((term == 10) & (end_byte == 13)))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        txt = bytes(body[start[i] : nl[i]]).decode(errors="replace").split("\t", 1)[0]
        raise ValueError(
            f"{path}: {column} for {row_names[i]} is {txt!r}: expected a non-negative integer "
            "count (NaN, empty, negative, fractional and > 15-digit values are not counts)"
        )
    return _digits_to_int(raw, width)


def _digits_to_int(raw: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Decimal value of the first ``width[i]`` bytes of each row of ``raw`` (ASCII digits).

    Rows of ≤ 8 digits (nearly all counts) are converted 8 bytes at a time (SWAR): the digits
    are shifted to the top of a little-endian uint64 so the unused bytes act as leading zeros,
    then pairs, quads and octets of digits are combined by three multiply-shift steps. Longer
    numbers take a digit-by-digit loop.
    """
    x = raw[:, :8].copy().view(np.uint64)[:, 0]
    w = np.minimum(width, 8).astype(np.uint64)
    x = (x << (np.uint64(8) * (np.uint64(8) - w))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x * np.uint64(10) + (x >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x * np.uint64(100) + (x >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x * np.uint64(10000) + (x >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
    val = x.astype(np.int64)
    long = np.flatnonzero(width > 8)
    if len(long):
        acc = val[long]
        for j in range(8, int(width[long].max())):
            has = width[long] > j
            acc = np.where(has, acc * 10 + (raw[long, j].astype(np.int64) - 48), acc)
        val[long] = acc
    return val


def _first_bad_row(body, ls, nl, lay, row_names) -> int:
    """Index of the first row whose gene_id or tab positions differ from the first file's."""
    for i in range(lay.n_lines):
        line = bytes(body[ls[i] : nl[i]])
        if line.split(b"\t", 1)[0].decode(errors="replace") != row_names[i]:
            return i
        if any(
            lay.tab_off[i, k] >= len(line) or line[lay.tab_off[i, k]] != 9
            for k in range(lay.tab_off.shape[1])
        ):
            return i
    return 0


class GDCSource(ExpressionSource):
    """A directory of GDC "STAR - Counts" files (see module docstring).

    Parameters
    ----------
    path : download directory, searched recursively for ``*.rna_seq.augmented_star_gene_counts
        .tsv[.gz]`` (the GDC client puts each file in a ``<file id>/`` folder).
    sample_sheet : GDC sample sheet TSV; gives ``Sample ID`` (index), ``cancer_type`` (Project
        ID), ``sample_type`` etc. Without one, the index is the file name and labels are absent.
    counts_column : ``unstranded`` (default), ``stranded_first`` or ``stranded_second``.
    threads : files read in parallel (default: CPU count).

    Attributes
    ----------
    samples : DataFrame, one row per file: ``file_name``, ``path`` and the sheet labels.
    gene_ids, gene_names, gene_types : (60,660,) arrays from the first file.
    gene_model : the ``# gene-model:`` comment of the first file (e.g. ``GENCODE v36``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sample_sheet: str | os.PathLike | None = None,
        counts_column: str = "unstranded",
        threads: int | None = None,
    ):
        if counts_column not in COUNT_COLUMNS:
            raise ValueError(
                f"counts_column {counts_column!r} is not a GDC counts column; expected one of "
                f"{list(COUNT_COLUMNS)}"
            )
        self.path = os.fspath(path)
        self.counts_column = counts_column
        self.threads = threads or os.cpu_count() or 1
        files = find_gdc_files(self.path)
        names = [os.path.basename(f) for f in files]
        dup = pd.Index(names).duplicated()
        if dup.any():
            raise ValueError(
                f"{self.path}: file name(s) found twice, e.g. {np.asarray(names)[dup][:3].tolist()}"
            )
        self._samples = self._label(files, names, sample_sheet)
        first = self._samples["path"].iloc[0]
        data = _read_bytes(first)
        self._layout, meta, self._special, comments = _learn_layout(first, data, counts_column)
        self._row_names = self._special + meta["gene_id"].tolist()
        self._gene_meta = meta
        self.gene_model = next(
            (c.split(":", 1)[1].strip() for c in comments if c.startswith("# gene-model:")), ""
        )
        log.info(
            "%s: %d GDC files, %d genes, gene model %r, counts column %s",
            self.path,
            len(files),
            len(meta),
            self.gene_model or "unknown",
            counts_column,
        )

    def _label(self, files, names, sample_sheet) -> pd.DataFrame:
        df = pd.DataFrame({"file_name": names, "path": files})
        if sample_sheet is None:
            df.index = pd.Index(
                [n.removesuffix(".gz").removesuffix(GDC_SUFFIX) for n in names], name="sample_id"
            )
            return df
        sheet = read_sample_sheet(sample_sheet)
        key = pd.Index(sheet["File Name"].str.removesuffix(".gz"))
        pos = key.get_indexer([n.removesuffix(".gz") for n in names])
        if (pos < 0).any():
            lacking = np.asarray(names)[pos < 0]
            raise ValueError(
                f"{os.fspath(sample_sheet)}: sample sheet lacks {len(lacking)} file(s) found under "
                f"{self.path}, e.g. {lacking[:3].tolist()} (column 'File Name'): use the sheet "
                "downloaded with these files"
            )
        extra = len(sheet) - len(np.unique(pos))
        if extra:
            log.warning(
                "%s: %d sample sheet row(s) have no file under %s; ignored",
                os.fspath(sample_sheet),
                extra,
                self.path,
            )
        rows = sheet.iloc[pos].reset_index(drop=True)
        sid = rows["Sample ID"]
        dup = sid.duplicated(keep=False)
        if dup.any():
            ex = rows.loc[dup, ["Sample ID", "File Name"]].head(4).to_numpy().tolist()
            raise ValueError(
                f"{os.fspath(sample_sheet)}: Sample ID not unique among the files ({int(dup.sum())} "
                f"files share an ID), e.g. {ex}: keep one file per sample"
            )
        for col, name in _SHEET_LABELS.items():
            if col in rows.columns:
                df[name] = rows[col].to_numpy()
        df.index = pd.Index(sid.to_numpy(), name="sample_id")
        return df

    def label_column(self, name: str) -> str:
        """The :attr:`samples` column holding sample sheet column ``name``: the sheet's own
        names are accepted (``"Project ID"`` → ``cancer_type``, ``"Sample Type"`` →
        ``sample_type``, …) as well as the column names themselves."""
        if name in self._samples.columns:
            return name
        renamed = _SHEET_LABELS.get(name) or _SHEET_LABELS.get(
            next((k for k in _SHEET_LABELS if k.lower() == name.lower()), "")
        )
        return renamed if renamed in self._samples.columns else name

    # ------------------------------------------------------------------ ExpressionSource
    @property
    def samples(self) -> pd.DataFrame:
        return self._samples

    @property
    def gene_ids(self) -> np.ndarray:
        return self._gene_meta["gene_id"].to_numpy(object)

    @property
    def gene_names(self) -> np.ndarray:
        return self._gene_meta["gene_name"].to_numpy(object)

    @property
    def gene_types(self) -> np.ndarray:
        return self._gene_meta["gene_type"].to_numpy(object)

    def align(self, reference: GeneReference | None = None) -> Alignment:
        """:func:`align_genes` with the bundled all-biotype lengths (TPM over all known genes)."""
        reference = reference if reference is not None else GeneReference.default()
        return align_genes(self.gene_ids, reference, default_lengths=default_gene_lengths())

    def _read_one(self, path: str) -> np.ndarray:
        return _parse_counts(
            path, _read_bytes(path), self._layout, self.counts_column, self._row_names
        )

    def read_counts(
        self, rows: np.ndarray | None = None, *, threads: int | None = None, special=False
    ) -> np.ndarray:
        """Raw counts (n, J) int64 of samples ``rows`` (default all), genes in file order.

        With ``special=True``, the (n, 4) ``N_unmapped``, ``N_multimapping``, ``N_noFeature``,
        ``N_ambiguous`` rows instead.
        """
        full = self._read_all(rows, threads)
        ns = self._layout.n_special
        return full[:, :ns] if special else full[:, ns:]

    def _read_all(self, rows, threads) -> np.ndarray:
        rows = np.arange(self.n_samples) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_samples):
            raise IndexError(f"rows out of range for {self.n_samples} samples of {self.path}")
        paths = self._samples["path"].to_numpy()[rows]
        out = np.empty((len(rows), self._layout.n_lines), dtype=np.int64)
        n_thr = max(1, min(threads or self.threads, len(rows)))
        if n_thr == 1:
            for i, p in enumerate(paths):
                out[i] = self._read_one(p)
        else:
            with ThreadPoolExecutor(n_thr) as ex:
                for i, v in enumerate(ex.map(self._read_one, paths)):
                    out[i] = v
        return out

    def read_block(
        self, rows: np.ndarray, alignment: Alignment, *, threads: int | None = None
    ) -> Block:
        """Samples ``rows`` as aligned ``log1p(TPM)`` (float32) plus non-zero/total QC.

        ``alignment`` must have been computed for :attr:`gene_ids` (e.g. by :meth:`align`).
        QC counts run over the gene rows only (``N_*`` rows excluded).
        """
        if len(alignment.gene_map) != len(self._gene_meta):
            raise ValueError(
                f"alignment is for {len(alignment.gene_map):,} source genes but {self.path} has "
                f"{len(self._gene_meta):,}: compute it from this source's gene_ids"
            )
        counts = self.read_counts(rows, threads=threads)
        values, nonzero, total = _engine.normalize_dense(
            counts, alignment.gene_map, alignment.lengths, len(alignment.covered), threads=threads
        )
        return Block(values=values, nonzero=nonzero, total=total)
