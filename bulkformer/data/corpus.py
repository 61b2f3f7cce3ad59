"""The training corpus on disk: build it from expression sources, open it, merge shards.

A corpus is one directory (format: ``docs/corpus_format.md``), readable with numpy + pandas:

``manifest.json``   format version, parameters, sources (size + checksum), reference id, row
                    counts, progress
``genes.tsv``       the gene reference (G genes, column order of every matrix)
``samples.tsv``     one row per sample kept: sample_id, source_index, source, source_row,
                    [label], split, nonzero_genes, total_counts
``excluded.tsv``    samples dropped by QC, with their figures
``expression.npy``  (N, G) float16 z-scores (``np.load(..., mmap_mode="r")``)
``missing.npy``     (n_sources, G) bool: reference genes a source lacks (z = 0 there); the row
                    of sample i is ``missing[samples.source_index[i]]``
``stats.npz``       per-gene ``mean``, ``std`` (population) and ``count`` of log1p(TPM) over the
                    training rows (or copied from a reference corpus), ``reference_id``, ``n``
``splits.npz``      ``train``, ``val``, ``test``: int64 row indices into expression.npy

Building (:func:`build_corpus`) inflates every source once: phase 1 reads row blocks of
``log1p(TPM)`` into float32 rows while accumulating per-gene statistics over the training rows
that pass QC; phase 2 standardizes them into float16 z-scores, in place (the float32 rows sit
in ``expression.npy`` itself, behind room for one block, and are overwritten as the conversion
advances; see :func:`_standardize`). With given statistics, z is written while reading and
phase 2 only drops the rows QC excluded. The build runs in ``OUT.partial`` and is renamed to
``OUT`` at the end; after a kill, rerunning the same call resumes from the last committed block
and gives byte-identical files (the manifest's ``build`` section, which holds timings, aside).

Shards (``shard=(i, n)``) each run phase 1 over a contiguous range of blocks and keep the raw
float32 ``log1p.npy``; :func:`merge_parts` re-folds the training statistics block by block in
the same order as a single run (bit-identical), then standardizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import itertools
import json
import logging
import mmap
import os
import shutil
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .genes import GeneReference
from .normalize import GeneStats, standardize, z_params
from .source import Alignment, Block, ExpressionSource, align_genes

__all__ = [
    "Corpus",
    "CorpusPart",
    "CorpusStats",
    "assign_splits",
    "build_corpus",
    "merge_parts",
    "file_fingerprint",
]

log = logging.getLogger(__name__)

FORMAT = "bulkformer-corpus"
FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.9, 0.05, 0.05)
DEFAULT_BLOCK_SIZE = 512
#: layout of the files in ``OUT.partial`` (2: float32 rows inside expression.npy, converted in
#: place); a partial build with another layout is not resumed
PARTIAL_LAYOUT = 2
_LAYOUT_KEYS = ("partial_layout", "blocks_sha256")
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: test hook: seconds to sleep after each committed block (lets a test kill a build mid-run)
_SLEEP_ENV = "BULKFORMER_CORPUS_TEST_SLEEP"
_MiB = 1 << 20


# ====================================================================== small file helpers
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync'd, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_bytes(**arrays) -> bytes:
    """An ``.npz`` (readable by ``np.load``) without timestamps, so equal inputs → equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, b.getvalue())
    return buf.getvalue()


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def _tsv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(sep="\t", index=False, lineterminator="\n").encode()


def _reserve(fd: int, size: int, path: Path) -> None:
    """Allocate a new file's disk blocks up front (no data written where the file system
    supports it). A full disk then fails here, with a clear error, rather than later: a write
    through a memory map into a block that cannot be allocated kills the process (SIGBUS)."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"{path}: not enough disk space: this file needs {size / 1e9:.2f} GB "
                "(free some space and rerun the same command to resume)",
            ) from e
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _open_rows(path: Path, shape, dtype) -> _NpyRows:
    """The ``.npy`` of a build in progress: opened when a resumed build left it, else created."""
    f = _NpyRows(path) if path.exists() else _NpyRows(path, shape, dtype, create=True)
    if f.shape != tuple(shape):
        raise OSError(f"{path} has shape {f.shape}, expected {tuple(shape)} (corrupt partial?)")
    return f


_mmap = mmap.mmap  # (a test replaces it to simulate a file system without shared maps)
_NO_MMAP_NOTED: set = set()


def _note_no_mmap(path: Path, err: Exception) -> None:
    if path.parent not in _NO_MMAP_NOTED:
        _NO_MMAP_NOTED.add(path.parent)
        log.info("%s cannot be memory-mapped (%s); reading and writing it with copies", path, err)


class _NpyRows:
    """Row-block I/O on an ``.npy`` file: ``pread``/``pwrite``, or one block at a time through
    a memory map (:meth:`rows`), so the resident memory of a build stays one block whatever the
    file size. ``create`` writes the header and reserves the rows (plus ``tail_bytes`` after
    them) on disk; ``offset`` opens a raw row region of an existing file, without a header."""

    def __init__(
        self,
        path: Path,
        shape=None,
        dtype=None,
        *,
        create: bool = False,
        offset: int | None = None,
        tail_bytes: int = 0,
    ):
        self.path = Path(path)
        if offset is not None:  # a raw row region at ``offset`` of an existing file, no header
            self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), int(offset)
            self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            self.fd = os.open(self.path, os.O_RDWR)
            return
        if create:
            dtype = np.dtype(dtype)
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": tuple(int(s) for s in shape),
            }
            with open(self.path, "wb") as f:  # the header np.lib.format.open_memmap writes
                np.lib.format.write_array_header_1_0(f, header)
                offset = f.tell()
                size = offset + int(np.prod(shape)) * dtype.itemsize + tail_bytes
                f.truncate(size)
                f.flush()
                _reserve(f.fileno(), size, self.path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), offset
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDWR)

    def write(self, start: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if len(arr) == 0:
            return
        view = memoryview(arr).cast("B")
        pos = self.offset + start * self.row_bytes
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], pos + done)

    def read(self, start: int, n: int) -> np.ndarray:
        out = np.empty((n,) + self.shape[1:], dtype=self.dtype)
        if n == 0:
            return out
        view = memoryview(out).cast("B")
        pos = self.offset + start * self.row_bytes
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], pos + done)
            if got == 0:
                raise OSError(f"{self.path}: unexpected end of file (truncated?)")
            done += got
        return out

    @contextlib.contextmanager
    def rows(self, start: int, n: int, *, write: bool = False):
        """Rows start … start+n as an ndarray over a shared memory map of the file (no copy):
        reads touch the page cache directly, writes land in it. Unmapped on exit, so the
        resident memory stays one block."""
        pos = self.offset + start * self.row_bytes
        lo = pos - pos % mmap.ALLOCATIONGRANULARITY
        size = pos - lo + n * self.row_bytes
        if n == 0:
            yield np.empty((0,) + self.shape[1:], dtype=self.dtype)
            return
        access = mmap.ACCESS_WRITE if write else mmap.ACCESS_READ
        try:
            m = _mmap(self.fd, size, offset=lo, access=access)
        except (OSError, ValueError) as e:  # a file system without shared maps: copy instead
            _note_no_mmap(self.path, e)
            if not write:
                yield self.read(start, n)
                return
            buf = np.empty((n,) + self.shape[1:], dtype=self.dtype)
            yield buf
            self.write(start, buf)  # only reached when the caller's block succeeded
            return
        try:
            arr = np.frombuffer(
                m,
                dtype=self.dtype,
                count=n * self.row_bytes // self.dtype.itemsize,
                offset=pos - lo,
            ).reshape((n,) + self.shape[1:])
            yield arr
            del arr
        finally:
            try:
                m.close()
            except BufferError:  # pragma: no cover - a caller kept a view: the GC unmaps it
                pass

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: progress is committed at most this often (and after the last block of each phase)
COMMIT_SECONDS = float(os.environ.get("BULKFORMER_COMMIT_SECONDS", "1.0"))


def _boot_id() -> str | None:
    """This boot of the machine, to tell a killed build from a crashed one: Linux's boot id,
    else the boot time from ``sysctl kern.boottime`` (macOS, BSD); None when neither exists."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        import subprocess

        r = subprocess.run(
            ["sysctl", "-n", "kern.boottime"], capture_output=True, text=True, timeout=5
        )
        return f"boottime:{r.stdout.strip()}" if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None


