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

import json
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .._io import DirLock, write_atomic
from ..data.corpus import Corpus
from ..data.genes import ReferenceMismatchError
from ..model import BulkFormer, BulkFormerConfig
from . import checkpoint as ckpt
from .data import BatchLoader, BlockOrder, Masker
from .distributed import (
    DistInfo,
    all_reduce,
    full_state_dicts,
    load_full_state_dicts,
    setup_distributed,
    teardown_distributed,
    wrap_model,
)
from .inputs import load_esm, resolve_config
from .monitor import StepMonitor, plot_loss_curve
from .objectives import info_nce, pretrain_sse
from .options import PretrainOptions, lr_at
from .validation import BaselineImputers, val_mask

#: the baselines scored beside the model at validation (``val_<name>`` in metrics.csv)
VAL_BASELINES = ("gene_mean", "knn", "pca")

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
    tokens_per_s: float | None  # global tokens/s over the loop (validation, checkpoints included)
    metrics: Path  # metrics.csv
    config: BulkFormerConfig = None  # type: ignore[assignment]
    history: list = field(default_factory=list)  # the val rows of metrics.csv
    #: ``resume`` found the run already at ``steps``: nothing was trained or rewritten
    already_finished: bool = False
    val_extra: dict = field(default_factory=dict)  # val_sample_mse, val_gene_mean/knn/pca


# ====================================================================== set-up helpers
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


# ====================================================================== the run
@dataclass
class _StepStats:
    """What one optimizer step reports (the training row of metrics.csv)."""

    epoch: int
    lr: float  # learning rate the update used
    loss: float  # total: masked MSE (+ contrastive_weight · InfoNCE)
    mse: float  # masked MSE over the whole global batch
    contrastive: float  # InfoNCE averaged over ranks and micro-batches (0 when off)
    grad_norm: float  # before clipping


