"""Memory planner: per-GPU peak memory and FLOPs of one pretraining step, before running it.

``bulkformer pretrain --plan`` and :func:`plan_memory` add up what a training step of
:func:`bulkformer.train.pretrain` keeps alive at its peak, from the config alone::

    static       params (fp32) + buffers (ESM2 matrix) + AdamW state (2 × fp32), sharded by FSDP
    grads        fp32, one per parameter (sharded by FSDP; DDP adds its bucket copy)
    weights16    bf16 copies of the Linear weights that autocast saves for backward
    activations  tensors autograd saves: embedding, each encoder block (G + 1 tokens with the
                 [SAMPLE] token), final norm, head, sample decoder, loss
    transient    the largest short-lived buffers around the peak (start of backward)

Per token and block, the saved activations are (a = 2 bytes under bf16 autocast, 4 in fp32;
d = d_model, m = MLP width, H = heads)::

    2 LayerNorm inputs + 2 LayerNorm outputs (the Linear inputs) + q, k, v + attention output
    = 8·a·d,  MLP hidden before and after GELU = 2·a·m,  LayerNorm statistics 16,  softmax
    log-sum-exp 4·H

Attention is taken to run through a flash-style kernel (SDPA flash / cuDNN / memory-efficient,
or the CPU flash kernel), whose memory is O(S): no S × S matrix is kept. With activation
checkpointing a block keeps only its input (a·d per token); one block at a time is recomputed in
backward. The estimate is checked against measured peaks on CPU in the tests
(:func:`measure_peak_memory`, within 15 %) and on a GPU by ``benches/gpu_check.py``.

:func:`fit_gpu` answers "what fits on a 16 / 24 / 80 / 141 GB GPU": the largest micro-batch with
and without checkpointing, and FSDP world sizes when even one sample does not fit.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field

__all__ = [
    "GPU_MEMORY",
    "MemoryPlan",
    "FitResult",
    "plan_memory",
    "fit_gpu",
    "parse_memory",
    "usable_memory",
    "measure_peak_memory",
    "live_tensor_bytes",
    "measure_train_step",
    "format_bytes",
    "run_plan_cli",
]

log = logging.getLogger(__name__)

GiB = 1 << 30
#: GPU sizes the docs and ``--gpu-memory`` talk about, in bytes (a "GB" of a GPU is a GiB)
GPU_MEMORY = {"16GB": 16 * GiB, "24GB": 24 * GiB, "80GB": 80 * GiB, "141GB": 141 * GiB}
#: share of a GPU's memory the caching allocator can hand out, and what the CUDA context takes
USABLE_FRACTION = 0.92
CONTEXT_BYTES = GiB // 2


def parse_memory(text: str | int | float) -> int:
    """``"16GB"``, ``"24 GiB"``, ``"80g"``, ``"512MB"`` or a byte count → bytes (GB = GiB)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"memory size must be positive, got {text}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(
            f"--gpu-memory {text!r}: expected a size such as 16GB, 24GB, 80GB, 141GB or 512MB"
        )
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    if unit == 1 and not m.group(3):
        unit = GiB  # a bare number means GB
    return int(float(m.group(1)) * unit)


def usable_memory(total: int) -> int:
    """Bytes the planner lets a step allocate on a GPU of ``total`` bytes: ``92 %`` of it (the
    caching allocator's fragmentation) minus 0.5 GiB for the CUDA context and kernels."""
    return int(total * USABLE_FRACTION) - CONTEXT_BYTES


def format_bytes(n: float) -> str:
    """``1.23 GiB`` / ``45.6 MiB`` / ``789 KiB``."""
    for unit, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# ====================================================================== the estimate
