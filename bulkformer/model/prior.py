"""The linear prior the model's prediction corrects: probabilistic PCA fitted per sample.

A linear factor model of the training rows — gene means ``μ`` (G,), top-k principal directions
``V`` (G, k), a ridge per component ``p`` (k,) — is fitted once, before pretraining, on the
training rows (:func:`bulkformer.train.prior.fit_prior`; the rank k is chosen on held-out training
rows). For each sample with visible genes S (neither missing nor masked)::

    (V_Sᵀ V_S + diag(p)) c = V_Sᵀ (x_S − μ_S),      prior = μ + V c        (B, G)

which is the posterior mean of probabilistic PCA (``p = σ² / λ``: the discarded variance per
dimension over each component's variance), the same estimate as
:class:`bulkformer.eval.imputers.PCAImputer`. The transformer then only has to learn what a
linear model of the same rows cannot predict: the floor of its imputation is the linear
imputer's, not zero.

The prior is a fixed function of the input (buffers, no gradient), saved in the checkpoint.
Until it is fitted (``μ = 0``, ``V = 0``) it predicts exactly 0, so a model built without
pretraining behaves as one without a prior. Unused components (rank below ``max_rank``) are
zero columns with ``p = 1``: their coefficient is exactly 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["PCAPrior"]

#: elements of the (rows, G, k) intermediate of one chunk of the batch (64 MB in fp32)
_CHUNK_ELEMENTS = 1 << 24


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A c = b`` for symmetric positive definite (n, k, k) ``A``, (n, k) ``b``.

    Cholesky, not ``torch.linalg.solve``: batched LU of k ≳ 200 fails on multi-threaded CPU
    builds of torch 2.13 (MKL "SLASWP parameter 6"). Where fp32 round-off makes a factorisation
    fail (a near-singular fit), a jitter of 1e-5 × the mean diagonal is used instead; both are
    computed and selected without a device sync (k³ is small next to the G·k² of ``A``).
    """
    L, info = torch.linalg.cholesky_ex(A)
    jitter = 1e-5 * A.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # (n,)
    eye = torch.eye(A.shape[-1], device=A.device, dtype=A.dtype)
    Lj, _ = torch.linalg.cholesky_ex(A + jitter[:, None, None] * eye)
    L = torch.where((info == 0)[:, None, None], L, Lj)
    return torch.cholesky_solve(b[..., None], L)[..., 0]


class PCAPrior(nn.Module):
    """Per-sample probabilistic-PCA reconstruction ``(x, hide) → (B, G)`` (see the module doc).

    Buffers: ``mean`` (G,), ``components`` (G, max_rank), ``penalty`` (max_rank,), ``rank``
    (the number of fitted components; 0 = not fitted).
    """

    def __init__(self, n_genes: int, max_rank: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("components", torch.zeros(n_genes, max_rank))
        self.register_buffer("penalty", torch.ones(max_rank))
        self.register_buffer("rank", torch.zeros((), dtype=torch.int64))

    @property
    def max_rank(self) -> int:
        return self.components.shape[1]

    @torch.no_grad()
    def set(self, mean, components, penalty) -> None:
        """Load a fitted model: ``mean`` (G,), ``components`` (G, k) orthonormal columns,
        ``penalty`` (k,) positive, k ≤ :attr:`max_rank`."""
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        comp = torch.as_tensor(np.asarray(components), dtype=torch.float32)
        pen = torch.as_tensor(np.asarray(penalty), dtype=torch.float32)
        G, k = comp.shape if comp.dim() == 2 else (-1, -1)
        if mean.shape != self.mean.shape or G != self.mean.shape[0] or pen.shape != (k,):
            raise ValueError(
                f"PCA prior: expected mean ({self.mean.shape[0]},), components "
                f"({self.mean.shape[0]}, k) and penalty (k,), got {tuple(mean.shape)}, "
                f"{tuple(comp.shape)}, {tuple(pen.shape)}"
            )
        if k > self.max_rank:
            raise ValueError(f"PCA prior: {k} components > max_rank {self.max_rank}")
        if not (torch.isfinite(mean).all() and torch.isfinite(comp).all()):
            raise ValueError("PCA prior: mean and components must be finite")
        if not (torch.isfinite(pen).all() and (pen > 0).all()):
            raise ValueError("PCA prior: the penalties must be positive and finite")
        self.mean.copy_(mean)
        self.components.zero_()
        self.components[:, :k] = comp
        self.penalty.fill_(1.0)
        self.penalty[:k] = pen
        self.rank.fill_(k)

    def forward(self, x: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
        """``x`` (B, G) z-scores (values at hidden genes are ignored), ``hide`` (B, G) bool →
        (B, G) float32 reconstruction of every gene from the visible ones."""
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            V = self.components.float()  # (G, k)
            G, k = V.shape
            vis = (~hide).float()  # (B, G)
            r = torch.where(hide, 0.0, x.float() - self.mean)  # (B, G)
            rhs = r @ V  # (B, k)
            eye = torch.diag(self.penalty.float())  # (k, k)
            rows = max(1, _CHUNK_ELEMENTS // max(G * k, 1))
            coef = []
            for a in range(0, len(x), rows):
                Vs = vis[a : a + rows, :, None] * V  # (b, G, k): V on the visible genes
                A = Vs.transpose(1, 2) @ V + eye  # (b, k, k), symmetric positive definite
                coef.append(_spd_solve(A, rhs[a : a + rows]))
            c = torch.cat(coef) if coef else rhs  # (B, k)
            return self.mean + c @ V.T  # (B, G)
