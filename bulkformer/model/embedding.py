"""Input embedding: gene identity (projected ESM2) + expression (REE or mask) + sample context.

``E[b, g] = W·ESM2[g] + (REE(x[b, g]) if observed else e_mask) + MLP(x_masked)[b]``

The sum itself runs through ``bulkformer.kernels.fused_embedding`` (one Triton pass on CUDA, the
PyTorch reference elsewhere); this module owns the parameters and the two small matmuls.

Ablations (``BulkFormerConfig``): ``esm_identity=False`` replaces ``W·ESM2[g]`` by a learned
(G, d) table ``gene_embed`` (no ESM2 buffer, no projection); ``context_mlp=False`` drops the
context term (the kernel gets a zero context). Both only change the tensors handed to the same
kernel, so the Triton and torch backends stay interchangeable.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ._kernels import import_kernel
from .config import BulkFormerConfig

__all__ = ["GeneEmbedding", "random_esm"]

logger = logging.getLogger(__name__)
_fe = import_kernel("fused_embedding")


def random_esm(n_genes: int, d_esm: int, *, seed: int = 0) -> torch.Tensor:
    """A fixed standard-normal stand-in for the ESM2 matrix, (n_genes, d_esm) float32.

    Used when a model is built without real ESM2 embeddings (tests, benchmarks, smoke runs);
    the same ``seed`` always gives the same matrix.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_genes, d_esm, generator=g)


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"BulkFormer: {name} must be a torch.Tensor or numpy array, got {type(a)}")
    return a


class GeneEmbedding(nn.Module):
    """Token embeddings of a batch of expression profiles.

    Parameters
    ----------
    config : BulkFormerConfig
    esm : (n_genes, d_esm) tensor or numpy array, optional
        Fixed ESM2 gene-identity matrix, stored as a float32 buffer (saved with the weights, not
        trained). ``None``: :func:`random_esm` (for tests and benchmarks). Ignored (with
        ``has_protein``) when ``config.esm_identity`` is False.
    has_protein : (n_genes,) bool, optional
        False for genes without a protein embedding: they get the learned ``e_noprot`` vector
        instead of their projected ESM2 row. ``None``: all True.
    """

    def __init__(self, config: BulkFormerConfig, esm=None, has_protein=None) -> None:
        super().__init__()
        G, d, d_esm = config.n_genes, config.d_model, config.d_esm
        self.esm_identity = config.esm_identity
        self.context_mlp = config.context_mlp
        if config.esm_identity:
            self._init_esm(G, d, d_esm, esm, has_protein)
        else:  # ablation: a learned identity per gene instead of the projected ESM2 row
            self.gene_embed = nn.Parameter(torch.zeros(G, d))  # (G, d)
        self.e_mask = nn.Parameter(torch.zeros(d))  # expression token of masked/missing genes
        if config.context_mlp:
            self.context = nn.Sequential(  # sample context MLP(x_masked): G → h → d
                nn.Linear(G, config.context_width),
                nn.ReLU(),
                nn.Linear(config.context_width, d),
            )
        self.dropout = nn.Dropout(config.dropout)
        self.ree_scale = float(config.ree_scale)
        self.backend = config.embed_backend  # requested: "auto" | "triton" | "torch"
        self.last_backend: str | None = None  # the one that ran in the latest forward

    def _init_esm(self, G: int, d: int, d_esm: int, esm, has_protein) -> None:
        esm = random_esm(G, d_esm) if esm is None else _as_tensor(esm, "esm")
        if esm.dim() != 2 or tuple(esm.shape) != (G, d_esm):
            raise ValueError(
                f"BulkFormer: ESM2 matrix has shape {tuple(esm.shape)} but the config expects "
                f"(n_genes, d_esm) = ({G}, {d_esm}): one row per gene of the reference, in order"
            )
        if not torch.is_floating_point(esm):
            raise TypeError(f"BulkFormer: ESM2 matrix must be floating, got {esm.dtype}")
        if has_protein is None:
            has_protein = torch.ones(G, dtype=torch.bool)
        has_protein = _as_tensor(has_protein, "has_protein")
        if has_protein.shape != (G,) or has_protein.dtype != torch.bool:
            raise ValueError(
                f"BulkFormer: has_protein must be a bool vector of length n_genes = {G}, got "
                f"{has_protein.dtype} {tuple(has_protein.shape)}"
            )
        self.register_buffer("esm", esm.detach().to(torch.float32).clone().contiguous())
        self.register_buffer("has_protein", has_protein.detach().clone())
        self.esm_proj = nn.Linear(d_esm, d)  # W: ESM2 → d
        self.e_noprot = nn.Parameter(torch.zeros(d))  # identity of genes without a protein

    def resolve_backend(self, device: torch.device | str) -> str:
        """The backend ``forward`` will use for inputs on ``device``: ``"triton"|"torch"``."""
        return _fe.resolve_backend(self.backend, device)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, last_backend={self.last_backend!r}"

    def identity(self) -> torch.Tensor:
        """(G, d) gene-identity vectors: projected ESM2 rows (``e_noprot`` for genes without a
        protein), or the learned ``gene_embed`` table when ``esm_identity`` is off."""
        if not self.esm_identity:
            return self.gene_embed  # (G, D)
        wesm = self.esm_proj(self.esm)  # (G, D)
        noprot = self.e_noprot.to(wesm.dtype)[None, :]  # (1, D)
        return torch.where(self.has_protein[:, None], wesm, noprot)  # (G, D)

    def forward(self, x: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` (B, G) float with ``hide`` (B, G) bool (masked or missing) → (B, G, d)."""
        return self.embed(x, hide)[0]

    def embed(
        self, x: torch.Tensor, hide: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Token embeddings, the sample context and the gene identities.

        The context MLP sees ``x`` with hidden genes set to 0. The output dtype is that of the
        gene identities (fp32, or bf16/fp16 under autocast); the sum is computed in fp32.

        Returns
        -------
        emb : (B, G, d) token embeddings.
        ctx : (B, d) context MLP output, or None when ``context_mlp`` is off.
        wesm : (G, d) gene identities (:meth:`identity`).
        """
        wesm = self.identity()  # (G, D)
        if self.context_mlp:
            ctx = self.context(x.masked_fill(hide, 0.0))  # (B, D)
            ctx_in = ctx.to(wesm.dtype)
        else:  # the same kernel with a zero context term
            ctx = None
            ctx_in = wesm.new_zeros(x.shape[0], wesm.shape[1])  # (B, D)
        backend = self.resolve_backend(x.device)
        if backend != self.last_backend:
            logger.info("input embedding backend: %s (requested %r)", backend, self.backend)
            self.last_backend = backend
        emb = _fe.fused_embedding(
            x, hide, wesm, ctx_in, self.e_mask, scale=self.ree_scale, backend=backend
        )
        return self.dropout(emb), ctx, wesm
