"""torch.distributed for training: set-up from torchrun's environment, model wrapping, full
state dicts.

One process: nothing is initialised and the model is not wrapped. Under ``torchrun``
(``WORLD_SIZE`` > 1) the default process group is initialised with NCCL on CUDA devices and gloo
on CPU, single- or multi-node alike, and the model is wrapped in DDP or sharded with FSDP2
(:func:`wrap_model`). Checkpoints always hold full (unsharded) state dicts
(:func:`full_state_dicts`, :func:`load_full_state_dicts`), loadable without a process group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._device import resolve_device

__all__ = [
    "DistInfo",
    "all_reduce",
    "full_state_dicts",
    "load_full_state_dicts",
    "resolve_device",
    "setup_distributed",
    "teardown_distributed",
    "wrap_model",
]

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


def all_reduce(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (a no-op in one process); returns ``t``."""
    if info.distributed:
        dist.all_reduce(t)
    return t


def wrap_model(model: torch.nn.Module, info: DistInfo, mode: str) -> tuple[torch.nn.Module, bool]:
    """``(module to train, is_fsdp)``: the model itself in one process; under torchrun
    ``DistributedDataParallel`` (``mode`` "auto" or "ddp") or, for "fsdp", the model sharded in
    place with FSDP2 (``fully_shard``: one unit per encoder block, then the rest)."""
    if not info.distributed:
        if mode in ("ddp", "fsdp"):
            log.info("--%s with a single process: running without a wrapper", mode)
        return model, False
    if mode == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard

        for block in model.encoder.blocks:
            fully_shard(block)
        fully_shard(model)
        return model, True
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids), False


def full_state_dicts(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo, fsdp: bool
) -> tuple[dict | None, dict | None]:
    """``(model state dict, optimizer state dict)``, full and on CPU. Under FSDP every rank
    takes part in the gather and only rank 0 gets them (None elsewhere)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        o = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=o)
        osd = get_optimizer_state_dict(model, optimizer, options=o)
        return (msd, osd) if info.is_main else (None, None)
    msd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return msd, optimizer.state_dict()


def load_full_state_dicts(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict, fsdp: bool
) -> None:
    """Load full state dicts (of :func:`full_state_dicts`) into a plain or FSDP2 model."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        o = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, msd, options=o)
        set_optimizer_state_dict(model, optimizer, osd, options=o)
    else:
        model.load_state_dict(msd)
        optimizer.load_state_dict(osd)