def _resumable(old: dict, partial: Path) -> bool:
    """Whether the data an interrupted build committed can be trusted.

    A process kill loses nothing the build wrote (the kernel still holds it), so a build
    committed without fsync resumes on the same boot. After a reboot (crash, power loss) only a
    ``durable`` build's commits (data fsync'd before progress) are known to be on disk.
    """
    b = old.get("build", {})
    if b.get("durable"):
        return True
    boot = _boot_id()
    if boot is not None and b.get("boot_id") == boot:
        return True
    log.warning(
        "%s was left by a build that did not fsync its data (durable=False) and the machine "
        "has restarted since (or its boot cannot be identified): what it wrote may not have "
        "reached the disk, so the build starts over",
        partial,
    )
    return False


# ====================================================================== fingerprints
def file_fingerprint(path: str | os.PathLike) -> dict:
    """Cheap identity of an input file or directory, recorded in the manifest.

    A file: size, mtime (ns) and the SHA-256 of its first and last MiB. A directory: the number
    of files, their total size and the SHA-256 of the sorted list of (relative path, size,
    mtime). Enough to refuse resuming a build whose inputs changed; not a content hash.
    """
    p = Path(path)
    if p.is_file():
        st = p.stat()
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read(_MiB))
            if st.st_size > 2 * _MiB:
                f.seek(st.st_size - _MiB)
                h.update(f.read(_MiB))
            elif st.st_size > _MiB:
                h.update(f.read())
        return {
            "kind": "file",
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256_head_tail": h.hexdigest(),
        }
    if p.is_dir():
        h = hashlib.sha256()
        n = total = 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            n, total = n + 1, total + st.st_size
            h.update(f"{f.relative_to(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return {"kind": "directory", "files": n, "size": total, "sha256_listing": h.hexdigest()}
    return {"kind": "unknown"}


def _source_fingerprint(source: ExpressionSource) -> dict:
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return fp()
    return file_fingerprint(source.path)


# ====================================================================== statistics
@dataclasses.dataclass(frozen=True)
class CorpusStats:
    """Per-gene standardization statistics of log1p(TPM) (the corpus' "tokenizer").

    mean, std : (G,) float64, population std; std = 0 → z = 0.
    count : (G,) float64, training rows that had the gene (missing genes are not counted).
    reference_id : the gene reference the columns follow.
    n : training rows used.
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    reference_id: str
    n: int

    @classmethod
    def from_gene_stats(cls, st: GeneStats, reference_id: str, n: int) -> CorpusStats:
        return cls(st.mean, st.std, st.count.copy(), reference_id, int(n))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CorpusStats:
        """Read ``stats.npz`` (or the one inside a corpus directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "stats.npz"
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such statistics file (a corpus' stats.npz)")
        with np.load(p, allow_pickle=False) as z:
            missing = {"mean", "std", "reference_id"} - set(z.files)
            if missing:
                raise ValueError(f"{p}: lacks {sorted(missing)}; expected a corpus stats.npz")
            G = len(z["mean"])
            return cls(
                z["mean"].astype(np.float64),
                z["std"].astype(np.float64),
                z["count"].astype(np.float64) if "count" in z.files else np.zeros(G),
                str(z["reference_id"]),
                int(z["n"]) if "n" in z.files else 0,
            )

    def to_bytes(self) -> bytes:
        return _npz_bytes(
            mean=self.mean,
            std=self.std,
            count=self.count,
            reference_id=np.array(self.reference_id),
            n=np.array(self.n, dtype=np.int64),
        )


def _fold(
    stats: GeneStats | None,
    values: np.ndarray,
    covered: np.ndarray,
    rows: np.ndarray | None = None,
) -> int:
    """Merge the statistics of ``values`` (n, G) over the ``covered`` columns (and only the
    ``rows`` marked true, when given: no copy of the block) into ``stats``.

    Every row of ``values`` (selected or not) is checked for NaN/inf in the same pass; the
    index of the first bad row is returned (and nothing is merged), -1 when all are finite.
    ``stats=None`` only checks.

    The single place where training statistics are accumulated, so that a single build and a
    merge of shards (which call it on the same blocks in the same order) agree bit for bit.
    """
    from .. import _C

    values = np.ascontiguousarray(values, dtype=np.float32)
    if stats is None:
        rows = np.zeros(len(values), dtype=np.uint8)
    elif rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
    mean, m2, bad = _C.block_moments(values, rows)
    n = len(values) if rows is None else int(np.count_nonzero(rows))
    if bad >= 0 or n == 0:
        return int(bad)
    part = GeneStats(len(covered))
    part.count[covered] = n
    part.mean_[covered] = mean[covered]
    part.m2[covered] = m2[covered]
    stats.merge(part)
    return -1


# ====================================================================== splits
def assign_splits(
    n: int,
    fractions: Sequence[float] = DEFAULT_SPLITS,
    *,
    seed: int = 0,
    labels: Sequence | None = None,
) -> np.ndarray:
    """Seeded (stratified when ``labels`` are given) train/val/test assignment.

    Returns
    -------
    (n,) int8: 0 = train, 1 = val, 2 = test.

    Within each label class (classes in sorted order; missing labels form their own class) the
    members are shuffled with ``np.random.default_rng(seed)`` and the first
    ``m − round(m·f_val) − round(m·f_test)`` go to train, the next ``round(m·f_val)`` to val,
    the rest to test (round half up). Train always keeps at least one member, so a class too
    small for a val/test share stays entirely in train (logged).
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(
            f"splits must be three non-negative fractions (train, val, test), got {fr}"
        )
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    codes = np.zeros(n, dtype=np.int8)
    if labels is None:
        groups = [("", np.arange(n))]
    else:
        lab = pd.Series(labels, dtype=object).fillna("").astype(str).to_numpy()
        if len(lab) != n:
            raise ValueError(f"{len(lab)} labels for {n} samples")
        order = np.argsort(lab, kind="stable")
        uniq, start = np.unique(lab[order], return_index=True)
        bounds = list(start) + [n]
        groups = [(u, order[bounds[i] : bounds[i + 1]]) for i, u in enumerate(uniq)]
    small = []
    for name, idx in groups:
        m = len(idx)
        perm = rng.permutation(idx)
        n_val = int(np.floor(m * fr[1] + 0.5))
        n_test = int(np.floor(m * fr[2] + 0.5))
        while n_val + n_test > m - 1 and n_val + n_test > 0 and fr[0] > 0:
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        n_train = m - n_val - n_test
        codes[perm[n_train : n_train + n_val]] = 1
        codes[perm[n_train + n_val :]] = 2
        if labels is not None and (fr[1] > 0 and n_val == 0 or fr[2] > 0 and n_test == 0):
            small.append(f"{name or '<none>'} ({m})")
    if small:
        log.info(
            "%d label class(es) too small for a val/test share stay mostly in train: %s",
            len(small),
            ", ".join(small[:10]) + (" …" if len(small) > 10 else ""),
        )
    return codes


# ====================================================================== the plan
@dataclasses.dataclass
class _Plan:
    """Everything decided before any expression is read (cheap; validates the inputs)."""

    sources: list
    alignments: list
    reference: GeneReference
    ids: np.ndarray  # (N,) sample ids, all sources
    source_index: np.ndarray  # (N,) int32
    source_row: np.ndarray  # (N,) int64
    labels: np.ndarray | None  # (N,) str
    split: np.ndarray  # (N,) int8
    blocks: np.ndarray  # (B, 3) int64: source, start, stop (rows within the source)
    block_start: np.ndarray  # (B,) global input row of each block's first row
    shard_blocks: tuple  # [b0, b1)
    key: dict  # parameters + inputs identity (resume / merge compatibility)

    @property
    def shard_rows(self) -> tuple:
        b0, b1 = self.shard_blocks
        if b0 == b1:
            return (0, 0)
        last = self.blocks[b1 - 1]
        return int(self.block_start[b0]), int(self.block_start[b1 - 1] + last[2] - last[1])


def _align(source: ExpressionSource, reference: GeneReference) -> Alignment:
    fn = getattr(source, "align", None)
    al = fn(reference) if callable(fn) else align_genes(source.gene_ids, reference)
    if al.reference_id != reference.id:
        reference.check_same(al.reference_id, f"the gene alignment of {source.path}")
    if al.n_matched == 0:
        ids = list(np.asarray(source.gene_ids)[:3])
        raise ValueError(
            f"{source.path}: none of its {len(source.gene_ids):,} gene IDs (e.g. {ids}) matches "
            f"the gene reference ({len(reference):,} genes such as {reference.gene_ids[0]}) — "
            "unknown gene ID scheme? Expected Ensembl gene IDs (ENSG…); pick the right column "
            "(gene_column= / --gene-column)"
        )
    if al.n_matched < 0.5 * len(reference):
        log.warning("%s: only %s", source.path, al.report())
    return al


def _shard_of(spec) -> tuple | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            i, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"shard {spec!r} is not of the form i/n (e.g. 0/4)") from None
    else:
        i, n = (int(v) for v in spec)
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 ≤ i < n")
    return i, n


def _block_cuts(source: ExpressionSource, block_size: int) -> np.ndarray:
    """The source's block boundaries (chunk-aligned where it knows its storage), checked."""
    n = source.n_samples
    fn = getattr(source, "block_cuts", None)
    cuts = np.asarray(
        fn(block_size) if fn is not None else ExpressionSource.block_cuts(source, block_size),
        dtype=np.int64,
    )
    if (
        len(cuts) == 0
        or cuts[0] != 0
        or cuts[-1] != n
        or (len(cuts) > 1 and (np.diff(cuts) <= 0).any())
    ):
        raise RuntimeError(
            f"{source.path}: block_cuts() must rise strictly from 0 to {n}; got {cuts[:8]}…"
        )
    return cuts


def _make_plan(
    sources, reference, *, label, min_nonzero, splits, seed, stats, block_size, shard
) -> _Plan:
    if isinstance(sources, ExpressionSource):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ValueError("no input: give at least one expression source")
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    alignments = [_align(s, reference) for s in sources]
    ids, sidx, srow, labels = [], [], [], []
    for i, s in enumerate(sources):
        df = s.samples
        if label is not None and label not in df.columns:
            raise ValueError(
                f"{s.path}: no sample column {label!r} for labels; available: "
                f"{', '.join(map(str, df.columns)) or '(none)'}"
            )
        ids.append(df.index.astype(str).to_numpy(dtype=object))
        sidx.append(np.full(len(df), i, dtype=np.int32))
        srow.append(np.arange(len(df), dtype=np.int64))
        if label is not None:
            labels.append(df[label].to_numpy(dtype=object))
    all_ids = np.concatenate(ids) if ids else np.array([], dtype=object)
    dup = pd.Index(all_ids).duplicated()
    if dup.any():
        d = all_ids[dup][:5].tolist()
        where = [sources[int(i)].path for i in np.concatenate(sidx)[dup][:2]]
        raise ValueError(
            f"{int(dup.sum())} duplicate sample ID(s) across the inputs, e.g. {d} (in {where}); "
            "sample IDs must be unique in a corpus — drop the repeated samples from one input"
        )
    lab = None
    if label is not None:
        lab = pd.Series(np.concatenate(labels), dtype=object).fillna("").astype(str).to_numpy()
    split = assign_splits(len(all_ids), splits, seed=seed, labels=lab)
    blocks = [
        (i, int(a), int(b))
        for i, s in enumerate(sources)
        for a, b in itertools.pairwise(_block_cuts(s, block_size))
    ]
    blocks = np.array(blocks, dtype=np.int64).reshape(-1, 3)
    offsets = np.concatenate([[0], np.cumsum([s.n_samples for s in sources])])
    block_start = offsets[blocks[:, 0]] + blocks[:, 1] if len(blocks) else np.zeros(0, np.int64)
    sh = _shard_of(shard)
    if sh is None:
        shard_blocks = (0, len(blocks))
    else:
        i, n = sh
        N = max(len(all_ids), 1)
        owner = np.minimum(block_start * n // N, n - 1)
        hit = np.flatnonzero(owner == i)
        shard_blocks = (int(hit[0]), int(hit[-1]) + 1) if len(hit) else (0, 0)
    fr = np.asarray(splits, dtype=np.float64)
    params = {
        "label": label,
        "min_nonzero": int(min_nonzero),
        "splits": dict(zip(SPLIT_NAMES, (fr / fr.sum()).round(12).tolist())),
        "seed": int(seed),
        "block_size": int(block_size),
        "stats": None
        if stats is None
        else {"reference_id": stats.reference_id, "n": stats.n, "sha256": _sha(stats)},
    }
    src_info = []
    for i, (s, al) in enumerate(zip(sources, alignments)):
        src_info.append(
            {
                "index": i,
                "type": type(s).__name__,
                "path": str(s.path),
                "n_samples": int(s.n_samples),
                "fingerprint": _source_fingerprint(s),
                "alignment": {
                    "n_matched": al.n_matched,
                    "n_unused": al.n_unused,
                    "n_duplicates": al.n_duplicates,
                    "n_unknown_length": al.n_unknown_length,
                    "report": al.report(),
                },
            }
        )
    key = {
        "reference": {"id": reference.id, "n_genes": len(reference)},
        "parameters": params,
        "sources": src_info,
    }
    return _Plan(
        sources,
        alignments,
        reference,
        all_ids,
        np.concatenate(sidx) if sidx else np.zeros(0, np.int32),
        np.concatenate(srow) if srow else np.zeros(0, np.int64),
        lab,
        split,
        blocks,
        block_start.astype(np.int64),
        shard_blocks,
        key,
    )


def _sha(stats: CorpusStats) -> str:
    return hashlib.sha256(stats.to_bytes()).hexdigest()[:16]


# ====================================================================== progress record
class _Progress:
    """The commit record of a build in progress (``progress.npz``, replaced atomically after each
    block's data is fsync'd). The manifest's ``progress`` mirrors it for humans."""

    def __init__(self, path: Path, G: int):
        self.path = path
        self.phase = 1
        self.blocks_done = 0
        self.rows_written = 0
        self.rows_done = 0
        self.stats = GeneStats(G)
        if path.exists():
            with np.load(path) as z:
                self.phase = int(z["phase"])
                self.blocks_done = int(z["blocks_done"])
                self.rows_written = int(z["rows_written"])
                self.rows_done = int(z["rows_done"])
                self.stats = GeneStats.from_array(z["stats"])

    def commit(self) -> None:
        _write_atomic(
            self.path,
            _npz_bytes(
                phase=np.int64(self.phase),
                blocks_done=np.int64(self.blocks_done),
                rows_written=np.int64(self.rows_written),
                rows_done=np.int64(self.rows_done),
                stats=self.stats.as_array(),
            ),
        )


def _stamp(manifest: dict, durable: bool) -> None:
    """Record how the data of the next commit was written (see :func:`_resumable`)."""
    manifest.setdefault("build", {}).update(durable=bool(durable), boot_id=_boot_id())


def _sleep_hook() -> None:
    s = os.environ.get(_SLEEP_ENV)
    if s:
        time.sleep(float(s))


def _tqdm(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=" samples", smoothing=0.1)


# ====================================================================== build
def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another output or pass overwrite=True "
            "(--overwrite) to replace it"
        )


def _open_partial(out: Path, key: dict, kind: str, overwrite: bool) -> tuple[Path, dict | None]:
    """Create ``OUT.partial`` or find the compatible one a killed build left (returned manifest)."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        mf = partial / "manifest.json"
        old = json.loads(mf.read_text()) if mf.exists() else None
        if old is not None and old.get("kind") == kind and old.get("plan") == key:
            if _resumable(old, partial):
                log.info("resuming the interrupted build in %s", partial)
                return partial, old
            shutil.rmtree(partial)
            partial.mkdir(parents=True)
            return partial, None
        if not overwrite:

            def inputs(plan: dict) -> dict:  # the plan without how the partial is laid out
                return {k: v for k, v in plan.items() if k not in _LAYOUT_KEYS}

            if (
                old is not None
                and old.get("kind") == kind
                and inputs(old.get("plan") or {}) == inputs(key)
            ):
                raise FileExistsError(
                    f"{partial} holds an interrupted build of the same inputs written by another "
                    "version of bulkformer (its files or blocks are laid out differently), so it "
                    "cannot be resumed; "
                    "pass overwrite=True (--overwrite) to start over"
                )
            raise FileExistsError(
                f"{partial} holds an interrupted build with different inputs or parameters; "
                "rerun the original command to finish it, or pass overwrite=True "
                "(--overwrite) to discard it"
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial, None


def _finish(partial: Path, out: Path, overwrite: bool) -> None:
    _fsync_dir(partial)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} appeared while building; the new corpus is at {partial}")
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(partial, out)
    _fsync_dir(out.parent)


def _manifest(plan_key: dict, kind: str, extra: dict) -> dict:
    from .._version import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "bulkformer_version": __version__,
        **plan_key,
        **extra,
    }


def build_corpus(
    sources: ExpressionSource | Sequence[ExpressionSource],
    out: str | os.PathLike,
    reference: GeneReference | None = None,
    *,
    label: str | None = None,
    min_nonzero: int = 14000,
    splits: Sequence[float] = DEFAULT_SPLITS,
    seed: int = 0,
    stats: CorpusStats | str | os.PathLike | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | str | None = None,
    progress: bool = True,
    durable: bool = False,
) -> Corpus | CorpusPart:
    """Build a standardized, reference-aligned training corpus from expression sources.

    Parameters
    ----------
    sources : one :class:`~bulkformer.data.source.ExpressionSource` or several (their sample
        IDs must be unique across all of them).
    out : output directory (written as ``out.partial`` then renamed).
    reference : gene reference; default the embedded one (``GeneReference.default()``).
    label : sample metadata column holding a class label (kept in samples.tsv; the split is
        stratified by it). Must exist in every source.
    min_nonzero : QC — samples with fewer non-zero source genes are excluded (excluded.tsv).
    splits : (train, val, test) fractions, normalized; see :func:`assign_splits`. The split is
        assigned over all input samples before QC, so the fractions hold exactly on the input.
    seed : split seed.
    stats : standardize with these statistics (a :class:`CorpusStats`, a ``stats.npz`` or a
        corpus directory) instead of the training split's own — how new data is made to look
        like the pretraining corpus. Their reference must be ``reference``.
    block_size : samples per block (memory ≈ a few × block_size × G × 8 bytes).
    threads : passed to the sources' ``read_block``.
    overwrite : replace an existing ``out`` (and discard an incompatible ``out.partial``).
    shard : ``(i, n)`` or ``"i/n"``: write part i of n (a contiguous range of blocks) as a
        :class:`CorpusPart`, to be joined by :func:`merge_parts`.
    progress : show tqdm progress bars.
    durable : fsync the data before every progress commit, so that the partial build (and the
        finished corpus) survive a power failure or OS crash, at the cost of writing every byte
        to the disk while building. Without it (the default) a killed build still resumes
        exactly — the kernel keeps what a process wrote — but after a reboot an unfinished
        build starts over, and a corpus finished in the last seconds before a crash may not
        be on disk yet (like files written by numpy, h5py or anndata).

    Returns
    -------
    :class:`Corpus` (or :class:`CorpusPart` with ``shard``).

    Raises
    ------
    ValueError
        Bad input (no gene overlap, NaN / negative / non-integer counts, duplicate sample IDs,
        absent label column, statistics of another reference); no partial output is left.
    FileExistsError
        ``out`` exists and ``overwrite`` is false.
    """
    t0 = time.time()
    out = Path(out)
    _check_out(out, overwrite)
    if reference is None:
        if not hasattr(GeneReference, "default"):
            raise ValueError("no embedded gene reference in this build: pass reference=")
        reference = GeneReference.default()  # type: ignore[attr-defined]
    if stats is not None and not isinstance(stats, CorpusStats):
        stats = CorpusStats.load(stats)
    if stats is not None:
        reference.check_same(stats.reference_id, "the statistics given with stats=")
        if len(stats.mean) != len(reference):
            raise ValueError(f"stats have {len(stats.mean)} genes, reference {len(reference)}")
    sh = _shard_of(shard)
    plan = _make_plan(
        sources,
        reference,
        label=label,
        min_nonzero=min_nonzero,
        splits=splits,
        seed=seed,
        stats=stats,
        block_size=block_size,
        shard=sh,
    )
    kind = "corpus" if sh is None else "part"
    key = dict(plan.key)
    key["shard"] = None if sh is None else {"index": sh[0], "count": sh[1]}
    # the partial's file layout is part of what a resume must match (older partials differ)
    plan_id = dict(
        key,
        partial_layout=PARTIAL_LAYOUT,
        blocks_sha256=hashlib.sha256(np.ascontiguousarray(plan.blocks).tobytes()).hexdigest(),
    )
    partial, old = _open_partial(out, plan_id, kind, overwrite)
    build = {"started": (old or {}).get("build", {}).get("started", _now()), "resumed": 0}
    if old is not None:
        build["resumed"] = int(old.get("build", {}).get("resumed", 0)) + 1
    try:
        if old is None:
            reference.to_tsv(partial / "genes.tsv")
            (partial / "missing.npy").write_bytes(_npy_bytes(_missing(plan)))
        manifest = _manifest(key, kind, {"plan": plan_id, "build": build})
        if old is not None and "rows" in old:
            manifest["rows"] = old["rows"]
        writer = _Writer(
            partial, plan, manifest, stats, threads, progress, durable, sharded=sh is not None
        )
        writer.run_read()
        if sh is not None:
            writer.finish_part()
        else:
            writer.finish_tables()
            writer.run_standardize()
            writer.finish_corpus()
    except ValueError:
        writer_close = locals().get("writer")
        if writer_close is not None:
            writer_close.close()
        shutil.rmtree(partial, ignore_errors=True)  # bad input: leave nothing behind
        raise
    except BaseException:
        log.error("build interrupted; rerun the same command to resume from %s", partial)
        raise
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["build"].pop("boot_id", None)
    manifest["build"].update(finished=_now(), seconds=round(time.time() - t0, 3))
    manifest["build"]["threads"] = threads
    _write_atomic(partial / "manifest.json", _json_bytes(manifest))
    _finish(partial, out, overwrite)
    return Corpus.open(out) if sh is None else CorpusPart.open(out)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _npy_bytes(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
    return b.getvalue()


def _missing(plan: _Plan) -> np.ndarray:
    return np.stack([~al.covered for al in plan.alignments]).astype(bool)


class _Writer:
    """Phases of one build in ``partial``; every phase resumes from ``progress.npz``."""

    def __init__(
        self, partial, plan: _Plan, manifest, stats, threads, progress, durable=False, sharded=False
    ):
        self.dir = partial
        self.sharded = sharded
        self.durable = durable
        # with given statistics a whole corpus (not a shard, whose log1p rows a merge needs) is
        # standardized as it is read: z goes straight to expression.npy, no float32 detour
        self.direct = stats is not None and not sharded
        self._gap = int(plan.key["parameters"]["block_size"])
        self.plan = plan
        self.manifest = manifest
        self.given_stats = stats
        self.threads = threads
        self.show = progress
        self.G = len(plan.reference)
        r0, r1 = plan.shard_rows
        self.r0, self.n_in = r0, r1 - r0
        self.prog = _Progress(partial / "progress.npz", self.G)
        self.files: list[_NpyRows] = []

    # -------------------------------------------------------------- helpers
    def _npy(self, name, shape, dtype) -> _NpyRows:
        f = _open_rows(self.dir / name, shape, dtype)
        self.files.append(f)
        return f

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def _commit(self, phase_name: str, total: int) -> None:
        if self.durable:  # data on disk before the progress that claims it
            for f in self.files:
                f.sync()
        _stamp(self.manifest, self.durable)
        self.prog.commit()
        self.manifest["progress"] = {
            "phase": phase_name,
            "blocks_done": self.prog.blocks_done,
            "rows_written": self.prog.rows_written,
            "rows_done": self.prog.rows_done,
            "total": total,
        }
        _write_atomic(self.dir / "manifest.json", _json_bytes(self.manifest))

    # -------------------------------------------------------------- phase 1
    def run_read(self) -> None:
        """Read every block of the shard once: log1p(TPM) → log1p.npy, QC, training stats (or,
        with given statistics, z → expression.npy)."""

        plan, prog = self.plan, self.prog
        b0, b1 = plan.shard_blocks
        if self.sharded:  # a merge needs the part's float32 rows
            self.log1p = self._npy("log1p.npy", (self.n_in, self.G), np.float32)
        elif not self.direct:
            p = self.dir / "expression.npy"
            self.expr, self.log1p = _inplace_layout(
                p, self.n_in, self.G, self._gap, create=not p.exists()
            )
            self.files += [self.expr, self.log1p]
        elif prog.phase == 1:  # rows are counted at the end (QC), then the file is shrunk
            self.expr = self._npy("expression.npy", (self.n_in, self.G), np.float16)
            shift, scale = _z_params(self.given_stats, _missing(plan))
        self.nonzero = self._npy("qc_nonzero.npy", (self.n_in,), np.int64)
        self.total = self._npy("qc_total.npy", (self.n_in,), np.float64)
        if prog.phase != 1:
            return
        min_nz = plan.key["parameters"]["min_nonzero"]
        want_stats = self.given_stats is None
        todo = list(range(b0 + prog.blocks_done, b1))
        self._commit("read", b1 - b0)
        bar = _tqdm(self.n_in, "read", self.show, int(self._rows_before(b0 + prog.blocks_done)))

        def read(b):
            s, a, z = (int(v) for v in plan.blocks[b])
            blk = plan.sources[s].read_block(
                np.arange(a, z), plan.alignments[s], threads=self.threads
            )
            return self._check_block(blk, s, a, z)

        last_commit = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # read block b+1 while block b is written
            fut = pool.submit(read, todo[0]) if todo else None
            for k, b in enumerate(todo):
                blk = fut.result()
                fut = pool.submit(read, todo[k + 1]) if k + 1 < len(todo) else None
                s, a, z = (int(v) for v in plan.blocks[b])
                g = int(plan.block_start[b]) - self.r0
                passed = blk.nonzero >= min_nz
                # training statistics and the NaN/inf check of every row, in one pass
                train = passed & (plan.split[self.r0 + g : self.r0 + g + (z - a)] == 0)
                bad = _fold(
                    prog.stats if want_stats else None,
                    blk.values,
                    plan.alignments[s].covered,
                    train,
                )
                if bad >= 0:
                    src = plan.sources[s]
                    raise ValueError(
                        f"{src.path}: sample {src.samples.index[a + bad]!r} gives non-finite "
                        "log1p(TPM) values (NaN/inf in the input?)"
                    )
                self.nonzero.write(g, blk.nonzero)
                self.total.write(g, blk.total)
                vals = blk.values if passed.all() else blk.values[passed]
                if self.direct:  # z straight into the file's pages
                    with self.expr.rows(prog.rows_written, len(vals), write=True) as zrows:
                        # one thread: the source's reader threads are busy with the next block
                        standardize(vals, shift[s : s + 1], scale[s : s + 1], zrows, threads=1)
                else:
                    self.log1p.write(prog.rows_written, vals)
                prog.rows_written += len(vals)
                prog.blocks_done += 1
                # a commit (progress, and with durable=True an fsync of the data first) at most
                # every COMMIT_SECONDS: a kill loses at most that much reading, never consistency
                now = time.monotonic()
                if now - last_commit >= COMMIT_SECONDS or k + 1 == len(todo):
                    self._commit("read", b1 - b0)
                    last_commit = now
                if bar is not None:
                    bar.update(z - a)
                _sleep_hook()
        if bar is not None:
            bar.close()

    def _rows_before(self, b: int) -> int:
        b0, b1 = self.plan.shard_blocks
        return int(self.plan.block_start[b] - self.r0) if b < b1 else self.n_in

    def _check_block(self, blk: Block, s: int, a: int, z: int) -> Block:
        n, src = z - a, self.plan.sources[s]
        v = np.asarray(blk.values)
        if v.shape != (n, self.G):
            raise RuntimeError(
                f"{src.path}: read_block returned values of shape {v.shape}, expected {(n, self.G)}"
            )
        # NaN/inf are caught by _fold's pass over the block
        return Block(
            v.astype(np.float32, copy=False),
            np.asarray(blk.nonzero, dtype=np.int64).reshape(n),
            np.asarray(blk.total, dtype=np.float64).reshape(n),
        )

    # -------------------------------------------------------------- tables
    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        """(samples kept, samples excluded, kept-row mask over the shard's input rows)."""
        plan = self.plan
        sl = slice(self.r0, self.r0 + self.n_in)
        nz = self.nonzero.read(0, self.n_in)
        tot = self.total.read(0, self.n_in)
        keep = nz >= plan.key["parameters"]["min_nonzero"]
        srcs = plan.sources
        df = pd.DataFrame(
            {
                "sample_id": plan.ids[sl],
                "source_index": plan.source_index[sl],
                "source": [str(srcs[i].path) for i in plan.source_index[sl]],
                "source_row": plan.source_row[sl],
            }
        )
        if plan.labels is not None:
            df["label"] = plan.labels[sl]
        df["split"] = np.asarray(SPLIT_NAMES, dtype=object)[plan.split[sl]]
        df["nonzero_genes"] = nz
        df["total_counts"] = tot
        excluded = df[~keep].drop(columns=["split"]).copy()
        excluded["reason"] = f"nonzero_genes < {plan.key['parameters']['min_nonzero']}"
        return df[keep].reset_index(drop=True), excluded.reset_index(drop=True), keep

    def _stats(self, n_train: int) -> CorpusStats:
        if self.given_stats is not None:
            return self.given_stats
        return CorpusStats.from_gene_stats(self.prog.stats, self.plan.reference.id, n_train)

    def _rows_summary(self, samples: pd.DataFrame, excluded: pd.DataFrame) -> dict:
        counts = samples["split"].value_counts()
        return {
            "input": int(len(samples) + len(excluded)),
            "passed_qc": int(len(samples)),
            "excluded": int(len(excluded)),
            **{k: int(counts.get(k, 0)) for k in SPLIT_NAMES},
        }

    def finish_tables(self) -> None:
        """Write samples/excluded/splits/stats (idempotent) and move to phase 2."""
        if self.prog.phase != 1:
            return
        samples, excluded, _ = self._tables()
        n_train = int((samples["split"] == "train").sum())
        min_nz = self.plan.key["parameters"]["min_nonzero"]
        if len(samples) == 0 and self.n_in > 0:
            best = int(self.nonzero.read(0, self.n_in).max())
            raise ValueError(
                f"no sample passed QC: all {self.n_in:,} have fewer than {min_nz:,} non-zero "
                f"genes (the best has {best:,}); lower --min-nonzero / min_nonzero"
            )
        if n_train == 0 and self.given_stats is None and not self.sharded:
            raise ValueError(
                f"no training sample passed QC ({len(samples):,} kept in val/test), so no "
                "statistics can be computed: give reference statistics (--stats) or more samples"
            )
        _write_corpus_tables(self.dir, samples, excluded, self._stats(n_train))
        self.manifest["rows"] = self._rows_summary(samples, excluded)
        self.prog.phase, self.prog.blocks_done, self.prog.rows_done = 2, 0, 0
        self._commit("standardize", len(samples))

    def run_standardize(self) -> None:
        n = self.prog.rows_written
        if self.direct:  # phase 1 wrote z already: drop the rows QC excluded
            if self.prog.rows_done < n:
                _set_npy_rows(self.dir / "expression.npy", n)
                self.files.append(_NpyRows(self.dir / "expression.npy"))
                self.prog.rows_done = n
                self._commit("standardize", n)
            return
        src_index = pd.read_csv(self.dir / "samples.tsv", sep="\t", usecols=["source_index"])
        _standardize(
            [(self.log1p, n)],
            self.expr,
            src_index["source_index"].to_numpy(),
            CorpusStats.load(self.dir / "stats.npz"),
            _missing(self.plan),
            self.prog,
            self.plan.key["parameters"]["block_size"],
            lambda: self._commit("standardize", n),
            self.show,
            gap=self._gap,
        )
        _set_npy_rows(self.dir / "expression.npy", n)  # after the commit of the last row
        if self.durable:
            self.expr.sync()

    def finish_corpus(self) -> None:
        self.manifest["progress"] = {"phase": "done"}
        self.manifest.pop("plan", None)
        self.manifest["files"] = _FILES
        self.manifest["missing_layout"] = "per-source"
        _write_atomic(self.dir / "manifest.json", _json_bytes(self.manifest))
        self.close()
        for name in ("log1p.npy", "qc_nonzero.npy", "qc_total.npy", "progress.npz"):
            (self.dir / name).unlink(missing_ok=True)

    def finish_part(self) -> None:
        samples, excluded, keep = self._tables()
        b0, b1 = self.plan.shard_blocks
        sizes = self.plan.blocks[b0:b1, 2] - self.plan.blocks[b0:b1, 1]
        samples["block"] = np.repeat(np.arange(b0, b1), sizes)[keep]
        _write_atomic(self.dir / "samples.tsv", _tsv_bytes(samples))
        _write_atomic(self.dir / "excluded.tsv", _tsv_bytes(excluded))
        if self.given_stats is not None:
            _write_atomic(self.dir / "stats.npz", self.given_stats.to_bytes())
        self.manifest["rows"] = self._rows_summary(samples, excluded)
        self.manifest["progress"] = {"phase": "done"}
        self.manifest.pop("plan", None)
        self.manifest["part"] = {"rows_written": self.prog.rows_written}
        _write_atomic(self.dir / "manifest.json", _json_bytes(self.manifest))
        self.close()
        for name in ("qc_nonzero.npy", "qc_total.npy", "progress.npz"):
            (self.dir / name).unlink(missing_ok=True)


_FILES = {
    "genes": "genes.tsv",
    "samples": "samples.tsv",
    "excluded": "excluded.tsv",
    "expression": "expression.npy",
    "missing": "missing.npy",
    "stats": "stats.npz",
    "splits": "splits.npz",
}


def _write_corpus_tables(d: Path, samples, excluded, stats: CorpusStats) -> None:
    _write_atomic(d / "samples.tsv", _tsv_bytes(samples))
    _write_atomic(d / "excluded.tsv", _tsv_bytes(excluded))
    _write_atomic(d / "stats.npz", stats.to_bytes())
    split = samples["split"].to_numpy()
    _write_atomic(
        d / "splits.npz",
        _npz_bytes(**{k: np.flatnonzero(split == k).astype(np.int64) for k in SPLIT_NAMES}),
    )


def _z_params(stats: CorpusStats, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) of :func:`~bulkformer.data.normalize.z_params` for these statistics."""
    return z_params(stats.mean, stats.std, missing)


def _set_npy_rows(path: Path, n: int) -> None:
    """Shrink the row count of an ``.npy`` file in place: its header is rewritten to the same
    length (padding absorbs the shorter number) and the file cut after row ``n`` (also when the
    count is unchanged: anything behind the rows goes). Idempotent."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        offset = f.tell()
        size = offset + n * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if shape[0] == n:
            f.truncate(size)  # an in-place build leaves float32 rows behind the float16 ones
            return
        if n > shape[0]:
            raise ValueError(f"{path}: cannot grow {shape[0]} rows to {n}")
        d = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": fortran,
            "shape": (n, *shape[1:]),
        }
        buf = io.BytesIO()  # numpy's own header for the new shape (as _NpyRows writes it) ...
        write = (
            np.lib.format.write_array_header_1_0
            if version == (1, 0)
            else np.lib.format.write_array_header_2_0
        )
        write(buf, d)
        header = buf.getvalue()
        if len(header) != offset:  # ... padded to the old length if it differs  # pragma: no cover
            text = "{" + "".join(f"'{k}': {v!r}, " for k, v in sorted(d.items())) + "}"
            magic = np.lib.format.magic(*version)
            size = 2 if version == (1, 0) else 4
            pad = offset - len(magic) - size - len(text) - 1
            if pad < 0:
                raise ValueError(f"{path}: header does not fit")
            body = (text + " " * pad + "\n").encode("latin1")
            header = magic + len(body).to_bytes(size, "little") + body
        f.seek(0)
        f.write(header)
        f.truncate(size)


def _standardize(
    segments, expr, source_index, stats, missing, prog, block_size, commit, show, *, gap=None
):
    """Phase 2: float32 log1p rows (concatenated ``segments``) → float16 z rows of ``expr``.

    z = (v − μ)·(1/σ) in float32 (0 where σ = 0 or the gene is missing from the row's source),
    clipped to the float16 range, by the C++ kernel (bit-identical to that numpy expression).
    Both sides are memory-mapped block by block (no copies through the kernel); ``commit``
    runs at most every COMMIT_SECONDS and after the last block.

    ``gap`` (rows): the float32 rows live in the same file as ``expr``, starting ``gap``
    float16 rows after its first row (:func:`_inplace_layout`), and are overwritten as the
    conversion advances. Writing rows below r + n overwrites float32 rows below (r + n − gap)/2,
    so a block is only converted once every float32 row it may overwrite is committed as done:
    after a kill, the rows still to convert are intact.
    """

    N = int(sum(n for _, n in segments))
    shift, scale = _z_params(stats, missing)
    source_index = np.ascontiguousarray(source_index, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([n for _, n in segments])]).astype(np.int64)
    bar = _tqdm(N, "standardize", show, prog.rows_done)

    def span(r: int) -> tuple[int, int, int]:
        seg = int(np.searchsorted(starts, r, side="right") - 1)
        return seg, r - int(starts[seg]), min(block_size, N - r, int(starts[seg + 1]) - r)

    last_commit = time.monotonic()
    committed = prog.rows_done
    while prog.rows_done < N:
        r = prog.rows_done
        seg, off, n = span(r)
        if gap is not None and r + n > gap + 2 * committed:
            commit()  # rows < r are done: the writes below r + n ≤ gap + 2r are safe
            committed, last_commit = r, time.monotonic()
        # straight from the page cache to the page cache: both sides memory-mapped (the
        # float16 rows written never overlap the float32 rows read, see above)
        with segments[seg][0].rows(off, n) as v, expr.rows(r, n, write=True) as z:
            standardize(v, shift, scale, z, src=source_index[r : r + n])
        prog.rows_done += n
        prog.blocks_done += 1
        now = time.monotonic()
        if now - last_commit >= COMMIT_SECONDS or prog.rows_done == N:
            commit()
            committed, last_commit = prog.rows_done, now
        if bar is not None:
            bar.update(n)
        _sleep_hook()
    if bar is not None:
        bar.close()


def _inplace_layout(path: Path, n_rows: int, G: int, gap: int, *, create: bool):
    """The single file of a whole build: an ``.npy`` header for (n_rows, G) float16, then
    ``gap`` float16 rows of room, then the float32 log1p rows of phase 1. Phase 2 writes the
    float16 rows from the header on, over pages phase 1 already filled (no second file, no
    fresh memory for it), and finally the file is cut to the float16 rows
    (:func:`_set_npy_rows`). Returns (float16 rows, float32 rows)."""
    if create:
        # float16 rows as the header says, then room for the rest: gap + 2 bytes per value
        tail = 2 * G * gap + 2 * G * n_rows
        expr = _NpyRows(path, (n_rows, G), np.float16, create=True, tail_bytes=tail)
    else:
        expr = _NpyRows(path)
    log1p = _NpyRows(path, (n_rows, G), np.float32, offset=expr.offset + 2 * G * gap)
    return expr, log1p


# ====================================================================== merge
def merge_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    durable: bool = False,
) -> Corpus:
    """Join the parts written by ``build_corpus(..., shard=(i, n))`` into one corpus.

    The training statistics are re-folded from the parts' float32 ``log1p.npy`` block by block
    in the order of a single build, so the result is byte-identical to building in one go
    (the manifest's ``build`` section aside). Parts must come from the same inputs and
    parameters, all ``n`` of them exactly once (any order). ``durable`` as in
    :func:`build_corpus`.
    """
    t0 = time.time()
    out = Path(out)
    _check_out(out, overwrite)
    parts = [CorpusPart.open(p) for p in parts]
    if not parts:
        raise ValueError("merge: no parts given")
    first = parts[0].manifest
    ident = ("reference", "parameters", "sources")
    for p in parts[1:]:
        for k in ident:
            if p.manifest[k] != first[k]:
                raise ValueError(
                    f"merge: {p.path} differs from {parts[0].path} in its {k!r}; parts must be "
                    "built from the same inputs with the same parameters"
                )
    n = first["shard"]["count"]
    idx = sorted(p.manifest["shard"]["index"] for p in parts)
    if idx != list(range(n)):
        raise ValueError(
            f"merge: parts cover shards {idx} of {n}; need each of 0…{n - 1} exactly once"
        )
    parts.sort(key=lambda p: p.manifest["shard"]["index"])
    key = {k: first[k] for k in ident}
    key["shard"] = None
    plan_key = dict(key)
    plan_key["merged_from"] = [str(p.path.resolve()) for p in parts]
    partial, old = _open_partial(out, plan_key, "corpus", overwrite)
    build = {"started": _now(), "resumed": 0, "merged_from": [str(p.path) for p in parts]}
    if old is not None:
        build = old.get("build", build)
        build["resumed"] = int(build.get("resumed", 0)) + 1
    manifest = _manifest(key, "corpus", {"plan": plan_key, "build": build})
    G = int(first["reference"]["n_genes"])
    prog = _Progress(partial / "progress.npz", G)
    files: list[_NpyRows] = []
    try:
        samples = [p.samples for p in parts]
        missing = parts[0].missing
        if old is None:
            shutil.copyfile(parts[0].path / "genes.tsv", partial / "genes.tsv")
            (partial / "missing.npy").write_bytes(_npy_bytes(missing))
        logs = [_NpyRows(p.path / "log1p.npy") for p in parts]
        files.extend(logs)
        segs = [(f, len(s)) for f, s in zip(logs, samples)]
        params = first["parameters"]
        if prog.phase == 1:
            all_samples = pd.concat(samples, ignore_index=True).drop(columns=["block"])
            if params["stats"] is None:
                for f, s in zip(logs, samples):
                    _refold(prog.stats, f, s, missing)
                n_train = int((all_samples["split"] == "train").sum())
                st = CorpusStats.from_gene_stats(prog.stats, first["reference"]["id"], n_train)
            else:
                st = CorpusStats.load(parts[0].path / "stats.npz")
            excl = [p.excluded for p in parts]
            excluded = pd.concat([e for e in excl if len(e)] or excl[:1], ignore_index=True)
            _write_corpus_tables(partial, all_samples, excluded, st)
            counts = all_samples["split"].value_counts()
            manifest["rows"] = {
                "input": int(len(all_samples) + len(excluded)),
                "passed_qc": int(len(all_samples)),
                "excluded": int(len(excluded)),
                **{k: int(counts.get(k, 0)) for k in SPLIT_NAMES},
            }
            prog.phase, prog.blocks_done, prog.rows_done = 2, 0, 0
            prog.commit()
            _write_atomic(partial / "manifest.json", _json_bytes(manifest))
        else:
            manifest["rows"] = old["rows"]
        st = CorpusStats.load(partial / "stats.npz")
        src_index = pd.read_csv(partial / "samples.tsv", sep="\t", usecols=["source_index"])
        N = int(sum(n for _, n in segs))

        def commit():
            if durable:
                for f in files:
                    f.sync()
            _stamp(manifest, durable)
            prog.commit()
            manifest["progress"] = {"phase": "standardize", "rows_done": prog.rows_done, "total": N}
            _write_atomic(partial / "manifest.json", _json_bytes(manifest))

        expr = _open_rows(partial / "expression.npy", (N, G), np.float16)
        files.append(expr)
        _standardize(
            segs,
            expr,
            src_index["source_index"].to_numpy(),
            st,
            missing,
            prog,
            int(params["block_size"]),
            commit,
            progress,
        )
        for f in files:
            f.close()
        manifest["progress"] = {"phase": "done"}
        manifest.pop("plan", None)
        manifest["files"] = _FILES
        manifest["missing_layout"] = "per-source"
        manifest["build"].pop("boot_id", None)
        manifest["build"].update(finished=_now(), seconds=round(time.time() - t0, 3))
        manifest["build"]["threads"] = None
        _write_atomic(partial / "manifest.json", _json_bytes(manifest))
        (partial / "progress.npz").unlink(missing_ok=True)
    except BaseException:
        for f in files:
            f.close()
        log.error("merge interrupted; rerun the same command to resume from %s", partial)
        raise
    _finish(partial, out, overwrite)
    return Corpus.open(out)


def _refold(stats: GeneStats, log1p: _NpyRows, samples: pd.DataFrame, missing) -> None:
    """Fold the training rows of a part into ``stats``, one source block at a time."""
    blocks = samples["block"].to_numpy()
    train = (samples["split"] == "train").to_numpy()
    src = samples["source_index"].to_numpy()
    if len(blocks) == 0:
        return
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(blocks)]):
        v = log1p.read(int(lo), int(hi - lo))
        bad = _fold(stats, v, ~missing[src[lo]], train[lo:hi])
        if bad >= 0:
            raise ValueError(f"{log1p.path}: row {int(lo) + bad} holds NaN/inf (corrupt part?)")


