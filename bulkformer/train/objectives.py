"""Pretraining objectives on a :class:`~bulkformer.model.BulkFormerOutput`, as sums.

Both terms are *sums* of squared errors over the masked (non-missing) genes; the training loop
divides them by the masked count of the whole global batch, so the mean is exact over ranks and
micro-batches::

    loss = (token_sse + sample_weight · sample_sse) / masked count

``token_sse``  the per-gene head ``pred`` (each masked gene from its own token)
``sample_sse`` the sample decoder ``sample_pred`` (every masked gene from the one sample vector:
               the sample-bottleneck objective, ``BulkFormerConfig.sample_weight``; 0 when off)

The sample objective is what trains the sample vector: with the token loss alone the tokens an
embedding would pool get no gradient (observed genes carry no loss), and nothing asks one
vector to hold the sample's state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "masked_sse", "pretrain_sse"]


def masked_sse(pred: torch.Tensor, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Σ over masked entries of (pred − x)², in fp32. ``pred``, ``x`` (B, G); ``masked`` (B, G)
    bool (masked and not missing)."""
    return ((pred.float() - x.float()).square() * masked).sum()


def pretrain_sse(
    out,
    x: torch.Tensor,
    masked: torch.Tensor,
    sample_weight: float,
    *,
    targets: str = "observed",
    mask_fraction: float = 0.15,
):
    """``(total, token_sse, sample_sse)``: ``total = token_sse + sample_weight · sample_sse``.

    ``targets="masked"``: ``sample_sse`` sums over the masked genes, like the token term.
    ``targets="observed"``: over every non-missing gene (masked ones included), scaled by
    ``mask_fraction`` so that, divided by the masked count, it is again about a per-gene mean
    (the scale is a constant, so the global normalisation stays exact).

    Parameters
    ----------
    out : BulkFormerOutput of ``model(x, missing=..., masked=masked)``.
    x : (B, G) float targets (z-scores); masked : (B, G) bool.
    sample_weight : weight of the sample objective; 0 (or a model without a decoder) leaves it
        out (``sample_sse`` is then a zero).

    Returns
    -------
    Three fp32 scalars; only ``total`` carries a gradient graph for backward.
    """
    token = masked_sse(out.pred, x, masked)
    if sample_weight > 0 and out.sample_pred is not None:
        if targets == "masked":
            sample = masked_sse(out.sample_pred, x, masked)
        elif targets == "observed":
            keep = out.observed.to(masked.device) | masked  # (B, G): not missing
            sample = mask_fraction * masked_sse(out.sample_pred, x, keep)
        else:
            raise ValueError(
                f"pretrain_sse: targets must be 'observed' or 'masked', got {targets!r}"
            )
        return token + sample_weight * sample, token, sample
    return token, token, torch.zeros((), device=token.device)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, D) (in-batch negatives of this rank)."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.T / tau  # (B, B)
    labels = torch.arange(len(z1), device=z1.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
