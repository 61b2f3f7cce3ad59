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
- :func:`exclusive_lock` holds an advisory lock so that two processes never write one output.
- :func:`json_safe` turns non-finite floats into None before ``json.dumps(allow_nan=False)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
from pathlib import Path

__all__ = [
    "LockedError",
    "atomic_file",
    "exclusive_lock",
    "fsync_dir",
    "json_safe",
    "replace_dir",
    "sha256_file",
    "tmp_path",
    "write_atomic",
]


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
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
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


class LockedError(OSError):
    """Another process holds the lock of an output (see :func:`exclusive_lock`)."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "output"):
    """Hold an exclusive advisory lock (``fcntl.flock``) on the file ``path`` (created; it
    holds the owner's pid) for the ``with`` block; fails at once when another process holds it.

    The lock dies with its process (``kill -9`` included), so a stale lock file never blocks a
    later run. Where ``fcntl`` does not exist the block runs unlocked.

    Raises
    ------
    LockedError
        Another live process holds the lock; the message names ``what``, ``path`` and its pid.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    p = Path(path)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LockedError(
                f"{what} {p.parent} is in use by another process (pid {owner}, lock {p}): wait "
                "for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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
