"""Durable file and directory replacement: the one place writers of the package do it.

Every writer that must never leave a half-written file or directory behind goes through these
helpers: write to a temporary name next to the destination, flush (and fsync), then rename.

- :func:`write_atomic` replaces one file with new bytes (readers see the old or the new file,
  never a part of it).
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

__all__ = ["fsync_dir", "write_atomic", "replace_dir", "tmp_path"]


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


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`write_atomic` writes ``path`` under (``path.tmp``)."""
    p = Path(path)
    return p.with_name(p.name + ".tmp")


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file (fsync'd unless ``fsync=False``), then
    rename it over ``path``.

    Parameters
    ----------
    path : destination file; its directory must exist.
    data : the complete new contents.
    fsync : flush the data to the disk before the rename (the rename then never exposes an
        empty file after a crash).
    """
    tmp = tmp_path(path)
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


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike, *, fsync: bool = True) -> None:
    """Move the finished directory ``new`` to ``dest``, replacing what ``dest`` holds.

    When ``dest`` exists (a directory or a file) it is first renamed aside to
    ``dest.old-PID``, then ``new`` is renamed to ``dest``, then the old one is removed: a crash
    at any point leaves either the old or the new tree complete (the old one at its
    aside name only between the two renames). ``fsync`` syncs ``new`` and the parent directory
    so the renames are durable.
    """
    new, dest = Path(new), Path(dest)
    if fsync:
        fsync_dir(new)
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
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

