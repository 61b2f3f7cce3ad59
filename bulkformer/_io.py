"""Durable file and directory replacement: the one place writers of the package do it.

Every writer that must never leave a half-written file or directory behind goes through these
helpers: write to a temporary name next to the destination, flush (and fsync), then rename.

- :func:`write_atomic` replaces one file with new bytes (readers see the old or the new file,
  never a part of it); :func:`atomic_file` does the same for a writer that needs a path (h5py,
  safetensors, ``torch.save``).
- :func:`replace_dir` swaps a finished directory in for an existing one: the old directory is
  renamed aside, the new one renamed in, then the old one removed, so at every moment either the
  old or the new directory is complete under its own name.
- :func:`fsync_dir` makes renames inside a directory durable.
- :func:`npy_bytes`, :func:`npz_bytes`, :func:`json_bytes`, :func:`tsv_bytes`: deterministic
  encodings (equal inputs, equal bytes) of what writers store.
- :class:`DirLock` gives one process at a time the right to write a directory (a corpus build,
  a pretraining run): an advisory ``flock`` on ``DIR.lock`` next to it, non-blocking (a second
  writer fails at once with :class:`LockedError`) and released by the kernel when the holder
  dies, so a killed writer never leaves a stale lock.
- :func:`json_safe` turns non-finite floats into None before ``json.dumps(allow_nan=False)``;
  :func:`sha256_file` is the digest writers record and readers verify.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "DirLock",
    "LockedError",
    "atomic_file",
    "fsync_dir",
    "json_bytes",
    "json_safe",
    "npy_bytes",
    "npz_bytes",
    "replace_dir",
    "sha256_file",
    "tmp_path",
    "tsv_bytes",
    "write_atomic",
]

log = logging.getLogger(__name__)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (its entries: files created or renamed in it); a no-op where the
    platform has no directory file descriptors."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: str | os.PathLike, *, unique: bool = False) -> Path:
    """The temporary name ``path`` is written under: ``path.tmp`` (a rerun of the same writer
    overwrites what a killed one left), or with ``unique`` ``path.tmp-PID`` (concurrent writers
    of one path do not collide)."""
    p = Path(path)
    return p.with_name(p.name + (f".tmp-{os.getpid()}" if unique else ".tmp"))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, fsync: bool = True, unique: bool = False):
    """Yield a temporary path to write ``path`` through; on success it is fsync'd (unless
    ``fsync=False``) and renamed over ``path``, on failure removed. ``unique`` as in
    :func:`tmp_path`.

    Example: ``with atomic_file(out) as tmp: save_file(tensors, tmp)``.
    """
    tmp = tmp_path(path, unique=unique)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(
    path: str | os.PathLike, data: bytes, *, fsync: bool = True, unique: bool = False
) -> None:
    """Write ``data`` to ``path`` via a temporary file (fsync'd unless ``fsync=False``), then
    rename it over ``path``.

    Parameters
    ----------
    path : destination file; its directory must exist.
    data : the complete new contents.
    fsync : flush the data to the disk before the rename (the rename then never exposes an
        empty file after a crash).
    unique : temporary name per process (see :func:`tmp_path`).
    """
    tmp = tmp_path(path, unique=unique)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # e.g. a full disk in write/fsync
            raise OSError(e.errno, f"{path}: cannot write ({e.strerror or e})") from e
        raise


def replace_dir(
    new: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    fsync: bool = True,
    aside: str | os.PathLike | None = None,
) -> None:
    """Move the finished directory ``new`` to ``dest``, replacing what ``dest`` holds.

    When ``dest`` exists (a directory or a file) it is first renamed aside to
    ``aside`` (default ``dest.old-PID``), then ``new`` is renamed to ``dest``, then the old one
    is removed: a crash at any point leaves either the old or the new tree complete (the old
    one at its aside name only between the two renames); a failed second rename puts the old
    one back. ``fsync`` syncs ``new`` and the parent directory so the renames are durable.
    """
    new, dest = Path(new), Path(dest)
    if fsync:
        fsync_dir(new)
    if dest.exists() or dest.is_symlink():
        old = Path(aside) if aside is not None else dest.with_name(f"{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        try:
            os.replace(new, dest)
        except BaseException:
            os.replace(old, dest)  # put the old one back
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(new, dest)
    if fsync:
        fsync_dir(dest.parent)


# ====================================================================== directory lock
class LockedError(BlockingIOError):
    """Another process holds the :class:`DirLock` of a directory (its message names the
    directory, the lock file and, when known, the holder's pid and host)."""


class DirLock:
    """Exclusive, non-blocking lock of the directory ``path`` for one writer process.

    The lock is an advisory ``fcntl.flock`` on the file ``path.lock`` next to the directory
    (so it also covers ``path.partial`` and the moment ``path`` is swapped), taken for as long
    as the writer runs. A second writer gets :class:`LockedError` at once, naming the holder
    (pid, host and start time, which the holder writes into the lock file). The kernel drops
    the lock when the holder exits or is killed (``kill -9``): the next writer takes it over
    without any cleanup. On a clean release the lock file is removed.

    Use as a context manager, or call :meth:`acquire` / :meth:`release`::

        with DirLock(run_dir, what="pretraining run"):
            ...  # write run_dir

    Parameters
    ----------
    path : the directory to guard (it need not exist yet).
    what : what is written there, for the message (``"corpus build"``).

    On a file system without ``flock`` support the writer goes ahead unlocked (logged).
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "writer"):
        self.path = Path(os.path.abspath(path))
        if not self.path.name:
            raise ValueError(f"{path}: cannot lock the file system root")
        self.lockfile = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        """Take the lock; :class:`LockedError` at once when another process holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            log.warning("no fcntl on this platform: %s is written without a lock", self.path)
            return self
        if self._fd is not None:
            raise RuntimeError(f"{self.lockfile} is already held by this DirLock")
        # the directory's parent may not exist yet (``--out new/dir``): writers create it
        self.lockfile.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.path} is being written by another {self.what}"
                    + (f" ({holder})" if holder else "")
                    + f"; it holds the lock {self.lockfile}. Wait for it to finish (or stop it), "
                    "then rerun; two writers of one directory would corrupt it"
                ) from None
            except OSError as e:  # pragma: no cover - a file system without flock
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.close(fd)
                    log.warning(
                        "%s: cannot lock (%s); writing %s unlocked", self.lockfile, e, self.path
                    )
                    return self
                os.close(fd)
                raise
            # a holder that released removed the file: the lock on the old inode guards nothing
            try:
                st = os.stat(self.lockfile)
                same = (st.st_ino, st.st_dev) == os.fstat(fd)[1:3]
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = (
            f"pid {os.getpid()} on host {socket.gethostname()}, "
            f"since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file (a no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # removed while still held: see acquire
            self.lockfile.unlink()
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:  # pragma: no cover
        return ""


# ====================================================================== byte encodings
# Deterministic encodings: equal inputs give equal bytes (no timestamps), so rebuilt or resumed
# outputs can be compared byte for byte. Written with :func:`write_atomic`.
def npz_bytes(**arrays) -> bytes:
    """An ``.npz`` (readable by ``np.load``) without timestamps, so equal inputs → equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, b.getvalue())
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    """JSON, indented, keys in insertion order, newline-terminated."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def tsv_bytes(df) -> bytes:
    """A pandas DataFrame as tab-separated text, no index, ``\\n`` line ends."""
    return df.to_csv(sep="\t", index=False, lineterminator="\n").encode()


def npy_bytes(arr) -> bytes:
    """An array as ``.npy`` bytes (C order, no pickles)."""
    b = io.BytesIO()
    np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
    return b.getvalue()


def json_safe(obj):
    """``obj`` (nested dicts, lists, tuples) with every non-finite float replaced by None, for
    ``json.dumps(..., allow_nan=False)``: JSON has no NaN or infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
