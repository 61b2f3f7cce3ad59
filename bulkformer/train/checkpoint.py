"""Training checkpoints: written atomically, kept K deep, refused when the run changed.

Layout under the run directory::

    checkpoints/step-00000200/state.pt    torch.save of the full training state (below)
    checkpoints/step-00000200/meta.json   step, time, loss, fingerprint (for humans and tools)

A checkpoint is written into ``checkpoints/.tmp-step-…-<pid>/``, each file fsync'd, then the
directory is renamed to ``step-…`` (atomic on POSIX) and the parent fsync'd. A process killed
at any moment (``kill -9`` included) leaves either the new checkpoint complete or no new
checkpoint at all; the previous ones stay valid. Leftover ``.tmp-*`` directories are removed by
the next run.

``state.pt`` holds: ``format`` (:data:`STATE_FORMAT`), ``model`` (full state dict),
``optimizer``, ``scheduler``, ``step``, ``data`` (epoch, batch index, block order of the epoch),
``rng`` (one dict per rank: python, numpy, torch CPU, CUDA, masking generator), ``fingerprint``
(what must not change on resume), ``config`` and ``options``: tensors and plain containers of
numbers and strings only, so it is read with ``torch.load(weights_only=True)`` and loading it
never runs code. ``meta.json`` records the ``sha256`` of ``state.pt``, checked before loading.

Safety and damage:

- A ``state.pt`` that ``weights_only=True`` refuses (pickled objects: the checkpoints of
  bulkformer before format 2, which held numpy arrays, or a planted payload) raises
  :class:`UnsafeCheckpointError`; ``trust=True`` (``pretrain --trust-checkpoint``) loads it
  with full unpickling, for files the user wrote themselves.
- A damaged ``state.pt`` (digest mismatch, truncated, unreadable) raises
  :class:`CorruptCheckpointError`; :func:`load_latest` then falls back to the previous
  checkpoint with a warning naming the damaged one.
- A failed write (a full disk) raises :class:`CheckpointWriteError` (an ``OSError``) naming the
  path; the temporary directory is removed and the older checkpoints stay as they were.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .._io import json_safe, replace_dir, sha256_file

__all__ = [
    "rng_state",
    "set_rng_state",
    "STATE_FORMAT",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_dir",
    "compare_fingerprints",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "prune_checkpoints",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
META_NAME = "meta.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")
#: version of the ``state.pt`` layout: 2 = loadable with ``weights_only=True``
STATE_FORMAT = 2


class CheckpointMismatchError(ValueError):
    """A resumed run differs from the checkpoint it resumes (refused unless forced)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's ``state.pt`` is damaged: digest mismatch, truncated or unreadable."""


class UnsafeCheckpointError(CheckpointError):
    """A ``state.pt`` holds pickled objects (an older bulkformer's format, or a planted
    payload): refused, because loading it would run code from the file."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the older ones are intact."""


