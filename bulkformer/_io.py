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
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["atomic_file", "fsync_dir", "replace_dir", "tmp_path", "write_atomic"]


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
