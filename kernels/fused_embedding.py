"""Fused BulkFormer input embedding: gene identity + rotary expression embedding + sample context.

The op (docs/architecture.md, "Formulas"), for sample ``b``, gene ``g`` and feature ``j``::

    E[b, g, :] = Wesm[g, :] + (e_mask if hide[b, g] else REE(x[b, g])) + context[b, :]

    REE(x) = [cos(x / f_0) ... cos(x / f_{d/2-1}), sin(x / f_0) ... sin(x / f_{d/2-1})]
    f_i    = 10 ** (scale * i / d)

``Wesm`` (G, d) is the projected ESM2 gene-identity matrix, ``context`` (B, d) the per-sample
context vector, ``e_mask`` (d,) the learned mask embedding and ``hide`` (B, G) is true where the
gene is masked for reconstruction or missing from the source.

Layers, Liger-Kernel style:

1. ``_embed_fwd_kernel`` / ``_embed_bwd_kernel``: ``@triton.jit`` kernels. The forward does the
   gather, the REE, the select and both broadcasts in one pass, writing E once. The backward
   reads dE once and produces dWesm (sum over b), and per-(b, gene-block) partial sums for
   dcontext and de_mask, which a second tiny ``sum`` reduces: no atomics, deterministic.
2. ``fused_embedding_fwd`` / ``fused_embedding_bwd``: launchers (checks, grid, block sizes).
3. ``FusedEmbeddingFunction``: the ``torch.autograd.Function``.
4. ``fused_embedding(..., backend=)``: the functional form the model calls; ``backend="torch"``
   runs ``fused_embedding_ref``, the readable pure-PyTorch reference of the same op.

Numerics: both paths compute in fp32 (fp64 when every floating input is fp64) and cast the result
to ``out_dtype`` (default: the dtype of ``Wesm``); the backward accumulates in the same precision.
No gradient flows to ``x``: it is data (z-scored expression), never a trainable input, so the
Triton backward returns ``None`` for it (the reference, being plain autograd, would give one).

Triton is imported when this module is imported, guarded: without it only the reference runs.
Set ``TRITON_INTERPRET=1`` *before* importing this module to run the kernels on CPU (tests).
"""

from __future__ import annotations

import logging
import math
import os

import torch

try:  # guarded: the package works without Triton (reference path only)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None

