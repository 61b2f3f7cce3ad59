"""BulkFormer model configuration: a frozen dataclass saved as ``config.json`` beside the weights.

Named presets (:data:`PRESETS`, :meth:`BulkFormerConfig.from_preset`) span ~1M to ~100M
parameters at the full 20,010-gene reference. At that G the sample-context MLP's first layer
(G × context hidden) is a large share of the parameters but a negligible share of the FLOPs: it
runs once per sample, not once per gene token (see ``BulkFormer.flops_per_token``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BulkFormerConfig",
    "PRESETS",
    "ATTN_BACKENDS",
    "EMBED_BACKENDS",
    "POOLINGS",
    "SAMPLE_DECODERS",
    "SAMPLE_TARGETS",
    "LEGACY_DEFAULTS",
]

ATTN_BACKENDS = ("auto", "flash", "sdpa")
EMBED_BACKENDS = ("auto", "triton", "torch")
POOLINGS = ("mean", "max", "sample")
SAMPLE_DECODERS = ("linear", "gene")
SAMPLE_TARGETS = ("observed", "masked")

#: values that fields added after the first release take when a saved ``config.json`` lacks them
#: (:meth:`BulkFormerConfig.from_dict` with ``legacy=True``, used when loading a checkpoint), so
#: an old checkpoint loads as the model it was: no sample token, no sample objective
LEGACY_DEFAULTS: dict[str, Any] = {
    "esm_identity": True,
    "context_mlp": True,
    "sample_token": False,
    "sample_weight": 0.0,
    "sample_decoder": "linear",
    "sample_targets": "observed",
    "residual_head": False,
    "pooling": "mean",
    "pca_prior": 0,
}


@dataclass(frozen=True)
class BulkFormerConfig:
    """Hyper-parameters of :class:`bulkformer.model.BulkFormer` (validated on construction)."""

    n_genes: int = 20010  # G: genes per sample = tokens per sequence (size of the gene reference)
    d_model: int = 256  # d: token width; even (REE has a cos half and a sin half)
    n_layers: int = 4  # L: encoder blocks
    n_heads: int = 8  # H: attention heads; d_model must be divisible by n_heads
    d_esm: int = 1280  # width of the fixed ESM2 gene-identity matrix (1280 = ESM2 650M)
    ree_scale: float = 4.0  # s in the REE frequencies f_i = 10 ** (s * i / d)
    mlp_ratio: float = 4.0  # block MLP hidden width = round(mlp_ratio * d_model)
    context_hidden: int = 0  # hidden width of the context MLP Linear(G→h)→ReLU→Linear(h→d); 0 = 4d
    dropout: float = 0.0  # dropout on the input embedding, attention weights and residual branches
    norm_eps: float = 1e-5  # LayerNorm epsilon
    bias: bool = True  # biases in the encoder's Linear layers
    init_std: float = 0.02  # std of the normal init of Linear weights and learned vectors
    pooling: str = (
        "sample"  # default sample embedding: "sample" (the sample vector) | "mean" | "max"
    )
    # ---- ablation switches (each changes only what it names; see docs/model.md)
    esm_identity: bool = True  # gene identity = projected ESM2 row; False: a learned (G, d) table
    context_mlp: bool = True  # add the sample-context MLP(x_masked) to every token
    sample_token: bool = True  # a learned [SAMPLE] token (+ context) runs through the encoder
    sample_weight: float = 1.0  # weight of the sample-bottleneck objective (0: off, no decoder)
    sample_decoder: str = "linear"  # sample vector → G values: "linear" LN→Linear(d→G) | "gene"
    residual_head: bool = True  # without a PCA prior: pred = token head + sample_pred (the
    # per-gene head corrects the sample decoder's value; where there is one: sample_weight > 0)
    sample_targets: str = "observed"  # genes the sample decoder must recover: "observed" (all
    # non-missing, masked included) | "masked" (the masked ones only)
    pca_prior: int = 256  # most components of the linear prior the token head corrects: pred =
    # head + prior (probabilistic PCA of the training rows fitted per sample to its visible
    # genes; fitted by pretraining, rank chosen on held-out training rows; 0: off, no prior)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory
    attn_backend: str = "auto"  # "auto" (flash-attn on CUDA if there, else SDPA)|"flash"|"sdpa"
    embed_backend: str = "auto"  # "auto" (Triton on CUDA, else torch) | "triton" | "torch"
    reference_id: str | None = None  # id of the GeneReference the genes follow (None: unchecked)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(
                f"BulkFormerConfig.{name} = {getattr(self, name)!r}: expected {expected}"
            )

        for name in ("n_genes", "d_model", "n_layers", "n_heads", "d_esm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "a positive integer")
        c = self.context_hidden
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise bad("context_hidden", "a non-negative integer (0 means 4 * d_model)")
        if self.d_model % 2:
            raise bad("d_model", "an even number (REE splits it into cos and sin halves)")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"BulkFormerConfig: d_model = {self.d_model} is not divisible by "
                f"n_heads = {self.n_heads}"
            )
        if not (isinstance(self.ree_scale, (int, float)) and self.ree_scale > 0):
            raise bad("ree_scale", "a positive number")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise bad("mlp_ratio", "a positive number")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise bad("dropout", "a number in [0, 1)")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise bad("norm_eps", "a positive number")
        if not (isinstance(self.init_std, (int, float)) and self.init_std > 0):
            raise bad("init_std", "a positive number")
        if self.pooling not in POOLINGS:
            raise bad("pooling", f"one of {POOLINGS}")
        for name in ("esm_identity", "context_mlp", "sample_token", "residual_head"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        w = self.sample_weight
        if isinstance(w, bool) or not (isinstance(w, (int, float)) and 0.0 <= w < float("inf")):
            raise bad("sample_weight", "a non-negative number (0 turns the objective off)")
        if self.sample_decoder not in SAMPLE_DECODERS:
            raise bad("sample_decoder", f"one of {SAMPLE_DECODERS}")
        p = self.pca_prior
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise bad("pca_prior", "a non-negative integer (0 turns the prior off)")
        if self.sample_targets not in SAMPLE_TARGETS:
            raise bad("sample_targets", f"one of {SAMPLE_TARGETS}")
        if not self.has_sample_vector and (self.sample_weight > 0 or self.pooling == "sample"):
            what = "sample_weight > 0" if self.sample_weight > 0 else "pooling = 'sample'"
            raise ValueError(
                f"BulkFormerConfig: {what} needs a sample vector: set sample_token = true or "
                "context_mlp = true"
            )
        if self.attn_backend not in ATTN_BACKENDS:
            raise bad("attn_backend", f"one of {ATTN_BACKENDS}")
        if self.embed_backend not in EMBED_BACKENDS:
            raise bad("embed_backend", f"one of {EMBED_BACKENDS}")
        if self.reference_id is not None and not isinstance(self.reference_id, str):
            raise bad("reference_id", "a string or None")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def context_width(self) -> int:
        """Hidden width of the sample-context MLP (``context_hidden`` or ``4 * d_model``)."""
        return self.context_hidden or 4 * self.d_model

    @property
    def has_sample_vector(self) -> bool:
        """True when the model computes one vector per sample: the final state of the
        ``[SAMPLE]`` token (``sample_token``), else the context MLP's output."""
        return self.sample_token or self.context_mlp

    @property
    def mlp_width(self) -> int:
        """Hidden width of the block MLP, ``round(mlp_ratio * d_model)``."""
        return max(1, round(self.mlp_ratio * self.d_model))

    # ------------------------------------------------------------------ (de)serialization
    def replace(self, **changes: Any) -> BulkFormerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, legacy: bool = False) -> BulkFormerConfig:
        """Build from a dict; unknown keys are an error (a typo must not be silently ignored).

        ``legacy=True`` (a saved checkpoint's config): fields the dict lacks that were added
        later take :data:`LEGACY_DEFAULTS` (the behaviour of the code that wrote it) instead of
        today's defaults.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"BulkFormerConfig: unknown field(s) {unknown}; known fields are {sorted(known)}"
            )
        if legacy:
            d = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in d}, **d}
        return cls(**d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike, *, legacy: bool = False) -> BulkFormerConfig:
        """Read a config from JSON text (starting with ``{``) or from a file path
        (``legacy``: see :meth:`from_dict`)."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text, where = source, "JSON text"
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"BulkFormer config file {path} does not exist")
            text, where = path.read_text(), str(path)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object of config fields")
        return cls.from_dict(d, legacy=legacy)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BulkFormerConfig:
        """A named preset (:data:`PRESETS`), optionally with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown BulkFormer preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Parameter counts at n_genes = 20,010, d_esm = 1280 (BulkFormer(...).num_parameters()), with
# the sample decoder (d × G) included; every preset's context MLP is 4d wide (G × 4d of them):
PRESETS: dict[str, dict[str, Any]] = {
    # ~5.0M: for tests and CPU smoke runs; the context MLP keeps its 4d width (a narrower one, 48, gave
    # the weakest sample vector at demo scale)
    "tiny": dict(d_model=48, n_layers=2, n_heads=4),
    # ~14M
    "small": dict(d_model=128, n_layers=4, n_heads=8),
    # ~33M
    "base": dict(d_model=256, n_layers=8, n_heads=8),
    # ~116M: head dim 64 (flash-attn friendly)
    "base100m": dict(d_model=640, n_layers=10, n_heads=10),
}