class _Run:
    """One pretraining run. The steps, in order: set-up (``__init__``: data, then model and
    optimizer), :meth:`train` (start or resume, then per optimizer step :meth:`_train_step`,
    monitoring, :meth:`_maybe_validate`, :meth:`_maybe_save`), :meth:`_finish` (export)."""

    def __init__(self, corpus, out, esm, config, opts: PretrainOptions, info: DistInfo) -> None:
        self.opts = opts
        self.out = Path(out)
        self.info = info
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
        emb, has_protein, self.esm_fp = load_esm(esm, self.corpus)
        cfg = resolve_config(config, self.corpus, d_esm=None if emb is None else emb.shape[1])
        if opts.checkpointing:
            cfg = cfg.replace(activation_checkpointing=True)
        self.config = cfg
        self.device = info.device
        if opts.precision == "bf16" or (opts.precision == "auto" and self.device.type == "cuda"):
            self.amp_dtype = torch.bfloat16
        else:
            self.amp_dtype = None
        self._setup_data()
        self._setup_model(emb, has_protein)
        self.step = 0
        self.position = {"epoch": 0, "index": 0}
        self.last_ckpt: Path | None = None
        self.last_loss = float("nan")  # of the latest step
        self.window_loss: float | None = None  # mean over the latest logged window
        self.val_extra: dict = {}  # the latest validation's val_* numbers beside val_mse
        self.val_baseline_mse: dict | None = None  # baselines on the val positions (once)
        self.prior_info: dict | None = None  # the PCA prior's fit (a fresh start only)

    @property
    def train_loss(self) -> float:
        """Mean loss of the latest logged window (the latest step's loss before any)."""
        return self.last_loss if self.window_loss is None else self.window_loss

    # ------------------------------------------------------------------ set-up
    def _setup_data(self) -> None:
        """Training order, validation rows, and the per-source missing masks on the device."""
        opts, info = self.opts, self.info
        splits = self.corpus.splits
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
        self.source_index = self.corpus.samples["source_index"].to_numpy()
        missing = np.ascontiguousarray(self.corpus.missing)
        self.missing = torch.from_numpy(missing).to(self.device)

    def _setup_model(self, emb, has_protein) -> None:
        """Fingerprint, model (same init on every rank: seeded before construction), wrapper,
        optimizer, schedule and the masking generator."""
        opts, info, cfg, dev = self.opts, self.info, self.config, self.device
        self.fingerprint = {
            "config": {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_CONFIG_FIELDS},
            "options": {k: getattr(opts, k) for k in PretrainOptions.TRAJECTORY},
            "world_size": info.world,
            "corpus": {
                "reference_id": self.corpus.manifest["reference"]["id"],
                "rows": len(self.corpus),
                "train_rows": len(self.train_order),
            },
            "esm": self.esm_fp,
            "fsdp": opts.distributed == "fsdp" and info.distributed,
        }
        random.seed(opts.seed)
        np.random.seed(opts.seed)
        torch.manual_seed(opts.seed)
        self.model = BulkFormer(cfg, esm=emb, has_protein=has_protein).to(dev)
        decay = {n for n, p in self.model.named_parameters() if p.dim() >= 2}
        self.wrapped, self.is_fsdp = wrap_model(self.model, info, opts.distributed)
        self.forward_module = torch.compile(self.wrapped) if opts.compile else self.wrapped
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.wrapped, decay, opts.weight_decay),
            lr=opts.lr,
            betas=tuple(opts.betas),
            fused=dev.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, opts))
        self.masker = Masker(opts.mask_fraction, opts.seed, dev)

    # ------------------------------------------------------------------ state
    def _training_state(self) -> dict | None:
        """The whole training state (``state.pt``) on rank 0, None on the other ranks (all
        ranks take part: RNG states are gathered, FSDP shards too)."""
        info = self.info
        rng = ckpt.rng_state(self.masker)
        if info.distributed:
            rngs = [None] * info.world
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        msd, osd = full_state_dicts(self.model, self.optimizer, info, self.is_fsdp)
        if not info.is_main:
            return None
        return {
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

    def _load_training_state(self, state: dict) -> None:
        """Continue from ``state`` (of :meth:`_training_state`, checked by :meth:`restore`)."""
        load_full_state_dicts(
            self.model, self.optimizer, state["model"], state["optimizer"], self.is_fsdp
        )
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
        ckpt.set_rng_state(rngs[self.info.rank if self.info.rank < len(rngs) else 0], self.masker)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; all ranks take part)."""
        state = self._training_state()
        path = None
        if state is not None:
            meta = {
                "step": self.step,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "train_loss": self.last_loss,
                "data": {k: v for k, v in self.position.items() if k != "block_order"},
                "fingerprint": self.fingerprint,
            }
            path = ckpt.save_checkpoint(self.out, self.step, state, meta)
            ckpt.prune_checkpoints(self.out, self.opts.keep_last)
            log.info("checkpoint %s", path)
        if self.info.distributed:
            dist.barrier()
        self.last_ckpt = path or self.last_ckpt
        return path

    def restore(self) -> None:
        """Load the newest checkpoint of ``out`` (all ranks read it; a shared filesystem),
        refused when the run's fingerprint changed (unless ``force``)."""
        found = ckpt.list_checkpoints(self.out)
        if not found:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {ckpt.checkpoint_dir(self.out)}"
            )
        state = ckpt.load_latest(self.out, trust=self.opts.trust_checkpoint)
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
        self._load_training_state(state)
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
            out,
            x,
            masked,
            cfg.sample_weight,
            targets=cfg.sample_targets,
            mask_fraction=opts.mask_fraction,
        )
        loss = total / count * self.info.world
        nce = torch.zeros((), device=x.device)
        if opts.contrastive_weight > 0:
            b = len(x) // 2
            pooled = out.pool("mean").float()  # (2b, D)
            nce = info_nce(pooled[:b], pooled[b:], opts.contrastive_temperature)
            loss = loss + opts.contrastive_weight * nce / opts.accum
        return loss, sse.detach(), nce.detach()

    def validate(self) -> tuple[float | None, float | None]:
        """Masked MSE (z scale) of the model and of the z = 0 baseline on the val rows over
        ``val_masks`` random masks (:func:`.validation.val_mask`: the same positions at every
        validation). Also sets ``self.val_extra``: the sample decoder's MSE and, computed once
        on the same positions, the gene-mean, kNN and PCA baselines fitted on training rows."""
        if len(self.val_rows) == 0:
            return None, None
        info, opts = self.info, self.opts
        module = self.model  # (under FSDP2 the model itself is the sharded module)
        b, GB = opts.batch_size, self.global_batch
        terms = ["model", "zero", "sample", *VAL_BASELINES]
        sums = torch.zeros(len(terms) + 1, dtype=torch.float64, device=self.device)  # sse…, n
        imputers = None
        if opts.val_baselines and self.val_baseline_mse is None:
            imputers = self._baseline_imputers()
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
                    observed = ~missing.cpu().numpy()
                    for k in range(opts.val_masks):
                        mk = val_mask(observed, rows, opts.mask_fraction, k, opts.seed + 7919)
                        masked = torch.from_numpy(mk).to(self.device)
                        with self._autocast():
                            out = module(x, missing=missing, masked=masked)
                        preds = {"model": out.pred, "zero": torch.zeros_like(x)}
                        if out.sample_pred is not None:
                            preds["sample"] = out.sample_pred
                        if imputers is not None:
                            for n, p in imputers.predict(x.cpu().numpy(), observed & ~mk).items():
                                preds[n] = torch.from_numpy(np.array(p))  # a writable copy
                        m = masked.double() * weight
                        for i, n in enumerate(terms):
                            if n in preds:
                                p = preds[n].to(self.device).double()
                                sums[i] += ((p - x.double()).square() * m).sum()
                        sums[-1] += m.sum()
        finally:
            self.model.train()
        all_reduce(sums, info)
        mse = dict(zip(terms, (sums[:-1] / max(sums[-1].item(), 1.0)).tolist()))
        if imputers is not None:
            self.val_baseline_mse = {f"val_{n}": mse[n] for n in VAL_BASELINES}
        self.val_extra = dict(self.val_baseline_mse or {})
        if self.config.sample_weight > 0:
            self.val_extra["val_sample_mse"] = mse["sample"]
        return mse["model"], mse["zero"]

    def _training_sample(self, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, observed) of up to ``n`` training rows (a seeded sample beyond that)."""
        rows = np.asarray(self.corpus.splits["train"])
        if n and len(rows) > n:
            rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
        x = np.asarray(self.corpus.expression[rows], dtype=np.float32)
        observed = ~np.asarray(self.corpus.missing)[self.source_index[rows]]
        bad = ~np.isfinite(x)
        if bad.any():  # left out of the fits (the training step stops on them, naming the step)
            n_bad, what = int(bad.any(1).sum()), "the PCA prior and the validation baselines"
            log.warning("corpus %s: %d of %d sampled training rows hold non-finite values; %s "
                        "treat those entries as missing", self.corpus.path, n_bad, len(rows), what)  # fmt: skip
            x, observed = np.where(bad, 0.0, x).astype(np.float32), observed & ~bad
        return x, observed

    def _fit_prior(self) -> dict:
        """Fit the model's PCA prior on training rows (:func:`.prior.fit_prior`)."""
        from .prior import MAX_PRIOR_ROWS, fit_prior

        x, obs = self._training_sample(MAX_PRIOR_ROWS, self.opts.seed)
        return fit_prior(
            self.model.prior, x, obs, fraction=self.opts.mask_fraction, seed=self.opts.seed
        )

    def _baseline_imputers(self) -> BaselineImputers:
        """:class:`.validation.BaselineImputers` on up to ``val_baseline_rows`` training rows."""
        x, observed = self._training_sample(self.opts.val_baseline_rows, self.opts.seed)
        return BaselineImputers(x, observed, fraction=self.opts.mask_fraction, seed=self.opts.seed)

    # ------------------------------------------------------------------ loop
    def train(self) -> PretrainResult:
        """Start (or resume), then optimizer steps up to ``opts.steps``, each monitored and,
        when due, followed by validation and a checkpoint; then :meth:`_finish`."""
        opts = self.opts
        self._start()
        if self.step >= opts.steps:
            return self._already_finished()
        loader = self._loader()
        monitor = self._monitor()
        val = (None, None)  # (val MSE, gene-mean baseline) of the latest validation
        start_step = self.step
        try:
            while self.step < opts.steps:
                s = self._train_step(loader)
                contrastive = s.contrastive if opts.contrastive_weight > 0 else None
                monitor.train_step(
                    self.step,
                    s.epoch,
                    lr=s.lr,
                    loss=s.loss,
                    mse=s.mse,
                    contrastive=contrastive,
                    grad_norm=s.grad_norm,
                )
                with monitor.aside():  # validation and checkpoints: not step time
                    val = self._maybe_validate(monitor, s.epoch) or val
                    self._maybe_save()
        finally:
            loader.close()
            monitor.close()
        self.window_loss = monitor.window_loss
        return self._finish(*val, monitor.mean_tokens_per_s(self.step - start_step))

    def _start(self) -> None:
        """Resume from the newest checkpoint (``resume``), and write ``run.json`` (rank 0)."""
        opts, info = self.opts, self.info
        resumed = bool(opts.resume and ckpt.list_checkpoints(self.out))
        if resumed:
            self.restore()
        elif opts.resume:
            log.warning("--resume: no checkpoint in %s yet, starting from step 0", self.out)
        if not resumed and self.config.pca_prior > 0:  # a resumed run has it in its state
            self.prior_info = self._fit_prior()
        if info.is_main and self.step < opts.steps:  # a finished run's files stay as they are
            self.out.mkdir(parents=True, exist_ok=True)
            run = {
                "config": self.config.to_dict(),
                "options": opts.to_dict(),
                "corpus": str(self.corpus.path),
                "world_size": info.world,
                "esm": self.esm_fp,
            }
            write_atomic(self.out / "run.json", json.dumps(run, indent=1, default=str).encode())

    def _loader(self) -> BatchLoader:
        """This rank's batches, from the current data position."""
        opts, info = self.opts, self.info
        return BatchLoader(
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

    def _monitor(self) -> StepMonitor:
        opts, info, cuda = self.opts, self.info, self.device.type == "cuda"
        G = self.config.n_genes
        views = 2 if opts.contrastive_weight > 0 else 1
        return StepMonitor(
            self.out,
            main=info.is_main,
            resume_step=self.step if opts.resume else None,
            tensorboard=opts.tensorboard,
            progress=opts.progress,
            steps=opts.steps,
            initial=self.step,
            log_every=opts.log_every,
            tokens_per_step=self.global_batch * opts.accum * G * views,
            n_genes=G,
            mfu=(
                (lambda tps: self.model.estimate_mfu(tps / info.world, opts.peak_flops))
                if cuda
                else None
            ),
            sync=torch.cuda.synchronize if cuda else None,
        )

    def _train_step(self, loader: BatchLoader) -> _StepStats:
        """One optimizer step: forward and backward of ``accum`` micro-batches (gradients
        synchronised on the last), gradient clipping, the finite check, the AdamW update."""
        opts, info = self.opts, self.info
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # sse, count, nce
        micro = [self._prepare(next(loader)) for _ in range(opts.accum)]
        batch = loader.last
        count = sum(m[2].sum(dtype=torch.float64) for m in micro)
        count = all_reduce(count, info).clamp_min(1).float()  # the step's masked genes
        for i, (x, missing, masked) in enumerate(micro):
            sync = i == opts.accum - 1 or not info.distributed or self.is_fsdp
            with nullcontext() if sync else self.wrapped.no_sync():
                loss, sse, nce = self._micro_loss(self.forward_module, x, missing, masked, count)
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
        all_reduce(sums[:1], info)
        mse = (sums[0] / sums[1].clamp_min(1)).item()
        nce = all_reduce(sums[2:3].clone(), info).item() / info.world
        total = mse + opts.contrastive_weight * nce
        gnf = float(gn)
        self._check_finite(total, gnf, batch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position = loader.position()
        self.last_loss = total
        return _StepStats(batch.epoch, lr, total, mse, nce, gnf)

    def _check_finite(self, loss: float, grad_norm: float, batch) -> None:
        """Raise :class:`NonFiniteLossError` (before the update) on a NaN/inf loss or norm."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            where = self.last_ckpt or "none written yet"
            raise NonFiniteLossError(
                f"non-finite training loss at step {self.step + 1} (loss {loss}, grad norm "
                f"{grad_norm}; epoch {batch.epoch}, batch {batch.index}, rows "
                f"{batch.rows.tolist()[:8]}): stopped before the update. Last good "
                f"checkpoint: {where}. Check the corpus rows for NaN/inf, or lower --lr"
            )

    def _maybe_validate(self, monitor: StepMonitor, epoch: int):
        """``(val MSE, baseline)`` when validation is due at this step (every ``val_every``
        and the last), else None."""
        opts = self.opts
        if not ((opts.val_every and self.step % opts.val_every == 0) or self.step == opts.steps):
            return None
        val_mse, val_base = self.validate()
        monitor.val(self.step, epoch, val_mse, val_base, **self.val_extra)
        return val_mse, val_base

    def _maybe_save(self) -> None:
        """A checkpoint when due (every ``ckpt_every`` steps and at the last)."""
        opts = self.opts
        if (opts.ckpt_every and self.step % opts.ckpt_every == 0) or self.step == opts.steps:
            self.save()

    def _already_finished(self) -> PretrainResult:
        """The result of a resumed run that is at ``steps`` already, read from its export's
        training summary; nothing is rewritten. Only an export missing (killed after the last
        checkpoint) is redone, with a fresh validation and no throughput."""
        from .monitor import read_metrics

        log.warning(
            "%s is finished (step %d of --steps %d): nothing to train. To train further, "
            "raise --steps and pass --force",
            self.out,
            self.step,
            self.opts.steps,
        )
        try:
            meta = json.loads((self.out / "pretrained" / "bulkformer.json").read_text())
            summary = meta["training"]
            if summary["steps"] != self.step:
                raise ValueError("the export is of another step")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s/pretrained: %s; exporting the final model again", self.out, e)
            rows = [r for r in read_metrics(self.out / "metrics.csv") if r["kind"] == "train"]
            self.window_loss = rows[-1]["loss"] if rows else None
            res = self._finish(*self.validate(), None)
            res.already_finished = True
            return res
        metrics = self.out / "metrics.csv"
        return PretrainResult(
            out=self.out,
            pretrained=self.out / "pretrained",
            checkpoint=self.last_ckpt,
            steps=self.step,
            train_loss=summary.get("train_loss"),
            val_mse=summary.get("val_mse"),
            val_baseline=summary.get("val_gene_mean_baseline"),
            tokens_per_s=summary.get("tokens_per_s"),
            metrics=metrics,
            config=self.config,
            history=[r for r in read_metrics(metrics) if r["kind"] == "val"],
            already_finished=True,
        )

    def _finish(self, val_mse, val_base, tps) -> PretrainResult:
        from ..model.pretrained import export_pretrained
        from .monitor import read_metrics

        info = self.info
        pretrained = None
        history = []
        metrics_csv = self.out / "metrics.csv"
        model = self.model
        if self.is_fsdp:  # gather the full weights (all ranks take part) into a CPU model
            msd, _ = full_state_dicts(self.model, self.optimizer, info, fsdp=True)
            if info.is_main:
                esm = torch.empty(self.config.n_genes, self.config.d_esm)
                model = BulkFormer(self.config, esm=esm)
                model.load_state_dict(msd)
        if info.is_main:
            summary = {
                "steps": self.step,
                "train_loss": self.train_loss,
                "val_mse": val_mse,
                "val_gene_mean_baseline": val_base,
                **self.val_extra,
                "tokens_per_s": tps,
                "world_size": info.world,
                "options": self.opts.to_dict(),
                "esm": self.esm_fp,
                "pca_prior_rank": int(model.prior.rank) if self.config.pca_prior else 0,  # 0: none
                **({"pca_prior_fit": self.prior_info} if self.prior_info else {}),
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
            train_loss=self.train_loss,
            val_mse=val_mse,
            val_baseline=val_base,
            tokens_per_s=tps,
            metrics=metrics_csv,
            config=self.config,
            history=history,
            val_extra=dict(self.val_extra),
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
    CheckpointError
        ``resume``: every checkpoint is damaged (a damaged newest one is skipped with a
        warning), or the newest holds pickled objects (older format, planted payload) and not
        ``trust_checkpoint``.
    CheckpointWriteError
        A checkpoint could not be written (a full disk); the older checkpoints are intact.
    LockedError
        Another process is writing the run directory (``OUT.lock`` is held).

    A ``resume`` of a run already at ``steps`` trains nothing, rewrites nothing and returns
    the recorded result with ``already_finished`` set.
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
        lock = nullcontext()
        if info.is_main:  # one process writes a run directory at a time (rank 0 for a job)
            out.parent.mkdir(parents=True, exist_ok=True)  # for OUT.lock
            lock = DirLock(out, what="pretraining run")
        with lock:
            run = _Run(corpus, out, esm, config, opts, info)
            if not opts.resume and opts.force and info.is_main:  # start over: drop the old run
                for _, p in ckpt.list_checkpoints(out):
                    shutil.rmtree(p)
            if info.distributed:
                dist.barrier()
            return run.train()
    finally:
        teardown_distributed(info)
