"""Masked-gene pretraining of BulkFormer on a corpus: one process, or many under torchrun.

Per optimizer step, for each of ``accum`` micro-batches::

    x (b, G) float16 rows of this rank ──► device, float32       # data.BatchLoader (prefetched)
    missing (b, G) = corpus.missing[source]                      # on the device
    masked  (b, G) = (U(0,1) < mask_fraction) & ~missing         # data.Masker, on the device
    pred = model(x, missing=missing, masked=masked).pred         # bf16 autocast on CUDA
    loss = Σ_masked (pred − x)² / (masked count over all ranks)  # exact global mean
           [+ w · InfoNCE(pool(view 1), pool(view 2))]           # optional, off by default

then gradient clipping, AdamW (no weight decay on biases, norms and embedding vectors), and a
linear-warmup + cosine schedule (down to ``min_lr_ratio · lr``). The loss is normalised by the
masked count of the whole *global* batch, so DDP over n ranks with batch b computes the same
gradients as one process with batch n·b (up to summation order).

Everything a run needs to continue exactly is checkpointed (:mod:`.checkpoint`); a resumed run
reproduces the loss curve of an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.corpus import Corpus
from ..data.genes import ReferenceMismatchError
from ..model import BulkFormer, BulkFormerConfig
from . import checkpoint as ckpt
from .data import BatchLoader, BlockOrder, Masker
from .distributed import DistInfo, setup_distributed, teardown_distributed
from .monitor import MetricsLog, plot_loss_curve
from .objectives import pretrain_sse

__all__ = [
    "PretrainOptions",
    "PretrainResult",
    "NonFiniteLossError",
    "pretrain",
    "resolve_config",
    "lr_at",
]

log = logging.getLogger(__name__)

#: config fields that only change how a step runs, not what it computes
RUNTIME_CONFIG_FIELDS = ("activation_checkpointing", "attn_backend", "embed_backend")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before that update."""


