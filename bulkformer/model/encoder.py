"""Pre-norm BERT-style encoder over all G gene tokens (no padding, no causal mask).

Attention runs through flash-attn's ``flash_attn_func`` when it is installed and the inputs are
fp16/bf16 on CUDA, else through ``torch.nn.functional.scaled_dot_product_attention`` (which picks
its own flash / memory-efficient / cuDNN kernel on GPU and a flash-style kernel on CPU). Both
keep memory linear in G, which is what makes 20,010-token sequences affordable.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import BulkFormerConfig

__all__ = ["Block", "Encoder", "SelfAttention", "flash_attn_available", "resolve_attn_backend"]

logger = logging.getLogger(__name__)


@functools.cache
def _flash_attn_func():
    """``flash_attn.flash_attn_func``, or None when flash-attn is not installed (imported once)."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def flash_attn_available() -> bool:
    """True when the flash-attn package can be imported."""
    return _flash_attn_func() is not None


def resolve_attn_backend(backend: str, x: torch.Tensor, head_dim: int) -> str:
    """Turn ``"auto" | "flash" | "sdpa"`` into the backend that runs on ``x``: ``"flash"|"sdpa"``.

    ``"auto"`` takes flash-attn when it is installed, ``x`` is fp16/bf16 on CUDA and
    ``head_dim <= 256``; ``"flash"`` raises when one of those does not hold.
    """
    ok = (
        x.is_cuda
        and x.dtype in (torch.float16, torch.bfloat16)
        and head_dim <= 256
        and flash_attn_available()
    )
    if backend == "sdpa" or (backend == "auto" and not ok):
        return "sdpa"
    if backend in ("flash", "auto") and ok:
        return "flash"
    if backend != "flash":
        raise ValueError(f"attention backend must be 'auto', 'flash' or 'sdpa', got {backend!r}")
    raise RuntimeError(
        f"attention backend 'flash' needs flash-attn installed (installed: "
        f"{flash_attn_available()}), fp16/bf16 CUDA inputs (got {x.dtype} on {x.device}, use "
        f"torch.autocast) and head_dim <= 256 (got {head_dim})"
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens, no mask."""

    def __init__(self, config: BulkFormerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(d, 3 * d, bias=config.bias)
        self.proj = nn.Linear(d, d, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.backend = config.attn_backend  # requested: "auto" | "flash" | "sdpa"
        self.last_backend: str | None = None  # the one that ran in the latest forward

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, backend={self.backend!r}, last={self.last_backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        qkv = self.qkv(x).view(B, S, 3, H, Dh)  # (B, S, 3, H, Dh)
        p = self.attn_dropout if self.training else 0.0
        backend = resolve_attn_backend(self.backend, qkv, Dh)
        if backend != self.last_backend:
            logger.info("attention backend: %s (requested %r)", backend, self.backend)
            self.last_backend = backend
        if backend == "flash":
            q, k, v = qkv.unbind(2)  # (B, S, H, Dh) each
            y = _flash_attn_func()(q, k, v, dropout_p=p, causal=False)  # (B, S, H, Dh)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, Dh) each
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, S, Dh)
            y = y.transpose(1, 2)  # (B, S, H, Dh)
        y = y.reshape(B, S, D)  # (B, S, D)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d→h) → GELU → Linear(h→d) → dropout."""

    def __init__(self, config: BulkFormerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_width, bias=config.bias)
        self.proj = nn.Linear(config.mlp_width, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, S, D)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: BulkFormerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, S, D)
        x = x + self.mlp(self.ln_2(x))  # (B, S, D)
        return x


class Encoder(nn.Module):
    """``n_layers`` blocks; with ``activation_checkpointing`` each block is recomputed in backward
    (only its input is kept), trading ~1 extra forward for O(L) fewer saved activations."""

    def __init__(self, config: BulkFormerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.activation_checkpointing = config.activation_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)  # (B, S, D)
            else:
                x = block(x)  # (B, S, D)
        return x