# ====================================================================== reading
class _Dir:
    path: Path
    manifest: dict

    @classmethod
    def _load_manifest(cls, path, kind: str) -> tuple[Path, dict]:
        p = Path(path)
        mf = p / "manifest.json"
        if not mf.exists():
            partial = p.with_name(p.name + ".partial")
            hint = f" (an unfinished build is at {partial}; rerun it)" if partial.exists() else ""
            raise FileNotFoundError(f"{p}: no manifest.json — not a bulkformer corpus{hint}")
        m = json.loads(mf.read_text())
        if m.get("format") != FORMAT:
            raise ValueError(f"{mf}: format {m.get('format')!r}, expected {FORMAT!r}")
        if int(m.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{mf}: format version {m['format_version']} is newer than this bulkformer "
                f"reads ({FORMAT_VERSION}); upgrade bulkformer"
            )
        if m.get("kind") != kind:
            what = (
                "a shard part (join parts with `bulkformer merge`)"
                if kind == "corpus"
                else ("a complete corpus, not a shard part")
            )
            raise ValueError(f"{p}: is {what}")
        return p, m

    def _read_samples(self, name="samples.tsv") -> pd.DataFrame:
        return pd.read_csv(
            self.path / name,
            sep="\t",
            dtype={"sample_id": str, "source": str, "label": str, "split": str},
            keep_default_na=False,
        )

    @property
    def missing(self) -> np.ndarray:
        """(n_sources, G) bool: reference genes each source lacks."""
        return np.load(self.path / "missing.npy")