@dataclass(frozen=True)
class PretrainOptions:
    """Options of :func:`pretrain` (the CLI flags of ``bulkformer pretrain``)."""

    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 8  # samples per rank per micro-batch (global batch = × world × accum)
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio at the last step
    warmup: float = 0.05  # warmup steps: a fraction of `steps` when < 1, else a step count
    weight_decay: float = 0.05  # AdamW decoupled weight decay (matrices only)
    betas: tuple[float, float] = (0.9, 0.95)
    accum: int = 1  # micro-batches per optimizer step
    clip: float = 1.0  # gradient-norm clip (0: off; the norm is still logged)
    mask_fraction: float = 0.15  # share of observed genes masked per sample
    contrastive_weight: float = 0.0  # weight of the two-view InfoNCE term (0: off)
    contrastive_temperature: float = 0.1
    val_every: int = 200  # validate every N steps (and at the end; 0: only at the end)
    val_max_samples: int = 0  # cap the validation rows (0: the whole val split)
    ckpt_every: int = 500  # checkpoint every N steps (and at the end)
    keep_last: int = 3  # checkpoints kept (0: all)
    log_every: int = 10  # training rows in metrics.csv every N steps
    seed: int = 0
    workers: int = 2  # reader threads of the data loader
    threads: int = 0  # torch intra-op CPU threads (0: leave torch's setting)
    prefetch: int = 4  # batches read ahead
    block_rows: int = 1024  # rows per shuffle block
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"
    compile: bool = False  # torch.compile the model
    checkpointing: bool = False  # activation checkpointing (overrides the config's flag)
    distributed: str = "auto"  # "auto" (= ddp under torchrun) | "ddp" | "fsdp"
    resume: bool = False  # continue from the newest checkpoint in `out`
    force: bool = False  # resume even if the run's settings changed; overwrite an old run
    progress: bool = True  # tqdm progress bar (rank 0)
    tensorboard: bool | None = None  # None: when installed
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU (0: $BULKFORMER_PEAK_FLOPS or H100)

    # options that change the trajectory: a resume with any of them changed is refused
    TRAJECTORY = (
        "steps",
        "batch_size",
        "lr",
        "min_lr_ratio",
        "warmup",
        "weight_decay",
        "betas",
        "accum",
        "clip",
        "mask_fraction",
        "contrastive_weight",
        "contrastive_temperature",
        "seed",
        "block_rows",
        "precision",
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"pretrain: {name} must be a positive integer, got {v!r}")
        if not 0.0 < self.mask_fraction < 1.0:
            raise ValueError(f"pretrain: mask_fraction must be in (0, 1), got {self.mask_fraction}")
        if self.lr <= 0 or self.warmup < 0 or self.contrastive_weight < 0:
            raise ValueError("pretrain: lr must be > 0, warmup and contrastive_weight >= 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"pretrain: precision must be auto|bf16|fp32, got {self.precision!r}")
        if self.distributed not in ("auto", "ddp", "fsdp"):
            raise ValueError(
                f"pretrain: distributed must be auto|ddp|fsdp, got {self.distributed!r}"
            )

    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps)) if self.warmup < 1 else int(self.warmup)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (on every rank; paths are written by rank 0)."""

    out: Path  # run directory
    pretrained: Path | None  # export_pretrained directory (out/pretrained)
    checkpoint: Path | None  # newest checkpoint
    steps: int  # optimizer steps done
    train_loss: float  # mean training loss over the last logging window
    val_mse: float | None  # masked MSE on the val split at the end
    val_baseline: float | None  # gene-mean baseline (predict z = 0) on the same positions
    tokens_per_s: float  # global tokens/s over the whole loop (validation, checkpoints included)
    metrics: Path  # metrics.csv
    config: BulkFormerConfig = None  # type: ignore[assignment]
    history: list = field(default_factory=list)  # the val rows of metrics.csv


def lr_at(step: int, opts: PretrainOptions) -> float:
    """Learning-rate multiplier (of ``opts.lr``) at optimizer step ``step`` (0-based): linear
    warmup over ``warmup_steps`` then cosine from 1 to ``min_lr_ratio`` at the last step."""
    w = opts.warmup_steps()
    if step < w:
        return (step + 1) / w
    span = max(1, opts.steps - w - 1)
    t = min(1.0, (step - w) / span)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


# ====================================================================== set-up helpers
def resolve_config(config, corpus: Corpus, *, d_esm: int | None = None) -> BulkFormerConfig:
    """A BulkFormerConfig for ``corpus``: from a preset name, a JSON path / text, or a config.

    Presets get the corpus' ``n_genes`` and ``reference_id`` (and ``d_esm`` of the ESM2
    matrix when given). A given config must agree with the corpus: same ``n_genes``, and
    ``reference_id`` equal to the corpus' (or None, then set).

    Raises
    ------
    ReferenceMismatchError
        The config names another gene reference than the corpus.
    ValueError
        The config's ``n_genes`` or ``d_esm`` disagree with the corpus / ESM2 matrix.
    """
    ref_id, G = corpus.manifest["reference"]["id"], corpus.n_genes
    if isinstance(config, BulkFormerConfig):
        cfg, where = config, "the given config"
    elif isinstance(config, str) and config in _presets():
        over = dict(n_genes=G, reference_id=ref_id)
        if d_esm is not None:
            over["d_esm"] = d_esm
        return BulkFormerConfig.from_preset(config, **over)
    elif isinstance(config, (str, os.PathLike)):
        if isinstance(config, str) and not config.lstrip().startswith("{"):
            if not Path(config).exists():
                raise ValueError(
                    f"--config {config!r}: neither a preset ({', '.join(sorted(_presets()))}) "
                    "nor an existing JSON file"
                )
        cfg, where = BulkFormerConfig.from_json(config), f"config {config}"
    else:
        raise TypeError(
            f"config must be a preset name, a JSON path or a BulkFormerConfig: {config}"
        )
    if cfg.reference_id is not None and cfg.reference_id != ref_id:
        raise ReferenceMismatchError(
            f"{where} is for gene reference {cfg.reference_id!r} but corpus {corpus.path} uses "
            f"{ref_id!r} ({G} genes)"
        )
    if cfg.n_genes != G:
        raise ValueError(f"{where} has n_genes={cfg.n_genes} but corpus {corpus.path} has {G}")
    if d_esm is not None and cfg.d_esm != d_esm:
        raise ValueError(f"{where} has d_esm={cfg.d_esm} but the ESM2 matrix is {d_esm} wide")
    return cfg.replace(reference_id=ref_id)


def _presets() -> dict:
    from ..model import PRESETS

    return PRESETS


def _load_esm(esm, corpus: Corpus):
    """(embeddings, has_protein, fingerprint) of the ESM2 matrix checked against the corpus."""
    if esm is None:
        log.warning(
            "no ESM2 matrix given (--esm): genes get the model's fixed *random* identity "
            "vectors (random_esm, seed 0) — fine for tests and smoke runs, not for a real model"
        )
        return None, None, {"kind": "random_esm", "seed": 0}
    try:
        from ..esm import load_esm_matrix
    except ImportError as e:  # pragma: no cover - depends on the esm branch being merged
        raise ValueError(f"--esm needs bulkformer.esm (load_esm_matrix): {e}") from e
    emb, has_protein, meta = load_esm_matrix(esm, reference=corpus.reference)
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != corpus.n_genes:
        raise ReferenceMismatchError(
            f"ESM2 matrix {esm} has shape {emb.shape} but corpus {corpus.path} has "
            f"{corpus.n_genes} genes: one row per reference gene is expected"
        )
    rid = (meta or {}).get("reference_id")
    if rid is not None:
        corpus.reference.check_same(rid, f"ESM2 matrix {esm}")
    digest = hashlib.sha1(np.ascontiguousarray(emb, dtype=np.float32).tobytes()).hexdigest()[:16]
    fp = {"kind": "file", "path": str(esm), "sha1": digest, "reference_id": rid}
    return emb, np.asarray(has_protein, dtype=bool), fp


def _param_groups(model: torch.nn.Module, names_decay: set, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if _clean(n) in names_decay else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": wd},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _clean(name: str) -> str:
    for pre in ("_fsdp_wrapped_module.", "module.", "_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(pre, "")
    return name


def _rng_state(masker: Masker) -> dict:
    s = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "masker": masker.get_state().cpu(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict, masker: Masker) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    masker.set_state(s["masker"].to(masker.get_state().device))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _all_reduce(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t)
    return t


def _info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, D) (in-batch negatives of this rank)."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / tau  # (B, B)
    labels = torch.arange(len(z1), device=z1.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


# ====================================================================== the run
class _Run:
    """State of one pretraining run (split out of :func:`pretrain` to keep it readable)."""

    def __init__(self, corpus, out, esm, config, opts: PretrainOptions, info: DistInfo) -> None:
        self.opts = opts
        self.out = Path(out)
        self.info = info
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
        emb, has_protein, esm_fp = _load_esm(esm, self.corpus)
        cfg = resolve_config(config, self.corpus, d_esm=None if emb is None else emb.shape[1])
        if opts.checkpointing:
            cfg = cfg.replace(activation_checkpointing=True)
        self.config = cfg
        self.device = info.device
        dev = self.device
        if opts.precision == "bf16" or (opts.precision == "auto" and dev.type == "cuda"):
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = None

        # ---- data
        splits = self.corpus.splits
        src = self.corpus.samples["source_index"].to_numpy()
        self.train_order = BlockOrder(splits["train"], block_rows=opts.block_rows, seed=opts.seed)
        self.global_batch = opts.batch_size * info.world
        if len(self.train_order) < self.global_batch:
            raise ValueError(
                f"corpus {self.corpus.path} has {len(self.train_order)} training rows but one "
                f"global batch needs {self.global_batch} (batch size {opts.batch_size} × "
                f"{info.world} rank(s)): lower --batch-size or use a larger corpus"
            )
        val = splits["val"]
        if opts.val_max_samples:
            val = val[: opts.val_max_samples]
        self.val_rows = np.sort(val)
        if len(self.val_rows) == 0:
            log.warning("corpus %s has no validation rows: no val MSE", self.corpus.path)
        self.source_index = src
        self.missing = torch.from_numpy(np.ascontiguousarray(self.corpus.missing)).to(dev)

        # ---- model (same init on every rank: seeded before construction)
        self.fingerprint = {
            "config": {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_CONFIG_FIELDS},
            "options": {k: getattr(opts, k) for k in PretrainOptions.TRAJECTORY},
            "world_size": info.world,
            "corpus": {
                "reference_id": self.corpus.manifest["reference"]["id"],
                "rows": len(self.corpus),
                "train_rows": len(self.train_order),
            },
            "esm": esm_fp,
            "fsdp": opts.distributed == "fsdp" and info.distributed,
        }
        self.esm_fp = esm_fp
        self._seed_all(opts.seed)
        self.model = BulkFormer(cfg, esm=emb, has_protein=has_protein).to(dev)
        decay = {n for n, p in self.model.named_parameters() if p.dim() >= 2}
        self.wrapped = self._wrap(self.model)
        self.forward_module = torch.compile(self.wrapped) if opts.compile else self.wrapped
        fused = dev.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.wrapped, decay, opts.weight_decay),
            lr=opts.lr,
            betas=tuple(opts.betas),
            fused=fused,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, opts))
        self.masker = Masker(opts.mask_fraction, opts.seed, dev)
        self.step = 0
        self.position = {"epoch": 0, "index": 0}
        self.last_ckpt: Path | None = None

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        info, mode = self.info, self.opts.distributed
        if not info.distributed:
            if mode in ("ddp", "fsdp"):
                log.info("--%s with a single process: running without a wrapper", mode)
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        if mode == "fsdp":  # FSDP2: one shard group per encoder block, then the rest
            try:
                from torch.distributed.fsdp import fully_shard
            except ImportError:  # torch < 2.6
                from torch.distributed._composable.fsdp import fully_shard

            for block in model.encoder.blocks:
                fully_shard(block)
            fully_shard(model)
            self._fsdp = True
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=ids)

    @property
    def is_fsdp(self) -> bool:
        return getattr(self, "_fsdp", False)

    # ------------------------------------------------------------------ state
    def _full_state(self) -> tuple[dict | None, dict | None]:
        """(model state dict, optimizer state dict) — full, on CPU, on rank 0 (None elsewhere
        under FSDP)."""
        if self.is_fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            o = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd = get_model_state_dict(self.model, options=o)
            osd = get_optimizer_state_dict(self.model, self.optimizer, options=o)
            return (msd, osd) if self.info.is_main else (None, None)
        msd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return msd, self.optimizer.state_dict()

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; all ranks take part)."""
        info = self.info
        rng = _rng_state(self.masker)
        if info.distributed:
            rngs = [None] * info.world
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        msd, osd = self._full_state()
        path = None
        if info.is_main:
            state = {
                "model": msd,
                "optimizer": osd,
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "data": dict(self.position),
                "rng": rngs,
                "fingerprint": self.fingerprint,
                "config": self.config.to_dict(),
                "options": self.opts.to_dict(),
            }
            meta = {
                "step": self.step,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "train_loss": getattr(self, "last_loss", None),
                "data": {k: v for k, v in self.position.items() if k != "block_order"},
                "fingerprint": self.fingerprint,
            }
            path = ckpt.save_checkpoint(self.out, self.step, state, meta)
            ckpt.prune_checkpoints(self.out, self.opts.keep_last)
            log.info("checkpoint %s", path)
        if info.distributed:
            dist.barrier()
        self.last_ckpt = path or self.last_ckpt
        return path

    def restore(self) -> None:
        """Load the newest checkpoint of ``out`` (all ranks read it; a shared filesystem)."""
        found = ckpt.list_checkpoints(self.out)
        if not found:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {ckpt.checkpoint_dir(self.out)}"
            )
        state = ckpt.load_checkpoint(found[-1][1])
        diffs = ckpt.compare_fingerprints(state["fingerprint"], self.fingerprint)
        if diffs:
            msg = (
                f"cannot resume {state['path']}: the run changed ("
                + "; ".join(diffs)
                + "). Use the checkpoint's settings, or pass --force to continue anyway"
            )
            if (
                state["fingerprint"].get("corpus", {}).get("reference_id")
                != self.fingerprint["corpus"]["reference_id"]
            ):
                raise ReferenceMismatchError(msg)
            if not self.opts.force:
                raise ckpt.CheckpointMismatchError(msg)
            log.warning("%s — continuing because of --force", msg)
        if self.is_fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            o = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=o)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=o)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.position = dict(state["data"])
        blocks, _ = self.train_order.epoch(self.position["epoch"])
        if "block_order" in self.position and list(self.position["block_order"]) != blocks.tolist():
            raise ckpt.CheckpointMismatchError(
                f"{state['path']}: the data order of epoch {self.position['epoch']} differs from "
                "the checkpoint's (corpus splits or block size changed)"
            )
        rngs = state["rng"]
        _set_rng_state(rngs[self.info.rank if self.info.rank < len(rngs) else 0], self.masker)
        self.last_ckpt = Path(state["path"])
        log.info("resumed from %s at step %d", state["path"], self.step)

    # ------------------------------------------------------------------ compute
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _inputs(self, xb: torch.Tensor, source: torch.Tensor):
        dev = self.device
        x = xb.to(dev, non_blocking=True).float()  # (b, G)
        missing = self.missing[source.to(dev, non_blocking=True)]  # (b, G)
        return x, missing

    def _prepare(self, batch):
        """Device inputs of one micro-batch: ``(x, missing, masked)``, each (V·b, G), where the
        V = 2 views (contrastive term on) are the same rows masked twice."""
        x, missing = self._inputs(batch.x, batch.source)  # (b, G) each
        b = len(x)
        views = 2 if self.opts.contrastive_weight > 0 else 1
        masked = self.masker(~missing, self.global_batch, self.info.rank * b, views)  # (V, b, G)
        if views == 2:
            return torch.cat([x, x]), torch.cat([missing, missing]), masked.reshape(2 * b, -1)
        return x, missing, masked[0]

    def _micro_loss(self, module, x, missing, masked, count: torch.Tensor):
        """Forward and loss of one micro-batch (not yet backpropagated).

        ``count`` is the number of masked genes in the whole optimizer step (all micro-batches,
        all ranks), so the summed gradients are those of one global mean — independent of how
        the step is split into ranks and micro-batches. The returned loss is scaled by the world
        size to undo DDP/FSDP's gradient averaging. Also returns the detached sums.
        """
        opts = self.opts
        with self._autocast():
            out = module(x, missing=missing, masked=masked)
        cfg = self.config
        total, sse, _ = pretrain_sse(  # fp32 sums
            out, x, masked, cfg.sample_weight, targets=cfg.sample_targets,
            mask_fraction=opts.mask_fraction,
        )
        loss = total / count * self.info.world
        nce = torch.zeros((), device=x.device)
        if opts.contrastive_weight > 0:
            b = len(x) // 2
            pooled = out.pool("mean").float()  # (2b, D)
            nce = _info_nce(pooled[:b], pooled[b:], opts.contrastive_temperature)
            loss = loss + opts.contrastive_weight * nce / opts.accum
        return loss, sse.detach(), nce.detach()

    def validate(self) -> tuple[float | None, float | None]:
        """Masked MSE of the model and of the gene-mean baseline (z = 0) on the val rows,
        with masks from a fixed generator (the same positions at every validation)."""
        if len(self.val_rows) == 0:
            return None, None
        info, opts = self.info, self.opts
        module = self.model  # (under FSDP2 the model itself is the sharded module)
        gen = Masker(opts.mask_fraction, opts.seed + 7919, self.device)
        b, GB = opts.batch_size, self.global_batch
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # sse, z², count
        expr = self.corpus.expression
        self.model.eval()
        try:
            with torch.no_grad():
                for a in range(0, len(self.val_rows), GB):
                    rows = self.val_rows[a : a + GB][info.rank * b : (info.rank + 1) * b]
                    weight = 1.0
                    if len(rows) == 0:  # keep every rank in step (FSDP needs all to forward)
                        rows, weight = self.val_rows[:1], 0.0
                    xb = torch.from_numpy(np.asarray(expr[rows], dtype=np.float16))
                    src = torch.from_numpy(self.source_index[rows])
                    x, missing = self._inputs(xb, src)
                    masked = gen(~missing, GB, info.rank * b)[0]
                    with self._autocast():
                        pred = module(x, missing=missing, masked=masked).pred
                    m = masked.double() * weight
                    sums[0] += ((pred.double() - x.double()).square() * m).sum()
                    sums[1] += (x.double().square() * m).sum()
                    sums[2] += m.sum()
        finally:
            self.model.train()
        _all_reduce(sums, info)
        n = max(sums[2].item(), 1.0)
        return sums[0].item() / n, sums[1].item() / n

    # ------------------------------------------------------------------ loop
    def train(self) -> PretrainResult:
        opts, info = self.opts, self.info
        if opts.resume and ckpt.list_checkpoints(self.out):
            self.restore()
        elif opts.resume:
            log.warning("--resume: no checkpoint in %s yet, starting from step 0", self.out)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run.json").write_text(
                json.dumps(
                    {
                        "config": self.config.to_dict(),
                        "options": opts.to_dict(),
                        "corpus": str(self.corpus.path),
                        "world_size": info.world,
                        "esm": self.esm_fp,
                    },
                    indent=1,
                    default=str,
                )
            )
        metrics = None  # rank 0 writes the metrics
        if info.is_main:
            resume_step = self.step if opts.resume else None
            metrics = MetricsLog(self.out, resume_step, opts.tensorboard)
        loader = BatchLoader(
            self.corpus.expression,
            self.source_index,
            self.train_order,
            opts.batch_size,
            rank=info.rank,
            world=info.world,
            epoch=self.position["epoch"],
            index=self.position["index"],
            workers=opts.workers,
            prefetch=opts.prefetch,
            pin=self.device.type == "cuda",
        )
        bar = None
        if info.is_main and opts.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=opts.steps, initial=self.step, desc="pretrain", unit="step")
        G = self.config.n_genes
        tokens_per_step = (
            self.global_batch * opts.accum * G * (2 if opts.contrastive_weight > 0 else 1)
        )
        peak = opts.peak_flops or float(os.environ.get("BULKFORMER_PEAK_FLOPS", 989e12))
        t_start = time.perf_counter()
        t_win, steps_win, loss_win = time.perf_counter(), 0, []
        val_mse = val_base = None
        start_step = self.step
        self.last_loss = float("nan")
        try:
            while self.step < opts.steps:
                sums = torch.zeros(3, dtype=torch.float64, device=self.device)
                micro = [self._prepare(next(loader)) for _ in range(opts.accum)]
                batch = loader.last
                count = sum(m[2].sum(dtype=torch.float64) for m in micro)
                count = _all_reduce(count, info).clamp_min(1).float()  # the step's masked genes
                for i, (x, missing, masked) in enumerate(micro):
                    sync = i == opts.accum - 1 or not info.distributed or self.is_fsdp
                    ctx = nullcontext() if sync else self.wrapped.no_sync()
                    with ctx:
                        loss, sse, nce = self._micro_loss(
                            self.forward_module, x, missing, masked, count
                        )
                        loss.backward()
                    sums[0] += sse.double()
                    sums[2] += nce.double() / opts.accum
                sums[1] = count.double()
                del micro
                gn = torch.nn.utils.clip_grad_norm_(
                    self.model.parameters(), opts.clip if opts.clip > 0 else float("inf")
                )
                if hasattr(gn, "full_tensor"):  # a DTensor under FSDP2
                    gn = gn.full_tensor()
                _all_reduce(sums[:1], info)
                mse = (sums[0] / sums[1].clamp_min(1)).item()
                nce = _all_reduce(sums[2:3].clone(), info).item() / info.world
                total = mse + opts.contrastive_weight * nce
                gnf = float(gn)
                if not (math.isfinite(total) and math.isfinite(gnf)):
                    where = self.last_ckpt or "none written yet"
                    raise NonFiniteLossError(
                        f"non-finite training loss at step {self.step + 1} (loss {total}, "
                        f"grad norm {gnf}; epoch {batch.epoch}, batch {batch.index}, rows "
                        f"{batch.rows.tolist()[:8]}): stopped before the update. Last good "
                        f"checkpoint: {where}. Check the corpus rows for NaN/inf, or lower --lr"
                    )
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.position = loader.position()
                self.last_loss = total
                steps_win += 1
                loss_win.append(total)
                now = time.perf_counter()
                if self.step % max(1, opts.log_every) == 0 or self.step == opts.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = max(time.perf_counter() - t_win, 1e-9)
                    tps = tokens_per_step * steps_win / dt
                    if metrics is not None:
                        metrics.write(
                            kind="train",
                            step=self.step,
                            epoch=batch.epoch,
                            lr=lr,
                            loss=total,
                            mse=mse,
                            contrastive=nce if opts.contrastive_weight > 0 else None,
                            grad_norm=gnf,
                            tokens_per_s=tps,
                            samples_per_s=tps / G,
                            mfu=(
                                self.model.estimate_mfu(tps / info.world, peak)
                                if self.device.type == "cuda"
                                else None
                            ),
                            elapsed_s=now - t_start,
                        )
                    if bar is not None:
                        bar.set_postfix(loss=f"{np.mean(loss_win):.4f}", tok_s=f"{tps:,.0f}")
                    self.window_loss = float(np.mean(loss_win))
                    t_win, steps_win, loss_win = time.perf_counter(), 0, []
                if bar is not None:
                    bar.update(1)
                last = self.step == opts.steps
                t_aside = time.perf_counter()  # validation and checkpoints: not step time
                if (opts.val_every and self.step % opts.val_every == 0) or last:
                    val_mse, val_base = self.validate()
                    if metrics is not None and val_mse is not None:
                        metrics.write(
                            kind="val",
                            step=self.step,
                            epoch=batch.epoch,
                            val_mse=val_mse,
                            val_baseline=val_base,
                            elapsed_s=time.perf_counter() - t_start,
                        )
                        log.info(
                            "step %d: val MSE %.4f vs gene-mean baseline %.4f",
                            self.step,
                            val_mse,
                            val_base,
                        )
                if (opts.ckpt_every and self.step % opts.ckpt_every == 0) or last:
                    self.save()
                t_win += time.perf_counter() - t_aside
        finally:
            loader.close()
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        elapsed = time.perf_counter() - t_start
        done = self.step - start_step
        tps_mean = tokens_per_step * done / elapsed if done else 0.0
        return self._finish(val_mse, val_base, tps_mean)

    def _finish(self, val_mse, val_base, tps) -> PretrainResult:
        from ..model.pretrained import export_pretrained
        from .monitor import read_metrics

        info = self.info
        pretrained = None
        history = []
        metrics_csv = self.out / "metrics.csv"
        model = self.model
        if self.is_fsdp:  # gather the full weights (all ranks take part) into a CPU model
            msd, _ = self._full_state()
            if info.is_main:
                esm = torch.empty(self.config.n_genes, self.config.d_esm)
                model = BulkFormer(self.config, esm=esm)
                model.load_state_dict(msd)
        if info.is_main:
            summary = {
                "steps": self.step,
                "train_loss": getattr(self, "window_loss", self.last_loss),
                "val_mse": val_mse,
                "val_gene_mean_baseline": val_base,
                "tokens_per_s": tps,
                "world_size": info.world,
                "options": self.opts.to_dict(),
                "esm": self.esm_fp,
            }
            pretrained = export_pretrained(
                model,
                self.corpus.reference,
                self.corpus.stats,
                self.out / "pretrained",
                metadata={"corpus": str(self.corpus.path), "training": summary},
            )
            history = [r for r in read_metrics(metrics_csv) if r["kind"] == "val"]
            try:
                plot_loss_curve(metrics_csv, self.out / "loss_curve.png")
            except ImportError:
                log.warning("matplotlib not installed: no loss_curve.png")
        if info.distributed:
            dist.barrier()
        return PretrainResult(
            out=self.out,
            pretrained=pretrained,
            checkpoint=self.last_ckpt,
            steps=self.step,
            train_loss=getattr(self, "window_loss", self.last_loss),
            val_mse=val_mse,
            val_baseline=val_base,
            tokens_per_s=tps,
            metrics=metrics_csv,
            config=self.config,
            history=history,
        )