@dataclass
class MemoryPlan:
    """Per-GPU peak memory (bytes) and FLOPs of one optimizer step (:func:`plan_memory`)."""

    config: object  # BulkFormerConfig
    micro_batch: int
    n_genes: int
    precision: str  # "bf16" | "fp32"
    checkpointing: bool
    fsdp_world: int
    ddp: bool
    params: int  # fp32 parameters (this rank's shard)
    buffers: int  # ESM2 matrix, PCA prior and masks
    optimizer: int  # AdamW exp_avg + exp_avg_sq
    grads: int  # fp32 gradients (this rank's shard; + DDP buckets)
    weights16: int  # bf16 weight copies saved by autocast (0 in fp32)
    fsdp_unsharded: int  # FSDP: all-gathered parameters / gradients held at once
    inputs: int  # x, missing, masked of the step's micro-batches
    activations: dict = field(default_factory=dict)  # name → saved bytes
    transient: int = 0  # short-lived buffers at the peak
    optimizer_temp: int = 0  # scratch of the AdamW step (see plan_memory's adamw)
    n_params: int = 0  # all parameters (unsharded)
    flops_model: float = 0.0  # model FLOPs of one micro-batch step (6N + attention)
    flops_hw: float = 0.0  # including the recomputed forward under checkpointing

    @property
    def static(self) -> int:
        """Parameters, buffers, optimizer state and inputs: alive the whole step."""
        return self.params + self.buffers + self.optimizer + self.inputs + self.fsdp_unsharded

    @property
    def activation_total(self) -> int:
        return int(sum(self.activations.values()))

    @property
    def peak_backward(self) -> int:
        """Start of backward: all saved activations, the backward's first buffers."""
        return self.static + self.weights16 + self.activation_total + self.transient

    @property
    def peak_optimizer(self) -> int:
        """The optimizer step: activations are gone, gradients and scratch are there."""
        return self.static + self.grads + self.optimizer_temp

    @property
    def peak(self) -> int:
        """Estimated peak of allocated memory on this rank, in bytes."""
        return max(self.peak_backward, self.peak_optimizer)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.n_genes

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) lines of the breakdown, largest parts first within each section."""
        out = [
            ("parameters (fp32)", self.params),
            ("buffers (ESM2 matrix, PCA prior, masks)", self.buffers),
            ("AdamW state (2 × fp32)", self.optimizer),
            ("gradients (fp32)" + (" + DDP buckets" if self.ddp else ""), self.grads),
        ]
        if self.fsdp_unsharded:
            out.append(("FSDP unsharded params/grads", self.fsdp_unsharded))
        if self.weights16:
            out.append(("bf16 weight copies (autocast)", self.weights16))
        out.append(("inputs (x, missing, masked)", self.inputs))
        out += [(f"activations: {k}", v) for k, v in self.activations.items()]
        out.append(("backward transients", self.transient))
        return out

    def summary(self) -> str:
        """A readable table of the estimate (what ``bulkformer pretrain --plan`` prints)."""
        c = self.config
        lines = [
            f"memory plan: d_model={c.d_model} n_layers={c.n_layers} n_heads={c.n_heads} "
            f"({self.n_params / 1e6:.1f}M parameters), {self.n_genes:,} genes, micro-batch "
            f"{self.micro_batch}, {self.precision}, checkpointing "
            f"{'on' if self.checkpointing else 'off'}, "
            + (f"FSDP × {self.fsdp_world}" if self.fsdp_world > 1 else "no FSDP")
            + (", DDP" if self.ddp else ""),
        ]
        w = max(len(k) for k, _ in self.rows())
        for k, v in self.rows():
            lines.append(f"  {k:<{w}}  {format_bytes(v):>12}")
        lines.append(f"  {'peak (start of backward)':<{w}}  {format_bytes(self.peak_backward):>12}")
        lines.append(f"  {'peak (optimizer step)':<{w}}  {format_bytes(self.peak_optimizer):>12}")
        lines.append(f"  {'PEAK per GPU':<{w}}  {format_bytes(self.peak):>12}")
        lines.append(
            f"  step FLOPs per micro-batch: {self.flops_model / 1e12:.2f} TFLOP model"
            + (
                f", {self.flops_hw / 1e12:.2f} TFLOP with the recomputed forward"
                if self.checkpointing
                else ""
            )
            + f" ({self.tokens:,} tokens)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "micro_batch": self.micro_batch,
            "n_genes": self.n_genes,
            "precision": self.precision,
            "checkpointing": self.checkpointing,
            "fsdp_world": self.fsdp_world,
            "ddp": self.ddp,
            "n_params": self.n_params,
            "breakdown": dict(self.rows()),
            "peak_backward": self.peak_backward,
            "peak_optimizer": self.peak_optimizer,
            "peak": self.peak,
            "flops_model": self.flops_model,
            "flops_hw": self.flops_hw,
        }


def _counts(cfg) -> dict:
    """Parameter counts by part, from the config (same as ``BulkFormer.num_parameters``):
    the ablation switches (``esm_identity``, ``context_mlp``, ``sample_token``) and the sample
    decoder (``sample_weight > 0``, ``sample_decoder``) included."""
    d, m, G, h, de = cfg.d_model, cfg.mlp_width, cfg.n_genes, cfg.context_width, cfg.d_esm
    bias = 1 if cfg.bias else 0
    attn = d * 3 * d + bias * 3 * d + d * d + bias * d
    mlp = d * m + bias * m + m * d + bias * d
    block = attn + mlp + 4 * d  # + two LayerNorms
    lin_w_block = 3 * d * d + d * d + 2 * d * m  # Linear weights (autocast copies)
    emb = d  # e_mask
    lin_w_root = d  # head
    largest = [d * m, 3 * d * d]
    if cfg.esm_identity:  # esm_proj (weight, bias) + e_noprot
        emb += de * d + d + d
        lin_w_root += de * d
        largest.append(de * d)
    else:  # a learned (G, d) identity table
        emb += G * d
        largest.append(G * d)
    if cfg.context_mlp:  # Linear(G → h) → ReLU → Linear(h → d)
        emb += G * h + h + h * d + d
        lin_w_root += G * h + h * d
        largest.append(G * h)
    decoder = 0
    if cfg.sample_weight > 0:  # LayerNorm → Linear(d → G), or "gene": Linear(d → d) + G biases
        if cfg.sample_decoder == "linear":
            decoder = 2 * d + d * G + G
            lin_w_root += d * G
            largest.append(d * G)
        else:
            decoder = 2 * d + d * d + d + G
            lin_w_root += d * d
    sample = d if cfg.sample_token else 0
    root = emb + sample + decoder + 2 * d + d + 1  # + final norm + head
    return dict(
        block=block,
        root=root,
        total=cfg.n_layers * block + root,
        lin_w=cfg.n_layers * lin_w_block + lin_w_root,
        lin_w_block=lin_w_block,
        per_token=cfg.n_layers * block + 2 * d + d + 1,
        largest=max(largest),
    )


def plan_memory(
    config,
    *,
    micro_batch: int = 1,
    n_genes: int | None = None,
    precision: str = "bf16",
    checkpointing: bool | None = None,
    fsdp_world: int = 1,
    ddp: bool = False,
    accum: int = 1,
    adamw: str | None = None,
    embed_backend: str | None = None,
) -> MemoryPlan:
    """Estimate the per-GPU peak memory and FLOPs of one pretraining step.

    Parameters
    ----------
    config : BulkFormerConfig or preset name (``"tiny"``, ``"small"``, ``"base"``, ``"base100m"``)
    micro_batch : samples per forward/backward on this rank (``--batch-size``)
    n_genes : genes per sample (tokens); default ``config.n_genes``
    precision : ``"bf16"`` (autocast, as on CUDA) or ``"fp32"``
    checkpointing : activation checkpointing; default ``config.activation_checkpointing``
    fsdp_world : FSDP2 world size (1: no sharding)
    ddp : DDP (adds its gradient buckets: one more fp32 copy of the gradients)
    accum : micro-batches per optimizer step (their inputs are prepared up front)
    adamw : AdamW implementation: ``"fused"`` (no scratch; what pretrain uses on CUDA),
        ``"foreach"`` (one fp32 copy of the parameters) or ``"single"`` (torch's CPU default:
        two fp32 copies of the largest parameter); default fused for bf16, single for fp32
    embed_backend : ``"triton"`` (fused, CUDA) or ``"torch"`` (reference); default by precision

    Returns
    -------
    MemoryPlan ; ``.peak`` is the estimate in bytes, ``.summary()`` the breakdown.
    """
    from ..model import BulkFormerConfig

    if isinstance(config, str):
        config = BulkFormerConfig.from_preset(config)
    if n_genes is not None and n_genes != config.n_genes:
        config = config.replace(n_genes=int(n_genes))
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"plan_memory: precision must be 'bf16' or 'fp32', got {precision!r}")
    for name, v in (("micro_batch", micro_batch), ("fsdp_world", fsdp_world), ("accum", accum)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"plan_memory: {name} must be a positive integer, got {v!r}")
    ckpt = config.activation_checkpointing if checkpointing is None else bool(checkpointing)
    amp = precision == "bf16"
    adamw = adamw or ("fused" if amp else "single")
    if adamw not in ("fused", "foreach", "single"):
        raise ValueError(f"plan_memory: adamw must be fused|foreach|single, got {adamw!r}")
    triton = (embed_backend or ("triton" if amp else "torch")) == "triton"
    cfg = config
    B, G, d, m, H, L = (
        micro_batch,
        cfg.n_genes,
        cfg.d_model,
        cfg.mlp_width,
        cfg.n_heads,
        cfg.n_layers,
    )
    T = B * G  # gene tokens
    S1 = G + 1 if cfg.sample_token else G  # tokens the encoder runs: [SAMPLE] + G genes
    TE = B * S1
    a = 2 if amp else 4  # bytes of an activation element
    n = _counts(cfg)
    W = fsdp_world
    shard = (lambda x: math.ceil(x / W)) if W > 1 else (lambda x: x)

    params = 4 * shard(n["total"])
    grads = 4 * shard(n["total"]) * (2 if ddp and W == 1 else 1)
    optimizer = 8 * shard(n["total"])
    buffers = 4 * G * cfg.d_esm + G if cfg.esm_identity else 0  # ESM2 matrix (fp32), has_protein
    if cfg.pca_prior:  # the PCA prior: mean, components (G × k), penalties (fp32)
        buffers += 4 * (G + G * cfg.pca_prior + cfg.pca_prior + 1)
    inputs = accum * B * G * (4 + 1 + 1)  # x fp32, missing, masked (bool)
    fsdp_unsharded = 0
    if W > 1:  # root group (embedding, norm, head) stays gathered; 2 blocks gathered + 1 grad
        fsdp_unsharded = 4 * (n["root"] + 3 * n["block"])

    # ---- saved activations
    # the residual stream's element size: under autocast the ESM2 projection makes it bf16, but
    # a learned identity table (esm_identity off) is fp32 and so is the embedding sum then
    r = 4 if amp and not cfg.esm_identity else a
    block_full = TE * (a * (6 * d + 2 * m) + r * 2 * d + 16 + 4 * H)
    if cfg.dropout > 0:
        block_full += TE * 2 * d  # the two residual dropout masks (bool)
    acts = {}
    emb = T * (1 + 1)  # hide, and its expanded view's condition (bool)
    if cfg.context_mlp:
        emb += B * G * a + B * cfg.context_width * a * 2  # context MLP inputs
    if amp and cfg.esm_identity:
        emb += G * cfg.d_esm * 2  # bf16 copy of the ESM2 matrix saved by esm_proj
    if not triton:
        emb += 0  # the reference keeps no (B, G, d) tensor for backward (x is data)
    acts["embedding"] = emb
    # final norm input (a·d per encoder token) and statistics, head input (a·d per gene),
    # token loss (pred − x fp32, mask)
    final = TE * (r * d + 8) + T * (a * d + 9)
    if cfg.pca_prior:  # the prior's (B, G) fp32 output, alive from the start of forward
        final += T * 4
    if cfg.sample_weight > 0:
        # sample decoder: its norm input/stats and Linear input (B × d: small); the residual
        # head's sum and the sample loss's (sample_pred − x) fp32 and not-missing mask per gene
        final += B * (2 * a * d + 8) + T * (4 + 1 + 1)
        if cfg.sample_decoder == "gene":
            final += B * d * a + G * d * a  # the (B, d) product's inputs: y and the identities
    # Transients. Backward frees each node's saved tensors right after the node runs, so what
    # it adds at a time is about one gradient of the MLP hidden (a·m per token). Under
    # autocast the final norm output (fp32, 4·d) is alive at the end of forward. With
    # checkpointing the last block is recomputed after the head and final norm have been
    # backpropagated (their saved tensors freed): its saved tensors, the residual gradient (a·d)
    # and the same MLP gradient are then alive at once.
    t_fwd = TE * 4 * d if amp else 0
    t_bwd = TE * a * m
    if ckpt:
        acts[f"block inputs (checkpointed) × {L}"] = L * TE * r * d
        if final + t_fwd >= block_full + t_bwd + TE * r * d:
            acts["final norm, head, loss"] = final
            transient = t_fwd
        else:
            acts["one recomputed block"] = block_full
            transient = t_bwd + TE * r * d
    else:
        acts[f"encoder blocks × {L}"] = L * block_full
        acts["final norm, head, loss"] = final
        transient = max(t_bwd, t_fwd)
    weights16 = 2 * n["lin_w"] if amp else 0
    if amp and W > 1:
        weights16 = 2 * (n["lin_w"] - L * n["lin_w_block"] + 2 * n["lin_w_block"])
    opt_temp = {"fused": 0, "foreach": 4 * shard(n["total"]), "single": 8 * shard(n["largest"])}[
        adamw
    ]

    # ---- FLOPs (the model's formula, BulkFormer.flops_per_token: 6N + 12·L·d·S per gene
    # token, the context MLP and the sample decoder amortised over the G tokens of a sample;
    # the one [SAMPLE] token and the ESM2 projection are left out, as there)
    h = cfg.context_width
    per_tok = 6 * n["per_token"] + 12 * L * d * G
    if cfg.context_mlp:
        per_tok += 6 * (G * h + h * d) / G
    if cfg.sample_weight > 0:
        per_tok += 6 * d * (G if cfg.sample_decoder == "linear" else d + G) / G
    flops_model = per_tok * T
    flops_hw = flops_model + (2 * L * n["block"] + 4 * L * d * G) * T if ckpt else flops_model
    return MemoryPlan(
        config=cfg,
        micro_batch=B,
        n_genes=G,
        precision=precision,
        checkpointing=ckpt,
        fsdp_world=W,
        ddp=ddp,
        params=params,
        buffers=buffers,
        optimizer=optimizer,
        grads=grads,
        weights16=weights16,
        fsdp_unsharded=fsdp_unsharded,
        inputs=inputs,
        activations=acts,
        transient=transient,
        optimizer_temp=opt_temp,
        n_params=n["total"],
        flops_model=flops_model,
        flops_hw=flops_hw,
    )


# ====================================================================== what fits
@dataclass
class FitResult:
    """What fits on one GPU of ``gpu_memory`` bytes (:func:`fit_gpu`)."""

    gpu_memory: int
    usable: int
    precision: str
    n_genes: int
    options: list = field(default_factory=list)  # dicts: checkpointing, fsdp_world, micro_batch
    best: dict | None = None  # the recommended setting (fastest that fits)

    def summary(self) -> str:
        lines = [
            f"on a {format_bytes(self.gpu_memory)} GPU ({format_bytes(self.usable)} usable by "
            f"the planner), {self.n_genes:,} genes, {self.precision}:"
        ]
        for o in self.options:
            what = f"checkpointing {'on ' if o['checkpointing'] else 'off'}" + (
                f", FSDP × {o['fsdp_world']}" if o["fsdp_world"] > 1 else ""
            )
            if o["micro_batch"]:
                lines.append(
                    f"  {what}: largest micro-batch {o['micro_batch']} "
                    f"(peak {format_bytes(o['peak'])})"
                )
            else:
                lines.append(
                    f"  {what}: does not fit (micro-batch 1 needs {format_bytes(o['peak'])})"
                )
        if self.best is None:
            lines.append("  nothing fits: use FSDP over more GPUs, fewer genes or a smaller preset")
        else:
            b = self.best
            flags = ["--bf16" if self.precision == "bf16" else "--precision fp32"]
            flags.append(f"--batch-size {b['micro_batch']}")
            if b["checkpointing"]:
                flags.append("--checkpointing")
            if b["fsdp_world"] > 1:
                flags.append(f"--fsdp (torchrun --nproc_per_node {b['fsdp_world']})")
            lines.append("  recommended: " + " ".join(flags) + " (and --accum for a larger batch)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "gpu_memory": self.gpu_memory,
            "usable": self.usable,
            "precision": self.precision,
            "n_genes": self.n_genes,
            "options": self.options,
            "best": self.best,
        }


def _largest_batch(config, usable: int, limit: int = 4096, **kw) -> tuple[int, int]:
    """(largest micro-batch whose plan fits in ``usable``, its peak) — (0, peak of 1) if none.
    The peak grows with the micro-batch, so a doubling then bisection search is exact."""
    p1 = plan_memory(config, micro_batch=1, **kw).peak
    if p1 > usable:
        return 0, p1
    lo, hi = 1, 2
    while hi <= limit and plan_memory(config, micro_batch=hi, **kw).peak <= usable:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_memory(config, micro_batch=mid, **kw).peak <= usable:
            lo = mid
        else:
            hi = mid
    return lo, plan_memory(config, micro_batch=lo, **kw).peak


def fit_gpu(
    config,
    gpu_memory,
    *,
    n_genes: int | None = None,
    precision: str = "bf16",
    fsdp_worlds: tuple[int, ...] = (2, 4, 8),
    **kw,
) -> FitResult:
    """The largest micro-batch that fits on a GPU, with and without activation checkpointing.

    When micro-batch 1 does not fit even with checkpointing, FSDP over ``fsdp_worlds`` GPUs is
    tried too. The recommendation is the largest micro-batch without checkpointing whenever one
    sample fits (at ~20k tokens a sample already fills a GPU's compute, and checkpointing costs
    ~1/3 more FLOPs; reach a larger batch with ``--accum``), else the checkpointed one.
    """
    total = parse_memory(gpu_memory)
    usable = usable_memory(total)
    res = FitResult(total, usable, precision, 0)
    for world in (1,) + tuple(fsdp_worlds):
        for ckpt in (False, True):
            mb, peak = _largest_batch(
                config, usable, n_genes=n_genes, precision=precision, checkpointing=ckpt,
                fsdp_world=world, **kw,
            )  # fmt: skip
            res.options.append(
                {"checkpointing": ckpt, "fsdp_world": world, "micro_batch": mb, "peak": peak}
            )
        if any(o["micro_batch"] for o in res.options):
            break
    res.n_genes = plan_memory(config, n_genes=n_genes, precision=precision, **kw).n_genes
    fits = [o for o in res.options if o["micro_batch"]]
    if fits:
        off = [o for o in fits if not o["checkpointing"]]
        res.best = off[0] if off else fits[0]
    return res


# ====================================================================== measuring
def live_tensor_bytes(*objects) -> int:
    """Bytes of the distinct storages of the tensors in ``objects`` (tensors, modules,
    optimizers, dicts / lists of tensors), each storage counted once."""
    import torch

    seen: dict[tuple[str, int], int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[(str(t.device), st.data_ptr())] = st.nbytes()
        elif isinstance(t, torch.nn.Module):
            for x in list(t.parameters()) + list(t.buffers()):
                add(x)
                if x.grad is not None:
                    add(x.grad)
        elif isinstance(t, torch.optim.Optimizer):
            for s in t.state.values():
                add(s)
        elif isinstance(t, dict):
            for v in t.values():
                add(v)
        elif isinstance(t, (list, tuple)):
            for v in t:
                add(v)

    for o in objects:
        add(o)
    return sum(seen.values())


def _cpu_peak_delta(fn):
    """Run ``fn()`` under the PyTorch profiler with memory tracking; return (result, the peak of
    bytes allocated by the CPU allocator during the call, minus what was allocated at its start).

    Every allocation and free of PyTorch's CPU allocator is an event with its size and time; the
    running sum of those, in time order, is the live-bytes curve whose maximum is the peak.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    allocs = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if str(node.tag).endswith("Allocation"):
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    if not allocs:
        raise RuntimeError("measure_peak_memory: the profiler recorded no CPU allocations")
    allocs.sort(key=lambda e: e[0])
    cur = peak = 0
    for _, size in allocs:
        cur += size
        peak = max(peak, cur)
    return result, peak