class CorpusPart(_Dir):
    """One shard written by ``build_corpus(..., shard=(i, n))`` (input to :func:`merge_parts`)."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path) -> CorpusPart:
        return cls(*cls._load_manifest(path, "part"))

    @property
    def samples(self) -> pd.DataFrame:
        return self._read_samples()

    @property
    def excluded(self) -> pd.DataFrame:
        return self._read_samples("excluded.tsv")

    def describe(self) -> str:
        s = self.manifest["shard"]
        r = self.manifest["rows"]
        return (
            f"corpus part {s['index']}/{s['count']} at {self.path}: {r['passed_qc']:,} of "
            f"{r['input']:,} samples passed QC; join all parts with `bulkformer merge`"
        )


class Corpus(_Dir):
    """A finished corpus directory (see the module docstring for the files).

    Attributes are loaded lazily; :attr:`expression` is a read-only memmap.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self._cache: dict = {}

    @classmethod
    def open(cls, path: str | os.PathLike) -> Corpus:
        """Open a corpus directory written by :func:`build_corpus` or :func:`merge_parts`."""
        return cls(*cls._load_manifest(path, "corpus"))

    def __len__(self) -> int:
        return int(self.manifest["rows"]["passed_qc"])

    @property
    def n_genes(self) -> int:
        return int(self.manifest["reference"]["n_genes"])

    @property
    def expression(self) -> np.ndarray:
        """(N, G) float16 z-scores, memory-mapped read-only."""
        if "expression" not in self._cache:
            p = self.path / "expression.npy"
            self._cache["expression"] = np.load(p, mmap_mode="r") if len(self) else np.load(p)
        return self._cache["expression"]

    @property
    def samples(self) -> pd.DataFrame:
        """One row per expression row: sample_id, source_index, source, source_row, [label],
        split, nonzero_genes, total_counts."""
        if "samples" not in self._cache:
            self._cache["samples"] = self._read_samples()
        return self._cache["samples"]

    @property
    def excluded(self) -> pd.DataFrame:
        return self._read_samples("excluded.tsv")

    def missing_rows(self, rows=None) -> np.ndarray:
        """(n, G) bool missing-gene mask of expression rows ``rows`` (default all)."""
        src = self.samples["source_index"].to_numpy()
        return self.missing[src if rows is None else src[rows]]

    @property
    def stats(self) -> CorpusStats:
        return CorpusStats.load(self.path / "stats.npz")

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"}`` → int64 row indices."""
        with np.load(self.path / "splits.npz") as z:
            return {k: z[k] for k in SPLIT_NAMES}

    @property
    def reference(self) -> GeneReference:
        ref = GeneReference.from_tsv(self.path / "genes.tsv")
        ref.check_same(self.manifest["reference"]["id"], f"corpus {self.path}")
        return ref

    def to_anndata(self, rows=None):
        """Export rows (default all; a slice, indices or a split name) as an AnnData.

        ``X`` float32 z-scores; ``obs`` = samples table (index sample_id); ``var`` = genes
        (index gene_id) with the ``mean`` and ``std`` used; ``layers["missing"]`` bool;
        ``uns["bulkformer"]`` = reference id and corpus path.
        """
        import anndata as ad

        if isinstance(rows, str):
            rows = self.splits[rows]
        elif rows is None:
            rows = slice(None)
        obs = self.samples.iloc[rows].copy()
        obs.index = pd.Index(obs.pop("sample_id").astype(str), name="sample_id")
        X = np.asarray(self.expression[rows], dtype=np.float32)
        ref = self.reference
        st = self.stats
        var = ref.to_frame().set_index("gene_id")
        var["mean"], var["std"] = st.mean, st.std
        miss = self.missing_rows(np.arange(len(self))[rows])
        return ad.AnnData(
            X=X,
            obs=obs,
            var=var,
            layers={"missing": miss},
            uns={"bulkformer": {"reference_id": ref.id, "corpus": str(self.path)}},
        )

    def describe(self) -> str:
        """A human-readable summary (what ``bulkformer corpus info`` prints)."""
        m = self.manifest
        r = m["rows"]
        p = m["parameters"]
        lines = [
            f"bulkformer corpus {self.path} (format {m['format_version']})",
            f"  samples   {r['passed_qc']:,} kept of {r['input']:,} "
            f"({r['excluded']:,} excluded: fewer than {p['min_nonzero']:,} non-zero genes)",
            f"  splits    train {r['train']:,} / val {r['val']:,} / test {r['test']:,} "
            f"(seed {p['seed']}" + (f", stratified by {p['label']!r})" if p["label"] else ")"),
            f"  genes     {m['reference']['n_genes']:,} (reference {m['reference']['id']})",
            "  stats     "
            + (
                f"from the training split ({self.stats.n:,} rows)"
                if p["stats"] is None
                else f"given (reference {p['stats']['reference_id']}, {p['stats']['n']:,} rows)"
            ),
            f"  matrix    expression.npy float16 {r['passed_qc']:,} × {m['reference']['n_genes']:,}"
            f" ({r['passed_qc'] * m['reference']['n_genes'] * 2 / 1e9:.2f} GB)",
        ]
        for s in m["sources"]:
            lines.append(f"  source {s['index']}  {s['type']} {s['path']} ({s['n_samples']:,})")
            lines.append(f"            {s['alignment']['report']}")
        if p["label"]:
            vc = self.samples["label"].value_counts()
            top = ", ".join(f"{k or '<none>'} {v:,}" for k, v in vc.head(8).items())
            lines.append(f"  labels    {len(vc)} classes: {top}" + (" …" if len(vc) > 8 else ""))
        b = m.get("build", {})
        if "seconds" in b:
            secs = max(float(b["seconds"]), 1e-9)
            lines.append(
                f"  built     {b.get('finished', '?')} in {secs:.1f} s "
                f"({r['input'] / secs:,.0f} samples/s)"
                + (f", resumed {b['resumed']}×" if b.get("resumed") else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, n={len(self)}, genes={self.n_genes})"