__all__ = [
    "BACKENDS",
    "ENV_BACKEND",
    "FusedEmbeddingFunction",
    "HAS_TRITON",
    "fused_embedding",
    "fused_embedding_bwd",
    "fused_embedding_fwd",
    "fused_embedding_ref",
    "ree",
    "ree_inv_frequencies",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

HAS_TRITON = triton is not None
BACKENDS = ("auto", "triton", "torch")
ENV_BACKEND = "BULKFORMER_EMBED_BACKEND"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- reference
def ree_inv_frequencies(d: int, scale: float = 4.0, *, device=None) -> torch.Tensor:
    """``1 / f_i = 10 ** (-scale * i / d)`` for ``i = 0 … d/2 - 1``, as float64 of shape (d/2,)."""
    i = torch.arange(d // 2, dtype=torch.float64, device=device)
    return torch.pow(10.0, -scale * i / d)


def ree(x: torch.Tensor, d: int, scale: float = 4.0) -> torch.Tensor:
    """Rotary expression embedding of every value of ``x``.

    Parameters
    ----------
    x : Tensor, any shape ``(...)``, floating
        Expression values (z-scores).
    d : int
        Embedding width, even.
    scale : float
        ``s`` in ``f_i = 10 ** (s * i / d)``.

    Returns
    -------
    Tensor of shape ``(..., d)`` in the dtype of ``x``: the cosines in the first half, the sines
    in the second. The angle is ``x / f_i`` with ``f_i`` computed in float64, then rounded to
    ``x.dtype``.
    """
    if d % 2:
        raise ValueError(f"REE width d must be even, got d={d}")
    f = torch.pow(10.0, scale * torch.arange(d // 2, dtype=torch.float64, device=x.device) / d)
    ang = x[..., None] / f.to(x.dtype)  # (..., d/2)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)  # (..., d)


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """fp64 when every floating input is fp64, else fp32 (half precision is upcast)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in ts) else torch.float32


def fused_embedding_ref(
    x: torch.Tensor,
    hide: torch.Tensor,
    wesm: torch.Tensor,
    context: torch.Tensor,
    e_mask: torch.Tensor,
    *,
    scale: float = 4.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Pure-PyTorch input embedding: the readable definition, CPU fallback and test oracle.

    Parameters
    ----------
    x : (B, G) float
        Expression z-scores.
    hide : (B, G) bool
        True where the gene is masked or missing: those positions get ``e_mask`` instead of REE.
    wesm : (G, d) float
        Projected gene-identity embeddings.
    context : (B, d) float
        Sample context vectors.
    e_mask : (d,) float
        Mask embedding.
    scale : float
        REE scaling factor ``s``.
    out_dtype : torch.dtype, optional
        Output dtype; default ``wesm.dtype``.

    Returns
    -------
    (B, G, d) tensor in ``out_dtype``, computed in fp32 (fp64 if all inputs are fp64).
    """
    cdt = _compute_dtype(x, wesm, context, e_mask)
    d = wesm.shape[-1]
    emb = ree(x.to(cdt), d, scale)  # (B, G, d)
    emb = torch.where(hide[..., None], e_mask.to(cdt), emb)  # (B, G, d)
    out = wesm.to(cdt)[None] + emb + context.to(cdt)[:, None]  # (B, G, d)
    return out.to(out_dtype or wesm.dtype)


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _embed_fwd_kernel(
        x_ptr,  # (B, G) float
        hide_ptr,  # (B, G) uint8
        wesm_ptr,  # (G, D) float
        ctx_ptr,  # (B, D) float
        emask_ptr,  # (D,) float
        invf_ptr,  # (D/2,) ACC: 1 / f_i
        out_ptr,  # (B, G, D)
        G,
        D,
        HALF,
        ACC: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_g = tl.program_id(0)
        pid_d = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_g = offs_g < G
        mask_d = offs_d < D
        mask = mask_g[:, None] & mask_d[None, :]

        x = tl.load(x_ptr + b * G + offs_g, mask=mask_g, other=0.0).to(ACC)  # (BG,)
        hide = tl.load(hide_ptr + b * G + offs_g, mask=mask_g, other=0) != 0  # (BG,)
        is_cos = offs_d < HALF
        i = tl.where(is_cos, offs_d, offs_d - HALF)  # frequency index of column j
        invf = tl.load(invf_ptr + i, mask=mask_d, other=0.0).to(ACC)  # (BD,)
        ang = x[:, None] * invf[None, :]  # (BG, BD)
        emb = tl.where(is_cos[None, :], tl.cos(ang), tl.sin(ang))
        em = tl.load(emask_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
        emb = tl.where(hide[:, None], em[None, :], emb)

        w = tl.load(wesm_ptr + offs_g[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        c = tl.load(ctx_ptr + b * D + offs_d, mask=mask_d, other=0.0).to(ACC)
        out = w.to(ACC) + emb + c[None, :]
        out_ptrs = out_ptr + b * G * D + offs_g[:, None] * D + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _embed_bwd_kernel(
        dout_ptr,  # (B, G, D)
        hide_ptr,  # (B, G) uint8
        dwesm_ptr,  # (G, D): sum over b of dE
        dctx_part_ptr,  # (B, NGB, D) ACC: per gene-block sums of dE
        dmask_part_ptr,  # (B, NGB, D) ACC: per gene-block sums of dE at hidden positions
        B,
        G,
        D,
        NGB,
        ACC: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_g = tl.program_id(0)
        pid_d = tl.program_id(1)
        offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_g = offs_g < G
        mask_d = offs_d < D
        mask = mask_g[:, None] & mask_d[None, :]

        acc_w = tl.zeros((BLOCK_G, BLOCK_D), dtype=ACC)
        t_ptrs = dout_ptr + offs_g[:, None] * D + offs_d[None, :]  # sample 0; pointers are 64-bit
        h_ptrs = hide_ptr + offs_g
        part_off = pid_g * D + offs_d  # (BD,) into the (B, NGB, D) partials
        for _ in range(0, B):
            t = tl.load(t_ptrs, mask=mask, other=0.0).to(ACC)  # (BG, BD): dE read once
            hide = tl.load(h_ptrs, mask=mask_g, other=0) != 0  # (BG,)
            acc_w += t
            tl.store(dctx_part_ptr + part_off, tl.sum(t, axis=0), mask=mask_d)
            tm = tl.where(hide[:, None], t, 0.0)
            tl.store(dmask_part_ptr + part_off, tl.sum(tm, axis=0), mask=mask_d)
            t_ptrs += G * D
            h_ptrs += G
            dctx_part_ptr += NGB * D
            dmask_part_ptr += NGB * D
        dw_ptrs = dwesm_ptr + offs_g[:, None] * D + offs_d[None, :]
        tl.store(dw_ptrs, acc_w.to(dwesm_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers
def _interpreted() -> bool:
    """True when the kernels were built for the Triton CPU interpreter (TRITON_INTERPRET=1)."""
    return HAS_TRITON and type(_embed_fwd_kernel).__name__ == "InterpretedFunction"


def _block_sizes(d: int) -> tuple[int, int]:
    """(BLOCK_G, BLOCK_D): small register tiles on GPU; few, large programs in the interpreter."""
    block_d = min(triton.next_power_of_2(d), 128 if _interpreted() else 64)
    block_g = 256 if _interpreted() else 32
    return block_g, block_d


def _check_inputs(x, hide, wesm, context, e_mask) -> tuple[int, int, int]:
    """Validate shapes, dtypes, devices and contiguity; return (B, G, d)."""
    names = {"x": x, "hide": hide, "wesm": wesm, "context": context, "e_mask": e_mask}
    for name, t in names.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fused_embedding: {name} must be a torch.Tensor, got {type(t)}")
        if not t.is_contiguous():
            raise ValueError(f"fused_embedding: {name} must be contiguous (call .contiguous())")
        if t.device != x.device:
            raise ValueError(f"fused_embedding: {name} is on {t.device} but x is on {x.device}")
        if name != "hide" and t.dtype not in _FLOATS:
            raise TypeError(f"fused_embedding: {name} must be floating, got {t.dtype}")
    if x.dim() != 2:
        raise ValueError(f"fused_embedding: x must be (B, G), got shape {tuple(x.shape)}")
    B, G = x.shape
    if hide.shape != (B, G) or hide.dtype not in (torch.bool, torch.uint8):
        raise ValueError(
            f"fused_embedding: hide must be bool (B, G) = ({B}, {G}), got "
            f"{hide.dtype} {tuple(hide.shape)}"
        )
    if wesm.dim() != 2 or wesm.shape[0] != G:
        raise ValueError(
            f"fused_embedding: wesm must be (G, d) with G = {G} genes (x is {tuple(x.shape)}), "
            f"got {tuple(wesm.shape)}"
        )
    d = wesm.shape[1]
    if d < 2 or d % 2:
        raise ValueError(f"fused_embedding: embedding width d = {d} must be even and >= 2")
    if context.shape != (B, d):
        raise ValueError(
            f"fused_embedding: context must be (B, d) = ({B}, {d}), got {tuple(context.shape)}"
        )
    if e_mask.shape != (d,):
        raise ValueError(f"fused_embedding: e_mask must be ({d},), got {tuple(e_mask.shape)}")
    return B, G, d


def _require_triton(device: torch.device) -> None:
    if not HAS_TRITON:
        raise RuntimeError("fused_embedding: backend 'triton' needs the triton package")
    if device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            f"fused_embedding: backend 'triton' got tensors on {device}; it needs a CUDA device, "
            "or TRITON_INTERPRET=1 set before bulkformer.kernels is imported (CPU, slow)"
        )


def fused_embedding_fwd(
    x: torch.Tensor,
    hide: torch.Tensor,
    wesm: torch.Tensor,
    context: torch.Tensor,
    e_mask: torch.Tensor,
    *,
    scale: float = 4.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Launch the forward kernel; same contract as :func:`fused_embedding_ref` (no autograd).

    Grid ``(ceil(G / BLOCK_G), ceil(d / BLOCK_D), B)``; each program writes one
    ``BLOCK_G × BLOCK_D`` tile of E, masked at the ragged edges (any G, any even d).
    """
    B, G, d = _check_inputs(x, hide, wesm, context, e_mask)
    _require_triton(x.device)
    cdt = _compute_dtype(x, wesm, context, e_mask)
    out = torch.empty((B, G, d), dtype=out_dtype or wesm.dtype, device=x.device)
    if out.numel() == 0:
        return out
    invf = ree_inv_frequencies(d, scale, device=x.device).to(cdt)
    block_g, block_d = _block_sizes(d)
    grid = (triton.cdiv(G, block_g), triton.cdiv(d, block_d), B)
    _embed_fwd_kernel[grid](
        x, hide.view(torch.uint8), wesm, context, e_mask, invf, out,
        G, d, d // 2,
        ACC=tl.float64 if cdt == torch.float64 else tl.float32,
        BLOCK_G=block_g, BLOCK_D=block_d,
    )  # fmt: skip
    return out


def fused_embedding_bwd(
    dout: torch.Tensor,
    hide: torch.Tensor,
    *,
    wesm_dtype: torch.dtype,
    context_dtype: torch.dtype,
    e_mask_dtype: torch.dtype,
    acc_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: one read of ``dout`` (B, G, d).

    Returns
    -------
    dwesm : (G, d) = ``dout.sum(0)``
    dcontext : (B, d) = ``dout.sum(1)``
    de_mask : (d,) = ``dout[hide].sum(0)``

    each in the dtype of its primal, accumulated in ``acc_dtype``. The sums over G are written as
    per-gene-block partials (B, ceil(G / BLOCK_G), d) and reduced by ``torch.sum`` afterwards.
    """
    if dout.dim() != 3 or hide.shape != dout.shape[:2]:
        raise ValueError(
            f"fused_embedding_bwd: dout must be (B, G, d) matching hide (B, G), got "
            f"{tuple(dout.shape)} and {tuple(hide.shape)}"
        )
    if not dout.is_contiguous() or not hide.is_contiguous():
        raise ValueError("fused_embedding_bwd: dout and hide must be contiguous")
    _require_triton(dout.device)
    B, G, d = dout.shape
    block_g, block_d = _block_sizes(d)
    ngb = triton.cdiv(G, block_g)
    dwesm = torch.empty((G, d), dtype=wesm_dtype, device=dout.device)
    dctx_part = torch.empty((B, ngb, d), dtype=acc_dtype, device=dout.device)
    dmask_part = torch.empty((B, ngb, d), dtype=acc_dtype, device=dout.device)
    if B == 0:
        dwesm.zero_()
    elif G > 0:
        grid = (ngb, triton.cdiv(d, block_d))
        _embed_bwd_kernel[grid](
            dout, hide.view(torch.uint8), dwesm, dctx_part, dmask_part,
            B, G, d, ngb,
            ACC=tl.float64 if acc_dtype == torch.float64 else tl.float32,
            BLOCK_G=block_g, BLOCK_D=block_d,
        )  # fmt: skip
    dcontext = dctx_part.sum(1).to(context_dtype)  # (B, d)
    de_mask = dmask_part.sum((0, 1)).to(e_mask_dtype)  # (d,)
    return dwesm, dcontext, de_mask


class FusedEmbeddingFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward kernels; no gradient for ``x`` or ``hide``."""

    @staticmethod
    def forward(fctx, x, hide, wesm, context, e_mask, scale, out_dtype):
        out = fused_embedding_fwd(x, hide, wesm, context, e_mask, scale=scale, out_dtype=out_dtype)
        fctx.save_for_backward(hide)
        fctx.dtypes = (wesm.dtype, context.dtype, e_mask.dtype)
        fctx.acc_dtype = _compute_dtype(x, wesm, context, e_mask)
        return out

    @staticmethod
    def backward(fctx, dout):
        (hide,) = fctx.saved_tensors
        wdt, cdt, mdt = fctx.dtypes
        dwesm, dcontext, de_mask = fused_embedding_bwd(
            dout.contiguous(), hide,
            wesm_dtype=wdt, context_dtype=cdt, e_mask_dtype=mdt, acc_dtype=fctx.acc_dtype,
        )  # fmt: skip
        return None, None, dwesm, dcontext, de_mask, None, None


# --------------------------------------------------------------------------- functional
def resolve_backend(backend: str = "auto", device: torch.device | str | None = None) -> str:
    """Turn ``"auto" | "triton" | "torch"`` into the backend that will run: ``"triton"|"torch"``.

    ``"auto"`` reads the environment variable ``BULKFORMER_EMBED_BACKEND`` first (``triton`` or
    ``torch``; explicit arguments are never overridden), then picks Triton on CUDA tensors when
    Triton is installed, and the PyTorch reference everywhere else.
    """
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_BACKEND}={env!r}: expected one of {BACKENDS}")
            backend = env
    if backend != "auto":
        return backend
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return "triton" if HAS_TRITON and dev.type == "cuda" else "torch"


def fused_embedding(
    x: torch.Tensor,
    hide: torch.Tensor,
    wesm: torch.Tensor,
    context: torch.Tensor,
    e_mask: torch.Tensor,
    *,
    scale: float = 4.0,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Input embedding ``E = Wesm[g] + (e_mask if hide else REE(x)) + context[b]``, (B, G, d).

    Same arguments as :func:`fused_embedding_ref`, plus ``backend`` (see
    :func:`resolve_backend`). The Triton path gives gradients to ``wesm``, ``context`` and
    ``e_mask`` only; ``x`` is treated as data.
    """
    if resolve_backend(backend, x.device) == "torch":
        return fused_embedding_ref(x, hide, wesm, context, e_mask, scale=scale, out_dtype=out_dtype)
    if not math.isfinite(scale):
        raise ValueError(f"fused_embedding: scale must be finite, got {scale}")
    return FusedEmbeddingFunction.apply(
        x.contiguous(), hide.contiguous(), wesm.contiguous(), context.contiguous(),
        e_mask.contiguous(), float(scale), out_dtype,
    )  # fmt: skip