def measure_peak_memory(fn, device="cpu") -> tuple[object, int]:
    """``(fn(), peak bytes allocated during the call above what was allocated before it)``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU: the profiler's
    allocation events (``torch.profiler.profile(profile_memory=True)``), summed in time order.
    Add the bytes alive before the call (:func:`live_tensor_bytes`, or
    ``torch.cuda.memory_allocated()``) for the absolute peak.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result = fn()
        torch.cuda.synchronize(dev)
        return result, torch.cuda.max_memory_allocated(dev) - before
    return _cpu_peak_delta(fn)


def measure_train_step(
    config,
    *,
    micro_batch: int,
    device="cpu",
    precision: str = "fp32",
    checkpointing: bool = False,
    compile: bool = False,
    steps: int = 2,
    mask_fraction: float = 0.15,
    seed: int = 0,
    timed_steps: int = 0,
) -> dict:
    """Run ``steps`` pretraining steps of a random model on random data, the way
    :func:`bulkformer.train.pretrain` does (autocast, the pretraining objective
    :func:`~bulkformer.train.objectives.pretrain_sse`, clipping, AdamW), and measure the
    last one: peak memory (the step's tensors alive before it + the peak of what it allocates),
    seconds, tokens/s.

    The first steps build the AdamW state (and compile), so the last is the steady state. With
    ``timed_steps``, that many more steps are timed (seconds per step, tokens/s) instead of the
    measured one (on CPU the profiler slows it down).
    """
    import torch

    from ..model import BulkFormer
    from .objectives import pretrain_sse

    dev = torch.device(device)
    cfg = config.replace(activation_checkpointing=bool(checkpointing))
    torch.manual_seed(seed)
    model = BulkFormer(cfg).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        fused=dev.type == "cuda",
    )
    fwd = torch.compile(model) if compile else model
    amp = precision == "bf16"
    g = torch.Generator(device=dev).manual_seed(seed)
    B, G = micro_batch, cfg.n_genes
    x = torch.randn(B, G, device=dev, generator=g)
    missing = torch.zeros(B, G, dtype=torch.bool, device=dev)
    masked = torch.rand(B, G, device=dev, generator=g) < mask_fraction

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = fwd(x, missing=missing, masked=masked)
        total, _, _ = pretrain_sse(
            out, x, masked, cfg.sample_weight, targets=cfg.sample_targets,
            mask_fraction=mask_fraction,
        )  # fmt: skip
        loss = total / masked.sum().clamp_min(1)
        del out, total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(steps - 1):
        step()
    # what this step's own tensors hold before it (model, AdamW state, inputs): not the CUDA
    # allocator's total, which also holds whatever earlier work in the process left behind
    before = live_tensor_bytes(model, opt, x, missing, masked)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    loss, delta = measure_peak_memory(step, dev)
    dt = time.perf_counter() - t0
    if timed_steps:  # the speed from steps outside the memory measurement
        t0 = time.perf_counter()
        for _ in range(timed_steps):
            loss = step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = (time.perf_counter() - t0) / timed_steps
    return {
        "peak": before + delta,
        "before": before,
        "seconds": dt,
        "tokens_per_s": B * G / dt,
        "loss": float(loss),
        "n_params": model.num_parameters(),
        "flops_per_token": model.flops_per_token(),
    }


# ====================================================================== command line
def run_plan_cli(args) -> int:
    """``bulkformer pretrain --plan [--gpu-memory SIZE]``: print the estimate (and what fits).

    The config is ``--config`` (a preset or a JSON file); the gene count that of ``--corpus``
    when given, else ``--n-genes``, else the config's. ``--batch-size``, ``--precision``
    (auto = bf16, as on a GPU), ``--checkpointing``, ``--accum`` and ``--fsdp`` (world size from
    ``WORLD_SIZE`` or ``--fsdp-world``) are those of the run being planned.
    """
    from ..model import PRESETS, BulkFormerConfig

    cfg = args.config
    if cfg in PRESETS:
        cfg = BulkFormerConfig.from_preset(cfg)
    else:
        cfg = BulkFormerConfig.from_json(cfg)
    n_genes = getattr(args, "n_genes", None)
    if args.corpus:
        from ..data.corpus import Corpus

        n_genes = Corpus.open(args.corpus).n_genes
    precision = "fp32" if args.precision == "fp32" else "bf16"
    world = getattr(args, "fsdp_world", None) or int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = args.distributed == "fsdp"
    kw = dict(n_genes=n_genes, precision=precision)
    plan = plan_memory(
        cfg, micro_batch=args.batch_size, checkpointing=args.checkpointing or None,
        fsdp_world=world if fsdp else 1, ddp=not fsdp and world > 1, accum=args.accum, **kw,
    )  # fmt: skip
    print(plan.summary())
    if args.gpu_memory:
        print(fit_gpu(cfg, args.gpu_memory, accum=args.accum, **kw).summary())
    return 0
