"""Python face of the C++ engine (``bulkformer._C``) for chunked HDF5 count matrices.

The engine reads a genes × samples ``uint32`` dataset straight from its raw chunks: h5py only
enumerates the chunk index (``DatasetID.chunk_iter``), then C++ threads ``pread`` the chunks,
undo the filters (deflate, shuffle), gather the requested samples and normalize them in the same
pass (see :mod:`bulkformer.data.normalize` for the definitions), with the GIL released.

Datasets the fast path does not handle — contiguous storage, filters other than deflate and
shuffle, a dtype other than little-endian ``uint32`` — are read with h5py and normalized by the
same C++ arithmetic (``_C.normalize_dense``), so both paths give bit-identical results. Every
other source (GDC, ``.h5ad``, arrays) is normalized by that routine too, through
:func:`normalize_dense`.

Runtime switches (bit-identical results, for tests and benchmarks): :func:`set_simd`,
:func:`set_gene_major`, :func:`set_inflate_backend`, :func:`set_default_threads`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import h5py
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "ChunkIndex",
    "EngineError",
    "chunk_index",
    "clear_index_cache",
    "fast_path_problem",
    "read_matrix",
    "normalize_dense",
    "qc_dense",
    "inflate_only",
    "set_simd",
    "set_gene_major",
    "set_inflate_backend",
    "set_default_threads",
    "switches",
]

#: what read_matrix can produce from an HDF5 count dataset
MODES = {"counts": 0, "log1p_tpm": 1}
#: what normalize_dense takes: raw counts (→ TPM with lengths → log1p) or TPM as given (→ log1p)
_DENSE_MODES = {"counts": 1, "tpm": 2}
_default_threads = 0
_FILTER_IDS = {h5py.h5z.FILTER_DEFLATE: "deflate", h5py.h5z.FILTER_SHUFFLE: "shuffle"}


class EngineError(ValueError, RuntimeError):
    """A chunk could not be read or decoded (corrupt or truncated file).

    A ValueError (bad input: a build stops without offering to resume, since a rerun would
    meet the same bytes) and, for callers that catch it as such, a RuntimeError.
    """


#: how far from an integer a count stored as a float may be (the rule of every reader)
COUNT_TOLERANCE = 1e-3

_DAMAGED = (
    " — the input file is damaged (re-download or repair it): rerunning the same command "
    "reads the same bytes and fails the same way"
)


def _C():
    try:
        from bulkformer import _C
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError(
            "bulkformer._C is not built: install the package with `pip install .` "
            "(or `python setup.py build_ext --inplace` in a checkout)"
        ) from e
    return _C


def filters_of(ds: h5py.Dataset) -> list[tuple[int, str]]:
    """The dataset's filter pipeline in write order, as (HDF5 filter id, name)."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        fid, _flags, _vals, name = plist.get_filter(i)
        out.append((int(fid), name.decode(errors="replace") if isinstance(name, bytes) else name))
    return out


def fast_path_problem(ds: h5py.Dataset) -> str | None:
    """Why the C++ raw-chunk path cannot read ``ds`` (None when it can)."""
    if ds.chunks is None:
        return "contiguous (unchunked) storage"
    if ds.dtype.str != "<u4":
        return f"dtype {ds.dtype.str} (the fast path reads little-endian uint32)"
    if ds.ndim != 2:
        return f"{ds.ndim}-D dataset"
    for fid, name in filters_of(ds):
        if fid not in _FILTER_IDS:
            return f"filter {name!r} (id {fid})"
    if ds.file.driver not in ("sec2", "stdio"):
        return f"HDF5 driver {ds.file.driver!r}"
    if ds.external:
        return "external storage"
    return None


def _header_addr(ds: h5py.Dataset) -> int:
    """File address of the dataset's object header. (``h5o.get_info`` would also give it, but it
    sizes the whole chunk index first: 40 ms for 68,000 chunks.)"""
    lo, hi = h5py.h5g.get_objinfo(ds.id).objno
    return int(lo) | (int(hi) << 64)


