"""Low-level ``.npy`` I/O of a corpus build: row blocks, disk reservation, header surgery.

Private to :mod:`bulkformer.data.corpus`: the row memory-map class :class:`NpyRows` a build
writes through, :func:`open_rows` (open-or-create a build's file) and in-place ``.npy`` header
surgery (:func:`set_npy_rows`). The byte encodings every writer uses (``.npy``, ``.npz``
without timestamps, JSON, TSV) are public in :mod:`bulkformer._io`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import mmap
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def reserve(fd: int, size: int, path: Path) -> None:
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


def open_rows(path: Path, shape, dtype) -> NpyRows:
    """The ``.npy`` of a build in progress: opened when a resumed build left it, else created."""
    f = NpyRows(path) if path.exists() else NpyRows(path, shape, dtype, create=True)
    if f.shape != tuple(shape):
        raise OSError(f"{path} has shape {f.shape}, expected {tuple(shape)} (corrupt partial?)")
    return f


_mmap = mmap.mmap  # (a test replaces it to simulate a file system without shared maps)
_NO_MMAP_NOTED: set = set()


def _note_no_mmap(path: Path, err: Exception) -> None:
    if path.parent not in _NO_MMAP_NOTED:
        _NO_MMAP_NOTED.add(path.parent)
        log.info("%s cannot be memory-mapped (%s); reading and writing it with copies", path, err)


class NpyRows:
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
                reserve(f.fileno(), size, self.path)
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


def set_npy_rows(path: Path, n: int) -> None:
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
        buf = io.BytesIO()  # numpy's own header for the new shape (as NpyRows writes it) ...
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
