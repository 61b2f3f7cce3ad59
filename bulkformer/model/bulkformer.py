"""The BulkFormer model: input embedding → encoder → final norm → per-gene reconstruction head,
and a sample vector with its own decoder.

Read top to bottom::

    x (B, G) z-scores, missing (G,) or (B, G), masked (B, G)
      hide = missing | masked                                     # (B, G) bool
      c    = MLP(x with hide→0)                                   # (B, D)     context
      E    = W·ESM2[g] + (REE(x) or e_mask) + c                   # (B, G, D)  embedding.py
      E    = [e_sample + c ; E]                                   # (B, 1+G, D) [SAMPLE] token
      h    = LayerNorm(Encoder(E))                                # encoder.py
      s    = h[:, 0]                                              # (B, D)     .sample
      h    = h[:, 1:]                                             # (B, G, D)  .hidden
      sample_pred = SampleDecoder(s)                              # (B, G)     .sample_pred
      prior = PCAPrior(x, hide)                                   # (B, G)     prior.py
      pred = Linear(D → 1)(h) + (prior or sample_pred)            # (B, G)     .pred

Pretraining minimises the MSE of ``pred`` against ``x`` at masked, non-missing genes, plus
``sample_weight`` × the MSE of ``sample_pred`` at the same genes: every gene the model must
recover has to pass through the one vector ``s``, which is what makes ``s`` a sample embedding.

``pred`` is the model's one answer: the token head's per-gene correction of a base value. With
``pca_prior`` (the default) the base is the linear prior — probabilistic PCA of the training
rows fitted to the sample's visible genes (:mod:`.prior`, fitted by pretraining) — so the
transformer learns what a linear model cannot predict, and starts from the linear imputer's
answer rather than from zero. Without it, with ``residual_head``, the base is ``sample_pred``;
with neither, the head alone.
Without ``sample_token`` the sample vector is the context ``c`` (which then does not go through
the encoder); without both there is none (``sample = None``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_file
from .config import BulkFormerConfig
from .embedding import GeneEmbedding
from .encoder import Encoder
from .prior import PCAPrior

__all__ = [
    "BulkFormer",
    "BulkFormerOutput",
    "SampleDecoder",
    "pool",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def pool(hidden: torch.Tensor, observed: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Pool gene embeddings into one vector per sample, over observed genes only.

    Parameters
    ----------
    hidden : (B, G, D) float
    observed : (B, G) or (G,) bool
        Genes to pool over (neither missing nor masked).
    how : "mean" | "max"

    Returns
    -------
    (B, D) tensor in the dtype of ``hidden``; the mean is accumulated in fp32. A sample with no
    observed gene pools to zeros.
    """
    if hidden.dim() != 3:
        raise ValueError(f"pool: hidden must be (B, G, D), got shape {tuple(hidden.shape)}")
    B, G, _ = hidden.shape
    observed = observed.to(device=hidden.device, dtype=torch.bool).expand(B, G)  # (B, G)
    m = observed[..., None]  # (B, G, 1)
    if how == "mean":
        total = hidden.float().masked_fill(~m, 0.0).sum(1)  # (B, D)
        count = observed.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
        return (total / count).to(hidden.dtype)
    if how == "max":
        out = hidden.masked_fill(~m, float("-inf")).amax(1)  # (B, D)
        return out.masked_fill(~observed.any(1, keepdim=True), 0.0)
    raise ValueError(f"pool: how must be 'mean' or 'max', got {how!r}")


@dataclass
class BulkFormerOutput:
    """What :meth:`BulkFormer.forward` returns."""

    pred: torch.Tensor  # (B, G) float32: reconstructed z-score of every gene
    hidden: torch.Tensor  # (B, G, D): final normed hidden states (gene embeddings)
    observed: torch.Tensor  # (B, G) bool: genes neither missing nor masked
    sample: torch.Tensor | None = None  # (B, D): the sample vector (None: the model has none)
    sample_pred: torch.Tensor | None = None  # (B, G) float32: every gene decoded from `sample`
    pooling: str = "mean"  # what pool() gives without an argument (config.pooling)

    def pool(self, how: str | None = None) -> torch.Tensor:
        """(B, D) sample embeddings: ``"sample"`` the sample vector, ``"mean"`` / ``"max"``
        :func:`pool` of ``hidden`` over the observed genes; ``None``: ``config.pooling``."""
        how = how or self.pooling
        if how == "sample":
            if self.sample is None:
                raise ValueError(
                    "pooling 'sample': this model has no sample vector (sample_token and "
                    "context_mlp are both off); use 'mean' or 'max'"
                )
            return self.sample
        return pool(self.hidden, self.observed, how)


