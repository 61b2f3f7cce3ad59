"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

One process: nothing is initialised. Under ``torchrun`` (``WORLD_SIZE`` > 1) the default process
group is initialised with NCCL on CUDA devices and gloo on CPU, single- or multi-node alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._device import resolve_device

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process stands in the job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized_here: bool  # we created the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Initialise torch.distributed from torchrun's environment variables when
    ``WORLD_SIZE`` > 1 (reusing an existing process group), and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        here = True
        log.info("rank %d/%d: process group initialised (%s) on %s", rank, world, backend, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev, here)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
