"""The progress record of a build or merge in ``OUT.partial`` and whether it can be resumed.

:class:`Progress` is ``progress.npz`` (replaced atomically at every commit); :func:`stamp`
records in the manifest how the data of the next commit was written (``durable``, the boot);
:func:`resumable` decides from that whether an interrupted build's data can be trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..._io import npz_bytes, write_atomic
from ..normalize import GeneStats

log = logging.getLogger(__name__)


def boot_id() -> str | None:
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


def resumable(old: dict, partial: Path) -> bool:
    """Whether the data an interrupted build committed can be trusted.

    A process kill loses nothing the build wrote (the kernel still holds it), so a build
    committed without fsync resumes on the same boot. After a reboot (crash, power loss) only a
    ``durable`` build's commits (data fsync'd before progress) are known to be on disk.
    """
    b = old.get("build", {})
    if b.get("durable"):
        return True
    boot = boot_id()
    if boot is not None and b.get("boot_id") == boot:
        return True
    log.warning(
        "%s was left by a build that did not fsync its data (durable=False) and the machine "
        "has restarted since (or its boot cannot be identified): what it wrote may not have "
        "reached the disk, so the build starts over",
        partial,
    )
    return False


class Progress:
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
        write_atomic(
            self.path,
            npz_bytes(
                phase=np.int64(self.phase),
                blocks_done=np.int64(self.blocks_done),
                rows_written=np.int64(self.rows_written),
                rows_done=np.int64(self.rows_done),
                stats=self.stats.as_array(),
            ),
        )


def stamp(manifest: dict, durable: bool) -> None:
    """Record how the data of the next commit was written (see :func:`_resumable`)."""
    manifest.setdefault("build", {}).update(durable=bool(durable), boot_id=boot_id())


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=" samples", smoothing=0.1)