class SampleDecoder(nn.Module):
    """Every gene's value from the sample vector, ``(B, D) → (B, G)``.

    ``"linear"``: ``Linear(D → G)(LayerNorm(s))``. ``"gene"`` (scGPT's GEPC form): the product
    of ``Linear(D → D)(LayerNorm(s))`` with each gene's identity vector, plus a bias per gene.
    """

    def __init__(self, config: BulkFormerConfig) -> None:
        super().__init__()
        d, G = config.d_model, config.n_genes
        self.kind = config.sample_decoder
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        if self.kind == "linear":
            self.out = nn.Linear(d, G)
        else:
            self.out = nn.Linear(d, d)
            self.bias = nn.Parameter(torch.zeros(G))

    def forward(self, s: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """``s`` (B, D), ``identity`` (G, D) gene identities → (B, G) float32."""
        y = self.out(self.norm(s))  # (B, G) or (B, D)
        if self.kind == "gene":
            y = y @ identity.to(y.dtype).T + self.bias.to(y.dtype)  # (B, G)
        return y.float()


def _hide_mask(
    x: torch.Tensor, n_genes: int, missing: torch.Tensor | None, masked: torch.Tensor | None
) -> torch.Tensor:
    """Validate the inputs and return ``missing | masked`` as (B, G) bool."""
    if x.dim() != 2 or x.shape[1] != n_genes:
        raise ValueError(
            f"BulkFormer: x must be (batch, n_genes) = (B, {n_genes}) z-scores aligned to the "
            f"model's gene reference, got shape {tuple(x.shape)}"
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"BulkFormer: x must be floating (z-scores), got {x.dtype}")
    B, G = x.shape
    hide = torch.zeros(B, G, dtype=torch.bool, device=x.device)
    for name, m, shapes in (("missing", missing, ((G,), (B, G))), ("masked", masked, ((B, G),))):
        if m is None:
            continue
        if m.dtype != torch.bool or tuple(m.shape) not in shapes:
            raise ValueError(
                f"BulkFormer: {name} must be a bool tensor of shape "
                f"{' or '.join(str(s) for s in shapes)}, got {m.dtype} {tuple(m.shape)}"
            )
        hide = hide | m.to(x.device)  # (B, G)
    return hide


class BulkFormer(nn.Module):
    """Transformer encoder over all G genes of bulk RNA-seq profiles.

    Parameters
    ----------
    config : BulkFormerConfig
    esm : (n_genes, d_esm) tensor or numpy array, optional
        Fixed ESM2 gene-identity matrix in gene-reference order. ``None``: a fixed random matrix
        (:func:`bulkformer.model.embedding.random_esm`; for tests and benchmarks only).
    has_protein : (n_genes,) bool, optional
        False for genes without a protein: they use a learned identity vector instead.
    """

    def __init__(self, config: BulkFormerConfig, esm=None, has_protein=None) -> None:
        super().__init__()
        if not isinstance(config, BulkFormerConfig):
            raise TypeError(f"BulkFormer: config must be a BulkFormerConfig, got {type(config)}")
        self.config = config
        self.embedding = GeneEmbedding(config, esm=esm, has_protein=has_protein)
        self.encoder = Encoder(config)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, 1)  # per-gene reconstruction
        if config.sample_token:
            self.sample_token = nn.Parameter(torch.zeros(config.d_model))  # [SAMPLE] input
        if config.sample_weight > 0:
            self.sample_decoder = SampleDecoder(config)
        if config.pca_prior > 0:
            self.prior = PCAPrior(config.n_genes, config.pca_prior)
        self._init_weights()

    def _init_weights(self) -> None:
        """N(0, init_std) Linear weights, zero biases; residual projections scaled by
        1/sqrt(2L) (GPT-2); the context MLP's G-wide input layer keeps PyTorch's fan-in init."""
        std = self.config.init_std
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear) and name != "embedding.context.0":
                nn.init.normal_(mod.weight, 0.0, std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        for name, p in self.encoder.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
        nn.init.normal_(self.embedding.e_mask, 0.0, std)
        if self.config.esm_identity:
            nn.init.normal_(self.embedding.e_noprot, 0.0, std)
        else:
            nn.init.normal_(self.embedding.gene_embed, 0.0, std)
        if self.config.sample_token:
            nn.init.normal_(self.sample_token, 0.0, std)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        missing: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
    ) -> BulkFormerOutput:
        """Encode a batch of profiles.

        Parameters
        ----------
        x : (B, G) float
            z-scored log1p(TPM) in gene-reference order; values at hidden genes are ignored.
        missing : (G,) or (B, G) bool, optional
            Genes absent from the source (zero-padded); treated like masked genes.
        masked : (B, G) bool, optional
            Genes hidden for reconstruction.

        Returns
        -------
        BulkFormerOutput with ``pred`` (B, G) float32, ``hidden`` (B, G, D), ``observed``,
        ``sample`` (B, D) and ``sample_pred`` (B, G) float32 (None where the config has none).
        """
        cfg = self.config
        hide = _hide_mask(x, cfg.n_genes, missing, masked)  # (B, G)
        # first, so that its (chunked) workspace is freed before the activations pile up
        prior = self.prior(x, hide) if cfg.pca_prior > 0 else None  # (B, G) fp32, no grad
        h, ctx, identity = self.embedding.embed(x, hide)  # (B, G, D), (B, D) | None, (G, D)
        if cfg.sample_token:
            s0 = self.sample_token.to(h.dtype).expand(len(h), -1)  # (B, D)
            if ctx is not None:
                s0 = s0 + ctx.to(h.dtype)
            h = torch.cat([s0[:, None], h], 1)  # (B, 1 + G, D)
        h = self.norm(self.encoder(h))
        if cfg.sample_token:
            sample, h = h[:, 0], h[:, 1:]  # (B, D), (B, G, D)
        else:
            sample = ctx  # (B, D) or None
        pred = self.head(h).squeeze(-1).float()  # (B, G)
        sample_pred = None
        if cfg.sample_weight > 0:
            sample_pred = self.sample_decoder(sample, identity)  # (B, G)
        if prior is not None:  # the token head corrects the linear prior
            pred = pred + prior
        elif cfg.residual_head and sample_pred is not None:  # ... or the sample decoder
            pred = pred + sample_pred
        return BulkFormerOutput(
            pred=pred,
            hidden=h,
            observed=~hide,
            sample=sample,
            sample_pred=sample_pred,
            pooling=cfg.pooling,
        )

    @torch.no_grad()
    def embed_samples(
        self,
        x: torch.Tensor,
        missing: torch.Tensor | None = None,
        how: str | None = None,
    ) -> torch.Tensor:
        """Sample embeddings (B, D): forward in eval mode without gradients, then :func:`pool`
        over observed genes (``how`` defaults to ``config.pooling``). The module's train/eval
        mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            out = self(x, missing=missing)
        finally:
            self.train(was_training)
        return out.pool(how or self.config.pooling)

    # ------------------------------------------------------------------ size and speed
    def num_parameters(self, *, per_token: bool = False) -> int:
        """Number of parameters; ``per_token=True`` counts only those applied to every gene
        token (encoder, final norm, head), i.e. the N of the FLOPs estimate."""
        if per_token:
            mods = (self.encoder, self.norm, self.head)
            return sum(p.numel() for m in mods for p in m.parameters())
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per gene token (docs/architecture.md, "Formulas"):
        ``6·N + 12·L·d·S`` with N = :meth:`num_parameters` ``(per_token=True)`` and S = G, plus
        the context MLP and the sample decoder amortised over the G tokens of their sample. The
        ESM2 projection (once per batch) and the one [SAMPLE] token are left out."""
        c = self.config
        G, h, d = c.n_genes, c.context_width, c.d_model
        n_tok = self.num_parameters(per_token=True)
        context = 6 * (G * h + h * d) / G if c.context_mlp else 0.0
        decoder = 6 * d * (G if c.sample_decoder == "linear" else d + G) / G
        decoder = decoder if c.sample_weight > 0 else 0.0
        return 6 * n_tok + 12 * c.n_layers * d * G + context + decoder

    def estimate_mfu(self, tokens_per_s: float, peak_flops: float = 989e12) -> float:
        """Model FLOPs utilisation: ``flops_per_token · tokens_per_s / peak_flops`` (default peak:
        H100 SXM dense bf16)."""
        return self.flops_per_token() * tokens_per_s / peak_flops

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (all parameters and buffers, ESM2
        matrix included) to ``directory`` (created if needed); returns the directory."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_file(out / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "config": self.config.to_json()})
        self.config.to_json(out / CONFIG_NAME)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        reference_id: str | None = None,
    ) -> BulkFormer:
        """Load a model written by :meth:`save_pretrained`.

        ``reference_id``, when given, must equal the checkpoint's ``config.reference_id``
        (raises :class:`bulkformer.data.genes.ReferenceMismatchError` otherwise).
        """
        from safetensors.torch import load_file

        src = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (src / name).is_file():
                raise FileNotFoundError(f"{src / name} not found: not a BulkFormer checkpoint")
        config = BulkFormerConfig.from_json(src / CONFIG_NAME, legacy=True)
        if reference_id is not None and reference_id != config.reference_id:
            from ..data.genes import ReferenceMismatchError

            raise ReferenceMismatchError(
                f"checkpoint {src} was trained on gene reference {config.reference_id!r} but "
                f"{reference_id!r} was expected"
            )
        state = load_file(str(src / WEIGHTS_NAME), device=str(map_location))
        placeholder = None
        if config.esm_identity:  # overwritten by the state dict
            placeholder = torch.empty(config.n_genes, config.d_esm)
        model = cls(config, esm=placeholder).to(map_location)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{src / WEIGHTS_NAME} does not match {src / CONFIG_NAME}: {e}") from e
        logger.info("loaded BulkFormer (%d parameters) from %s", model.num_parameters(), src)
        return model

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"n_genes={c.n_genes}, d_model={c.d_model}, n_layers={c.n_layers}, "
            f"n_heads={c.n_heads}, embed_backend={c.embed_backend!r}, "
            f"attn_backend={c.attn_backend!r}"
        )