def pretrain(
    corpus,
    out,
    *,
    esm=None,
    config="tiny",
    **options,
) -> PretrainResult:
    """Pretrain BulkFormer with masked-gene reconstruction on a corpus.

    Runs as one process, or as one rank of a ``torchrun`` job (DDP by default, FSDP with
    ``distributed="fsdp"``; NCCL on CUDA, gloo on CPU), initialising torch.distributed from
    torchrun's environment variables.

    Parameters
    ----------
    corpus : Corpus or path of a corpus directory (``bulkformer preprocess``; for CPU runs a
        gene subset made by :func:`bulkformer.data.derive.derive_corpus`).
    out : run directory: ``checkpoints/``, ``metrics.csv``, ``tb/``, ``loss_curve.png``,
        ``run.json`` and the final export ``pretrained/`` (:func:`~bulkformer.model.pretrained.
        export_pretrained` format: weights, config, gene reference, corpus statistics, metadata
        with a training summary).
    esm : path of an ESM2 gene matrix (``bulkformer.esm.load_esm_matrix``), checked against the
        corpus' gene reference. None: the model's fixed random identity matrix (a warning is
        logged; for tests and smoke runs).
    config : preset name (``"tiny"``, ``"small"``, ``"base"``, ``"base100m"``), a
        ``config.json`` path / JSON text, or a :class:`BulkFormerConfig`; must match the corpus'
        gene reference.
    **options : fields of :class:`PretrainOptions` (steps, batch_size, lr, warmup, accum,
        mask_fraction, contrastive_weight, val_every, ckpt_every, keep_last, resume, force,
        compile, checkpointing, precision, seed, workers, device, distributed, ...).

    Returns
    -------
    PretrainResult

    Raises
    ------
    ReferenceMismatchError
        Corpus, ESM2 matrix, config or resumed checkpoint name different gene references.
    ValueError
        Bad options; a corpus too small for one global batch; an existing run without
        ``resume``/``force``.
    CheckpointMismatchError
        ``resume`` with changed settings (model config, trajectory options, world size) and no
        ``force``.
    NonFiniteLossError
        The loss became NaN/inf; the last good checkpoint is kept (and named in the message).
    """
    opts = options.pop("options", None)
    if opts is None:
        opts = PretrainOptions(**options)
    elif options:
        raise TypeError("pretrain: pass either options=PretrainOptions(...) or keywords, not both")
    out = Path(out)
    if not opts.resume and not opts.force and ckpt.list_checkpoints(out):
        raise FileExistsError(
            f"{out} already holds a run (checkpoints/): pass resume=True (--resume) to continue "
            "it or force=True (--force) to start over"
        )
    if opts.threads:
        torch.set_num_threads(opts.threads)
    info = setup_distributed(opts.device)
    try:
        run = _Run(corpus, out, esm, config, opts, info)
        if not opts.resume and opts.force and info.is_main:  # start over: drop the old run
            for _, p in ckpt.list_checkpoints(out):
                shutil.rmtree(p)
        if info.distributed:
            dist.barrier()
        return run.train()
    finally:
        teardown_distributed(info)