@dataclass
class ChunkIndex:
    """Byte offsets, stored sizes and filter masks of the chunks, as a (rows, cols) grid over
    the logical genes × samples axes (``transposed`` when storage is samples × genes).

    A partial index holds only the chunk columns ``cols`` (sorted): its arrays are
    (rows, len(cols)). ``cols`` is None for a full index.
    """

    path: str
    n_genes: int
    n_samples: int
    chunk_genes: int
    chunk_samples: int
    transposed: bool
    filters: list[int]
    offsets: np.ndarray  # (R, C) int64, -1 where the chunk was never written
    sizes: np.ndarray  # (R, C) int64
    masks: np.ndarray  # (R, C) uint32
    cols: np.ndarray | None = None  # (C,) int64 chunk columns held; None = all

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the whole chunk grid."""
        return -(-self.n_genes // self.chunk_genes), -(-self.n_samples // self.chunk_samples)

    def holds(self, cols: np.ndarray) -> bool:
        """True when every chunk column in ``cols`` (sorted, unique) is in the index."""
        if self.cols is None:
            return True
        if len(cols) == 0:
            return True
        if len(self.cols) == 0:
            return False
        pos = np.minimum(np.searchsorted(self.cols, cols), len(self.cols) - 1)
        return bool(np.all(self.cols[pos] == cols))

    @classmethod
    def _empty(cls, ds: h5py.Dataset, transposed: bool, cols: np.ndarray | None) -> ChunkIndex:
        if transposed:
            n_samples, n_genes = ds.shape
            cs, cg = ds.chunks
        else:
            n_genes, n_samples = ds.shape
            cg, cs = ds.chunks
        R, C = -(-n_genes // cg), -(-n_samples // cs)
        K = C if cols is None else len(cols)
        return cls(
            path=os.fspath(ds.file.filename),
            n_genes=int(n_genes),
            n_samples=int(n_samples),
            chunk_genes=int(cg),
            chunk_samples=int(cs),
            transposed=transposed,
            filters=[fid for fid, _ in filters_of(ds)],
            offsets=np.full((R, K), -1, dtype=np.int64),
            sizes=np.zeros((R, K), dtype=np.int64),
            masks=np.zeros((R, K), dtype=np.uint32),
            cols=None if cols is None else np.ascontiguousarray(cols, dtype=np.int64),
        )

    def _place(self, r: np.ndarray, c: np.ndarray, off, size, mask) -> None:
        k = c if self.cols is None else np.searchsorted(self.cols, c)
        self.offsets[r, k] = off
        self.sizes[r, k] = size
        self.masks[r, k] = np.asarray(mask).astype(np.uint32)

    @classmethod
    def from_dataset(cls, ds: h5py.Dataset, transposed: bool = False) -> ChunkIndex:
        """The full index from h5py's ``chunk_iter`` (every chunk, any chunk index type)."""
        idx = cls._empty(ds, transposed, None)
        recs: list = []
        ds.id.chunk_iter(
            lambda ci: recs.append((*ci.chunk_offset, ci.byte_offset, ci.size, ci.filter_mask))
        )
        if recs:
            a = np.array(recs, dtype=np.int64)
            r0, r1 = (a[:, 1], a[:, 0]) if transposed else (a[:, 0], a[:, 1])
            idx._place(r0 // idx.chunk_genes, r1 // idx.chunk_samples, a[:, 2], a[:, 3], a[:, 4])
        return idx

    @classmethod
    def from_btree(
        cls, ds: h5py.Dataset, transposed: bool = False, cols: np.ndarray | None = None
    ) -> ChunkIndex | None:
        """The index read by the C++ B-tree reader (``_C.chunk_btree``): all chunk columns, or
        only ``cols`` (sorted, unique chunk columns), visiting only the B-tree nodes that can
        hold them. None when the file's chunk index is not a version-1 B-tree (or the reader
        finds it inconsistent); use :meth:`from_dataset` then."""
        idx = cls._empty(ds, transposed, cols)
        R, C = idx.grid
        want = None
        if cols is not None:
            rows = np.arange(R, dtype=np.int64)
            # linear chunk id in storage order: genes × samples → r * C + c, else c * R + r
            want = (
                (idx.cols[:, None] * R + rows).ravel()
                if transposed
                else (rows[:, None] * C + idx.cols).ravel()
            )
            want = np.sort(want)
        try:
            res = _C().chunk_btree(
                idx.path,
                _header_addr(ds),
                list(ds.shape),
                list(ds.chunks),
                ds.dtype.itemsize,
                want,
            )
        except (RuntimeError, ValueError) as e:
            log.warning("%s: chunk B-tree not read (%s): using h5py's chunk_iter", idx.path, e)
            return None
        if isinstance(res, str):
            log.debug("%s: chunk B-tree reader: %s: using h5py's chunk_iter", idx.path, res)
            return None
        lin, addr, size, mask, _nodes = res
        if transposed:
            c, r = np.divmod(lin, R)
        else:
            r, c = np.divmod(lin, C)
        idx._place(r, c, addr, size, mask)
        return idx

    def _kw(self) -> dict:
        return dict(
            path=self.path,
            n_genes=self.n_genes,
            n_samples=self.n_samples,
            chunk_genes=self.chunk_genes,
            chunk_samples=self.chunk_samples,
            transposed=self.transposed,
            filters=self.filters,
            offsets=self.offsets,
            sizes=self.sizes,
            masks=self.masks,
            cols=self.cols,
        )


#: a request touching at most this fraction of the chunk columns reads only their part of the
#: chunk B-tree (see benches/chunk_sweep.py --index); larger ones read the whole index once
LAZY_INDEX_FRACTION = 0.25
_CACHE_FILES = 16
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _merge(a: ChunkIndex, b: ChunkIndex) -> ChunkIndex:
    """Union of two partial indexes of one dataset."""
    cols = np.union1d(a.cols, b.cols)
    out = ChunkIndex(**{**a.__dict__, "cols": cols})
    R = a.offsets.shape[0]
    out.offsets = np.empty((R, len(cols)), np.int64)
    out.sizes = np.empty((R, len(cols)), np.int64)
    out.masks = np.empty((R, len(cols)), np.uint32)
    for part in (a, b):
        k = np.searchsorted(cols, part.cols)
        out.offsets[:, k], out.sizes[:, k], out.masks[:, k] = part.offsets, part.sizes, part.masks
    return out


def chunk_index(
    ds: h5py.Dataset, samples: np.ndarray | None = None, transposed: bool = False
) -> ChunkIndex:
    """The chunk index for reading ``samples`` of ``ds`` (all when None), cached per file.

    The cache (in memory, a few files) is keyed by the file's path, size, modification time
    and inode, so a rewritten file is indexed again. A request that touches at most
    :data:`LAZY_INDEX_FRACTION` of the chunk columns reads only the B-tree nodes of those
    columns (and adds them to the cached partial index); a larger one reads the whole index.
    Files whose chunk index is not a version-1 B-tree are indexed by h5py's ``chunk_iter``.
    """
    path = os.path.realpath(os.fspath(ds.file.filename))
    key = (path, ds.name, bool(transposed))
    stamp = _stamp(path)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] != stamp:
            del _cache[key]
            hit = None
        if hit is not None:
            _cache.move_to_end(key)
    cached: ChunkIndex | None = None if hit is None else hit[1]
    cs = ds.chunks[0] if transposed else ds.chunks[1]
    n_cols = -(-(ds.shape[0] if transposed else ds.shape[1]) // cs)
    need = None
    if samples is not None:
        need = np.unique(np.asarray(samples, dtype=np.int64) // cs)
    if cached is not None and (cached.cols is None or (need is not None and cached.holds(need))):
        return cached
    idx = None
    if need is not None:
        have = 0 if cached is None or cached.cols is None else len(cached.cols)
        missing = need if cached is None else np.setdiff1d(need, cached.cols, assume_unique=True)
        if have + len(missing) <= LAZY_INDEX_FRACTION * n_cols:
            part = ChunkIndex.from_btree(ds, transposed, missing)
            if part is not None:
                idx = part if cached is None else _merge(cached, part)
    if idx is None:
        idx = ChunkIndex.from_btree(ds, transposed) or ChunkIndex.from_dataset(ds, transposed)
    with _cache_lock:
        _cache[key] = (stamp, idx)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_FILES:
            _cache.popitem(last=False)
    return idx


def clear_index_cache() -> None:
    """Forget every cached chunk index."""
    with _cache_lock:
        _cache.clear()


def _threads(threads: int | None) -> int:
    """Worker threads for the engine: 0 means all cores; a negative count is refused."""
    what = "threads"
    if threads is None:
        what = "the default thread count"
        threads = _default_threads
    if int(threads) < 0:
        raise ValueError(f"{what}={threads}: expected an integer ≥ 0 (0 or None: all cores)")
    return int(threads)


def set_default_threads(threads: int | None) -> int:
    """Worker threads of engine calls made with ``threads=None`` (0 or None: all cores).

    Returns the previous setting.
    """
    global _default_threads
    if threads is not None and int(threads) < 0:
        raise ValueError(f"threads={threads}: expected an integer ≥ 0 (0 or None: all cores)")
    prev, _default_threads = _default_threads, int(threads or 0)
    return prev


def set_simd(enabled: bool) -> bool:
    """AVX2 loops where the CPU has them (default) or, with ``False``, the portable loops.

    Bit-identical either way (the tests compare the two). Returns the previous setting.
    """
    return bool(_C().set_simd(bool(enabled)))


def set_gene_major(enabled: bool) -> bool:
    """Gene-major accumulation of wide chunk rows (default) or, with ``False``, always the
    transposing path (the one scattered sample subsets take). Bit-identical; returns the
    previous setting."""
    return bool(_C().set_gene_major(bool(enabled)))


def set_inflate_backend(name: str) -> str:
    """``"zlib"`` forces zlib even when libdeflate was linked; ``"auto"`` (default) uses
    libdeflate when present. Returns the previous setting (``"zlib"`` or ``"auto"``)."""
    if name not in ("auto", "zlib"):
        raise ValueError(f"inflate backend must be 'auto' or 'zlib', got {name!r}")
    return "zlib" if _C().set_force_zlib(name == "zlib") else "auto"


@contextlib.contextmanager
def switches(
    *, simd: bool | None = None, gene_major: bool | None = None, inflate: str | None = None
):
    """Context manager setting engine switches for a block and restoring them afterwards."""
    prev = {}
    try:
        if simd is not None:
            prev["simd"] = set_simd(simd)
        if gene_major is not None:
            prev["gene_major"] = set_gene_major(gene_major)
        if inflate is not None:
            prev["inflate"] = set_inflate_backend(inflate)
        yield
    finally:
        if "simd" in prev:
            set_simd(prev["simd"])
        if "gene_major" in prev:
            set_gene_major(prev["gene_major"])
        if "inflate" in prev:
            set_inflate_backend(prev["inflate"])


def read_matrix(
    ds: h5py.Dataset,
    samples: np.ndarray,
    *,
    transposed: bool = False,
    mode: str = "log1p_tpm",
    gene_map: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    n_out: int | None = None,
    out: np.ndarray | None = None,
    dtype=np.float32,
    qc: bool = True,
    threads: int | None = None,
    engine: str = "auto",
    index: ChunkIndex | None = None,
    max_scratch_bytes: int = 288 << 20,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Read and normalize samples of a genes × samples count dataset.

    Parameters
    ----------
    ds : the count dataset (genes × samples; samples × genes with ``transposed=True``).
    samples : (S,) sample (column) indices, any order, repeats allowed; output row k is
        sample ``samples[k]``.
    mode : ``"counts"`` (raw counts, duplicates summed) or ``"log1p_tpm"``.
    gene_map : (J,) output column of each gene of the file, -1 to drop; default identity.
    lengths : (J,) gene lengths in bp for TPM (NaN/≤0 = unknown, excluded); required unless
        ``mode="counts"``.
    n_out : output columns (default J).
    out : (S, n_out) float32/float16 (or uint32 for counts) buffer to write into; allocated with
        ``dtype`` when None. Pass ``out=False`` for QC only.
    qc : also return per-sample non-zero gene counts and total counts (over all genes).
    threads : worker threads (default: :func:`set_default_threads`, else all cores).
    engine : ``"auto"`` (C++ raw chunks when possible), ``"cpp"`` (error if not possible) or
        ``"h5py"`` (the fallback path, same arithmetic).

    Returns
    -------
    (out, nonzero, total) — ``nonzero``/``total`` are None when ``qc`` is false.
    """
    C = _C()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    shape = ds.shape
    n_genes, n_samples = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    samples = np.ascontiguousarray(samples, dtype=np.int64).reshape(-1)
    if len(samples) and (samples.min() < 0 or samples.max() >= n_samples):
        raise IndexError(
            f"sample index out of range [0, {n_samples}) for {ds.name} in {ds.file.filename}"
        )
    S = len(samples)
    gene_map = (
        np.arange(n_genes, dtype=np.int64)
        if gene_map is None
        else np.ascontiguousarray(gene_map, dtype=np.int64)
    )
    if gene_map.shape != (n_genes,):
        raise ValueError(
            f"gene_map has {gene_map.size} entries but {ds.name} in {ds.file.filename} has "
            f"{n_genes} genes"
        )
    n_out = n_genes if n_out is None else int(n_out)
    if lengths is None:
        if mode != "counts":
            raise ValueError("lengths (bp per gene) are required for TPM; none given")
        lengths = np.ones(n_genes)
    lengths = np.ascontiguousarray(lengths, dtype=np.float64)
    if lengths.shape != (n_genes,):
        raise ValueError(
            f"lengths has {lengths.size} entries but {ds.name} in {ds.file.filename} has "
            f"{n_genes} genes"
        )
    if out is None:
        out = np.empty((S, n_out), dtype=np.uint32 if mode == "counts" else dtype)
    elif out is False:
        out = None
    nonzero = np.empty(S, dtype=np.int64) if qc else None
    total = np.empty(S, dtype=np.float64) if qc else None
    kw = dict(
        gene_map=gene_map,
        n_out=n_out,
        mode=MODES[mode],
        out=out,
        nonzero=nonzero,
        total=total,
        threads=_threads(threads),
    )
    problem = fast_path_problem(ds)
    if engine == "cpp" and problem:
        raise ValueError(f"{ds.file.filename}: the C++ engine cannot read {ds.name}: {problem}")
    if engine not in ("auto", "cpp", "h5py"):
        raise ValueError(f"engine must be 'auto', 'cpp' or 'h5py', got {engine!r}")
    if engine == "h5py" or problem:
        if problem and engine == "auto":
            log.info("%s: %s: using the h5py path", ds.file.filename, problem)
        _read_h5py(C, ds, samples, transposed, lengths, kw, nonzero, total)
        return out, nonzero, total
    if index is None:
        index = chunk_index(ds, samples, transposed)
    try:
        C.read_normalize(
            **index._kw(),
            samples=samples,
            lengths=lengths,
            max_scratch_bytes=max_scratch_bytes,
            **kw,
        )
    except RuntimeError as e:
        raise EngineError(f"{e}{_DAMAGED}") from None
    return out, nonzero, total


def _read_h5py(C, ds, samples, transposed, lengths, kw, nonzero, total) -> None:
    """Fallback: h5py reads whole sample blocks; the same C++ arithmetic normalizes them."""
    n_samples = ds.shape[0] if transposed else ds.shape[1]
    width = (ds.chunks[0] if transposed else ds.chunks[1]) if ds.chunks else 256
    order = np.argsort(samples, kind="stable")
    sorted_s = samples[order]
    out = kw["out"]
    blocks = np.unique(sorted_s // width)
    for b in blocks:
        lo, hi = int(b * width), int(min(n_samples, (b + 1) * width))
        sel = np.flatnonzero((sorted_s >= lo) & (sorted_s < hi))
        rows = order[sel]
        cols = sorted_s[sel] - lo
        try:
            block = ds[lo:hi, :] if transposed else ds[:, lo:hi].T  # (width, genes)
        except OSError as e:  # h5py/HDF5: a chunk that does not decode
            raise EngineError(
                f"{ds.file.filename}: {ds.name}: cannot read samples {lo}…{hi - 1} ({e}){_DAMAGED}"
            ) from None
        counts = block[cols]
        if counts.dtype.kind == "u" and counts.dtype.itemsize <= 4:
            counts = np.ascontiguousarray(counts, dtype=np.uint32)
        else:
            counts = np.ascontiguousarray(counts, dtype=np.float64)
            bad = ~np.isfinite(counts) | (counts < 0)
            what = "non-negative finite counts"
            if not bad.any():  # counts are integers everywhere (within COUNT_TOLERANCE)
                bad = np.abs(counts - np.rint(counts)) > COUNT_TOLERANCE
                what = (
                    "integer counts (within 1e-3); round estimated counts (RSEM, salmon, "
                    "kallisto) before building"
                )
            if bad.any():
                r, g = np.argwhere(bad)[0]
                raise ValueError(
                    f"{ds.file.filename}: {ds.name} holds an invalid count {float(counts[r, g])!r} "
                    f"(sample {int(sorted_s[sel][r])}, gene {int(g)}); expected {what}"
                )
        sub = dict(kw)
        sub["out"] = None if out is None else np.empty((len(rows), kw["n_out"]), out.dtype)
        sub["nonzero"] = np.empty(len(rows), np.int64)
        sub["total"] = np.empty(len(rows), np.float64)
        C.normalize_dense(counts, lengths=lengths, **sub)
        if out is not None:
            out[rows] = sub["out"]
        if nonzero is not None:
            nonzero[rows] = sub["nonzero"]
            total[rows] = sub["total"]


def _dense_input(x) -> np.ndarray:
    """C-contiguous uint32 (integers in range: the ARCHS4 reader's exact input type) or
    float64 copy/view of a 2-D matrix. The float32 value of a count is the same either way."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D samples × genes matrix, got shape {x.shape}")
    if x.dtype.kind in "uib" and (x.size == 0 or (x.min() >= 0 and int(x.max()) <= 0xFFFFFFFF)):
        return np.ascontiguousarray(x, dtype=np.uint32)
    return np.ascontiguousarray(x, dtype=np.float64)


def normalize_dense(
    x: np.ndarray,
    gene_map: np.ndarray,
    lengths: np.ndarray | None,
    n_out: int,
    *,
    values: str = "counts",
    qc: bool = True,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Numbers already in memory → aligned ``log1p(TPM)``, by the engine's C++ arithmetic.

    Parameters
    ----------
    x : (S, J) non-negative numbers, samples × source genes (any real dtype; unsigned integers
        up to 2**32 - 1 are passed as uint32, the rest as float64). Validate them first
        (:func:`bulkformer.data.matrix.check_values`): the engine does not look for NaN.
    gene_map : (J,) output column of each source gene, -1 to drop.
    lengths : (J,) gene lengths in bp (NaN/≤0 = unknown, excluded from TPM); ignored (may be
        None) for ``values="tpm"``.
    n_out : output columns.
    values : ``"counts"`` (raw counts → TPM → log1p, as :func:`read_matrix`) or ``"tpm"`` (TPM
        taken as given, not renormalized → log1p; every mapped gene covers its column).
    qc : also return per-sample non-zero source genes (int64) and the sum of ``x`` (float64).
    threads : worker threads (default: :func:`set_default_threads`, else all cores).

    Returns
    -------
    (values (S, n_out) float32, nonzero (S,) or None, total (S,) or None). Duplicate source
    genes of one column are summed in TPM space, in source order; unreached columns are 0.
    """
    if values not in _DENSE_MODES:
        raise ValueError(f"values must be one of {sorted(_DENSE_MODES)}, got {values!r}")
    x = _dense_input(x)
    S, J = x.shape
    gene_map = np.ascontiguousarray(gene_map, dtype=np.int64)
    if gene_map.shape != (J,):
        raise ValueError(f"gene_map has {gene_map.size} entries for {J} source genes")
    if lengths is None:
        if values == "counts":
            raise ValueError("lengths (bp per gene) are required for TPM; none given")
        lengths = np.ones(J)
    lengths = np.ascontiguousarray(lengths, dtype=np.float64)
    if lengths.shape != (J,):
        raise ValueError(f"lengths has {lengths.size} entries for {J} source genes")
    out = np.empty((S, int(n_out)), dtype=np.float32)
    nonzero = np.empty(S, dtype=np.int64) if qc else None
    total = np.empty(S, dtype=np.float64) if qc else None
    _C().normalize_dense(
        x,
        gene_map=gene_map,
        lengths=lengths,
        n_out=int(n_out),
        mode=_DENSE_MODES[values],
        out=out,
        nonzero=nonzero,
        total=total,
        threads=_threads(threads),
    )
    return out, nonzero, total


def qc_dense(x: np.ndarray, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero (S,) int64, total (S,) float64) of a (S, J) matrix, by the engine's QC loop."""
    x = _dense_input(x)
    S, J = x.shape
    nonzero, total = np.empty(S, dtype=np.int64), np.empty(S, dtype=np.float64)
    _C().normalize_dense(
        x,
        gene_map=np.full(J, -1, np.int64),
        lengths=np.ones(J),
        n_out=0,
        mode=0,
        nonzero=nonzero,
        total=total,
        threads=_threads(threads),
    )
    return nonzero, total


def inflate_only(
    ds: h5py.Dataset,
    samples: np.ndarray,
    *,
    transposed: bool = False,
    threads: int | None = None,
    index: ChunkIndex | None = None,
) -> int:
    """Decode every chunk the request touches and do nothing else; returns decoded bytes.

    This is the ceiling the normalizing read is measured against in the benchmarks.
    """
    problem = fast_path_problem(ds)
    if problem:
        raise ValueError(f"{ds.file.filename}: the C++ engine cannot read {ds.name}: {problem}")
    samples = np.ascontiguousarray(samples, dtype=np.int64)
    if index is None:
        index = chunk_index(ds, samples, transposed)
    try:
        return _C().inflate_only(**index._kw(), samples=samples, threads=_threads(threads))
    except RuntimeError as e:
        raise EngineError(f"{e}{_DAMAGED}") from None