def checkpoint_dir(run: str | os.PathLike) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    d = checkpoint_dir(run)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_NAME).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(run: str | os.PathLike, step: int, state: dict, meta: dict) -> Path:
    """Write ``state`` (``torch.save``) and ``meta`` (JSON, plus the ``sha256`` of
    ``state.pt`` and the ``format``) as checkpoint ``step`` atomically; returns the checkpoint
    directory. An existing checkpoint of the same step is replaced.

    Raises
    ------
    CheckpointWriteError
        Writing failed (a full disk, ...): the temporary directory is removed, the existing
        checkpoints are untouched.
    """
    d = checkpoint_dir(run)
    final = d / f"step-{step:08d}"
    tmp = d / f".tmp-step-{step:08d}-{os.getpid()}"
    state = {**state, "format": STATE_FORMAT}
    target = tmp / STATE_NAME
    try:
        d.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        with open(target, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {**meta, "format": STATE_FORMAT, "state_sha256": sha256_file(target)}
        target = tmp / META_NAME
        text = json.dumps(json_safe(meta), indent=1, default=str, allow_nan=False)
        with open(target, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        target = final
        # an existing checkpoint of this step (e.g. the final one after a resume) is swapped
        replace_dir(tmp, final, aside=d / f".tmp-old-{step:08d}-{os.getpid()}")
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "writ" not in str(e).lower():
            raise  # not an I/O failure of torch's writer
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        err = CheckpointWriteError(
            f"cannot write checkpoint {final.name}: {target}: {reason}; the older checkpoints "
            f"in {d} are intact (free disk space, then rerun with --resume)"
        )
        err.errno = getattr(e, "errno", None)
        raise err from e
    return final


def prune_checkpoints(run: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (and stale ``.tmp-*`` directories
    of dead writers); returns what was removed. ``keep_last <= 0`` keeps all."""
    removed = []
    d = checkpoint_dir(run)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if p.name.startswith(".tmp-") and not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if keep_last > 0:
        for _, p in list_checkpoints(run)[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, trust: bool = False) -> dict:
    """The training state of a checkpoint directory (or of a run: its newest checkpoint).

    ``state.pt`` is checked against the digest in ``meta.json`` (when recorded) and read with
    ``torch.load(weights_only=True)``; ``trust=True`` also reads files that need full
    unpickling (checkpoints of older bulkformer versions), which runs code from the file.

    Raises
    ------
    CorruptCheckpointError
        The file's digest differs from ``meta.json``'s, or it cannot be read.
    UnsafeCheckpointError
        The file holds pickled objects (older format or a planted payload) and not ``trust``.
    """
    p = Path(path)
    if not (p / STATE_NAME).is_file():
        found = list_checkpoints(p)
        if not found:
            raise FileNotFoundError(f"{p}: no checkpoint (expected {STATE_NAME} or checkpoints/)")
        p = found[-1][1]
    f = p / STATE_NAME
    try:
        meta = json.loads((p / META_NAME).read_text())
    except (OSError, ValueError):
        meta = {}
    expected = meta.get("state_sha256") if isinstance(meta, dict) else None
    if expected is not None and (actual := sha256_file(f)) != expected:
        raise CorruptCheckpointError(
            f"{f}: corrupt (sha256 {actual}, expected {expected} from {p / META_NAME})"
        )
    try:
        state = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CorruptCheckpointError(f"{f}: corrupt ({_first_line(e)})") from e
        if not trust:
            why = next((ln for ln in str(e).splitlines() if "Unsupported" in ln), "")
            raise UnsafeCheckpointError(
                f"{f}: refused: it holds pickled objects that loading would execute "
                f"({why.strip() or 'not plain data'}). It was written by an older bulkformer "
                "(before checkpoint format 2) or it is not a bulkformer checkpoint. Start a new "
                "run (--force), or, only if you wrote this file yourself, pass "
                "--trust-checkpoint"
            ) from None
        log.warning("%s: loading with full unpickling (--trust-checkpoint)", f)
        state = torch.load(f, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or damaged zip (RuntimeError, OSError, EOFError, ...)
        raise CorruptCheckpointError(f"{f}: corrupt or truncated ({_first_line(e)})") from e
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CorruptCheckpointError(f"{f}: not a bulkformer training state")
    state["path"] = str(p)
    return state


def load_latest(run: str | os.PathLike, map_location="cpu", *, trust: bool = False) -> dict:
    """The newest checkpoint of ``run`` that loads; a damaged newer one is skipped with a
    warning naming it (unsafe ones are never skipped: :class:`UnsafeCheckpointError`).

    Raises
    ------
    FileNotFoundError
        The run has no checkpoint.
    CorruptCheckpointError
        Every checkpoint is damaged.
    """
    found = list_checkpoints(run)
    if not found:
        raise FileNotFoundError(f"{checkpoint_dir(run)}: no checkpoint")
    errors = []
    for _, p in reversed(found):
        try:
            state = load_checkpoint(p, map_location, trust=trust)
        except CorruptCheckpointError as e:
            log.warning("%s: falling back to the previous checkpoint", e)
            errors.append(str(e))
            continue
        if errors:
            log.warning("resuming from %s, the newest valid checkpoint", p)
        return state
    raise CorruptCheckpointError(
        f"{checkpoint_dir(run)}: none of the {len(found)} checkpoint(s) is valid ("
        + "; ".join(errors)
        + "): start the run over with --force"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def compare_fingerprints(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two run fingerprints (empty when equal)."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in compare_fingerprints(a, b)]
        elif _norm(a) != _norm(b):
            diffs.append(f"{key}: checkpoint {a!r} → now {b!r}")
    return diffs


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def rng_state(masker) -> dict:
    """The RNG states as tensors and plain containers (``torch.load(weights_only=True)``)."""
    npst = np.random.get_state(legacy=False)  # MT19937: {"key": uint32 (624,), "pos": int}
    s = {
        "python": random.getstate(),  # (version, 625 ints, gauss_next)
        "numpy": {
            "bit_generator": npst["bit_generator"],
            "key": torch.from_numpy(npst["state"]["key"].astype(np.int64)),
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "masker": masker.get_state().cpu(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict, masker) -> None:
    random.setstate(_tuples(s["python"]))
    n = s["numpy"]
    if isinstance(n, dict):
        key = n["key"].numpy().astype(np.uint32)
        np.random.set_state((n["bit_generator"], key, n["pos"], n["has_gauss"], n["gauss"]))
    else:  # a trusted checkpoint of format 1 (a numpy state tuple)
        np.random.set_state(n)
    torch.set_rng_state(s["torch"])
    masker.set_state(s["masker"].to(masker.get_state().device))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _tuples(v):
    """Lists back to tuples (``random.setstate`` wants tuples)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v
