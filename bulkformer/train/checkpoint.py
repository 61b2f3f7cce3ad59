"""Training checkpoints: written atomically, kept K deep, refused when the run changed.

Layout under the run directory::

    checkpoints/step-00000200/state.pt    torch.save of the full training state (below)
    checkpoints/step-00000200/meta.json   step, time, loss, fingerprint (for humans and tools)

A checkpoint is written into ``checkpoints/.tmp-step-…-<pid>/``, each file fsync'd, then the
directory is renamed to ``step-…`` (atomic on POSIX) and the parent fsync'd. A process killed
at any moment (``kill -9`` included) leaves either the new checkpoint complete or no new
checkpoint at all; the previous ones stay valid. Leftover ``.tmp-*`` directories are removed by
the next run.

``state.pt`` holds: ``model`` (full state dict), ``optimizer``, ``scheduler``, ``step``,
``data`` (epoch, batch index, block order of the epoch), ``rng`` (one dict per rank: python,
numpy, torch CPU, CUDA, masking generator), ``fingerprint`` (what must not change on resume),
``config`` and ``options``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .._io import replace_dir

__all__ = [
    "CheckpointMismatchError",
    "checkpoint_dir",
    "compare_fingerprints",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
META_NAME = "meta.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")


class CheckpointMismatchError(ValueError):
    """A resumed run differs from the checkpoint it resumes (refused unless forced)."""


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
    """Write ``state`` (``torch.save``) and ``meta`` (JSON) as checkpoint ``step`` atomically;
    returns the checkpoint directory. An existing checkpoint of the same step is replaced."""
    d = checkpoint_dir(run)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step-{step:08d}"
    tmp = d / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / STATE_NAME, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / META_NAME, "w") as f:
        json.dump(meta, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    # an existing checkpoint of this step (e.g. the final one after a resume) is swapped out
    replace_dir(tmp, final, aside=d / f".tmp-old-{step:08d}-{os.getpid()}")
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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The training state of a checkpoint directory (or of a run: its newest checkpoint)."""
    p = Path(path)
    if not (p / STATE_NAME).is_file():
        found = list_checkpoints(p)
        if not found:
            raise FileNotFoundError(f"{p}: no checkpoint (expected {STATE_NAME} or checkpoints/)")
        p = found[-1][1]
    state = torch.load(p / STATE_NAME, map_location=map_location, weights_only=False)
    state["path"] = str(p)
    return state


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
