"""Safety of a writer's output directory: one writer at a time, and ``overwrite`` replaces only
what a bulkformer writer made.

Every writer of a corpus directory (:func:`~bulkformer.data.corpus.build_corpus`,
:func:`~bulkformer.data.corpus.merge_parts`, :func:`~bulkformer.data.derive.derive_corpus`)
goes through :func:`output_lock` and :func:`check_out`:

- :func:`check_out` refuses an output that is, or lies above, one of the writer's inputs, the
  current directory or one above it, and (with ``overwrite``) anything that is not a bulkformer
  corpus, part or partial build, recognised by its ``manifest.json`` and by holding only the
  files such a directory holds;
- :func:`output_lock` holds :class:`bulkformer._io.DirLock` on the output for the whole run, so
  a second writer of the same output fails at once instead of "resuming" the live build.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..._io import DirLock
from .reader import FORMAT

#: the names a build, merge or derive writes inside a corpus, part or ``.partial`` directory
CORPUS_DIR_FILES = frozenset(
    {
        "manifest.json",
        "genes.tsv",
        "samples.tsv",
        "excluded.tsv",
        "expression.npy",
        "missing.npy",
        "stats.npz",
        "splits.npz",
        "log1p.npy",
        "qc_nonzero.npy",
        "qc_total.npy",
        "progress.npz",
    }
)


def _ours(name: str) -> bool:
    """A file a writer puts in a corpus directory (or its temporary ``NAME.tmp[-PID]``)."""
    return name.split(".tmp", 1)[0] in CORPUS_DIR_FILES


def foreign_entries(d: Path) -> list[str]:
    """Entries of directory ``d`` that no bulkformer corpus writer makes (sorted)."""
    return sorted(p.name for p in d.iterdir() if not _ours(p.name) or p.is_dir())


def corpus_manifest(d: Path) -> dict | None:
    """The manifest of ``d`` when it is a bulkformer corpus / part / partial build, else None."""
    try:
        m = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def not_replaceable(d: Path) -> str | None:
    """Why ``overwrite`` must not delete the existing ``d`` (None: it is a bulkformer corpus,
    part or partial build holding nothing else)."""
    if d.is_symlink() or not d.is_dir():
        return "is not a directory"
    if corpus_manifest(d) is None:
        return f"is not a bulkformer corpus (no manifest.json of format {FORMAT!r})"
    extra = foreign_entries(d)
    if extra:
        shown = ", ".join(extra[:3]) + (" …" if len(extra) > 3 else "")
        return f"holds files a corpus does not ({shown})"
    return None


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(p))


def check_out(
    out: str | os.PathLike,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    what: str = "--out",
) -> Path:
    """Check that ``out`` may be written (and, with ``overwrite``, replaced); returns it as a
    :class:`Path`.

    Raises
    ------
    ValueError
        ``out`` is the current directory or one above it, the file system root, an input or a
        directory that holds one (``inputs``: files or directories the writer reads), or lies
        inside an input directory.
    FileExistsError
        ``out`` exists and ``overwrite`` is false, or it exists and is not a bulkformer corpus
        (or holds other files too): ``overwrite`` never deletes what a corpus writer did not
        make.
    """
    out = Path(out)
    real = _real(out)
    if not Path(os.path.abspath(out)).name or real == real.parent:
        raise ValueError(f"{what} {out}: cannot write a corpus over the file system root")
    cwd = _real(os.getcwd())
    if real == cwd or real in cwd.parents:
        raise ValueError(
            f"{what} {out} is the current directory or one above it; name a new directory "
            f"for the corpus (e.g. {what} my_corpus)"
        )
    for inp in inputs:
        if inp is None:
            continue
        r = _real(inp)
        if r == real or real in r.parents:
            raise ValueError(
                f"{what} {out} {'is' if r == real else 'holds'} the input {inp}; writing there "
                "would destroy it: choose another output"
            )
        if r.is_dir() and r in real.parents:
            raise ValueError(
                f"{what} {out} lies inside the input directory {inp}; choose an output outside it"
            )
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"{out} already exists; choose another output or pass overwrite=True "
                "(--overwrite) to replace it"
            )
        why = not_replaceable(out)
        if why is not None:
            raise FileExistsError(
                f"{out} {why}; --overwrite only replaces a bulkformer corpus, so nothing was "
                "deleted: remove it yourself or choose another output"
            )
    return out


def output_lock(out: str | os.PathLike, what: str = "corpus build") -> DirLock:
    """The lock a writer of corpus directory ``out`` holds while it runs (``with``)."""
    return DirLock(out, what=what)


def discard_partial(partial: Path) -> None:
    """Remove the ``.partial`` directory a writer left, if it is one (a bulkformer manifest, or
    only files a writer makes); refuse (FileExistsError, nothing deleted) otherwise."""
    if not (partial.exists() or partial.is_symlink()):
        return
    if partial.is_symlink() or not partial.is_dir() or foreign_entries(partial):
        raise FileExistsError(
            f"{partial} {not_replaceable(partial)}, so it is not an unfinished bulkformer "
            "output; nothing was deleted: move it away or choose another output"
        )
    shutil.rmtree(partial)
