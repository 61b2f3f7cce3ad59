"""ESM2 loading and batched, windowed, mean-pooled protein embedding.

How a protein of L residues becomes one vector (d = model width):

1. Split into windows of at most ``window`` residues (default 1,022, ESM2's training length
   without BOS/EOS). Proteins longer than that get windows starting every ``stride`` residues
   (default 511), the last one ending at the protein's end.
2. Each window is tokenized as ``<cls> residues <eos>``; windows of all proteins are sorted by
   length and packed into batches of at most ``toks_per_batch`` tokens (padded size), like
   ``esm.data.FastaBatchedDataset.get_batch_indices``.
3. The chosen layer's per-token representation (B, T, d) is pooled over residue tokens only
   (no BOS/EOS/padding). A residue covered by c windows contributes the mean of its c
   representations; the protein's embedding is the mean over its L residues of those
   per-residue means. Pooling and accumulation are in float32.

On CUDA the forward runs under autocast (bf16 where supported, else fp16) on padded batches;
on CPU in fp32 on the batch's real tokens only (:func:`esm2_packed`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._device import resolve_device
from ._cache import EmbeddingCache, sequence_key
from ._proteins import ESM_RESIDUES

__all__ = [
    "ESM2_MODELS",
    "ProteinEmbedder",
    "esm2_packed",
    "esm2_representation",
    "load_esm2",
    "model_fingerprint",
    "plan_windows",
]

logger = logging.getLogger(__name__)

#: ESM2 checkpoints published by fair-esm (name → number of layers).
ESM2_MODELS = {
    "esm2_t6_8M_UR50D": 6,
    "esm2_t12_35M_UR50D": 12,
    "esm2_t30_150M_UR50D": 30,
    "esm2_t33_650M_UR50D": 33,
    "esm2_t36_3B_UR50D": 36,
    "esm2_t48_15B_UR50D": 48,
}


# ---------------------------------------------------------------------------------- loading
def load_esm2(name_or_path: str | os.PathLike):
    """Load an ESM2 model and its alphabet from a fair-esm name or a local checkpoint.

    Parameters
    ----------
    name_or_path
        An existing file (a fair-esm ESM2 ``.pt`` such as ``esm2_t33_650M_UR50D.pt``) or one of
        :data:`ESM2_MODELS` (downloaded by fair-esm into the torch hub cache, or read from it
        when already there).

    Returns
    -------
    model : esm.model.esm2.ESM2
        On CPU, in eval mode.
    alphabet : esm.data.Alphabet
    name : str
        The hub name, or the checkpoint's file name.

    Raises
    ------
    ValueError
        The file is not an ESM2 checkpoint, or the name is neither a file nor a known model.

    Notes
    -----
    Checkpoints (local files, the torch hub cache and downloads) are read with
    ``torch.load(map_location="cpu", weights_only=True)``, allowing only ``argparse.Namespace``
    (which fair-esm checkpoints pickle): a file holding other pickled objects is refused and
    never runs code (see :func:`_load_plain`). Contact-regression weights
    are not needed for embeddings and are not loaded.
    """
    import torch

    p = Path(os.fspath(name_or_path))
    if p.is_file():
        try:
            data = _load_plain(str(p))
        except Exception as e:
            raise ValueError(
                f"{p}: cannot be read as a fair-esm checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); expected an ESM2 .pt file such "
                "as esm2_t33_650M_UR50D.pt"
            ) from e
        model, alphabet = _esm2_from_checkpoint(data, str(p))
        return model, alphabet, p.name
    name = str(name_or_path)
    if name not in ESM2_MODELS:
        raise ValueError(
            f"--model {name!r} is neither an existing file nor a known ESM2 model; expected a "
            f"checkpoint path or one of {sorted(ESM2_MODELS)}"
        )
    url = f"https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
    hub = os.path.join(torch.hub.get_dir(), "checkpoints", f"{name}.pt")
    try:  # the torch hub cache is used when the file is there; no contact-regression download
        if os.path.isfile(hub):
            data = _load_plain(hub)
        else:
            data = _load_plain(url, url=True)
    except Exception as e:
        raise ValueError(
            f"could not load ESM2 model {name!r} ({type(e).__name__}: {e}); without internet "
            f"place {name}.pt at {hub} or pass its path to --model"
        ) from e
    model, alphabet = _esm2_from_checkpoint(data, f"{name} ({url})")
    return model, alphabet, name


def _load_plain(path: str, *, url: bool = False):
    """``torch.load(path, weights_only=True)`` (or a download of the URL ``path`` into the
    torch hub cache) allowing ``argparse.Namespace`` besides tensors and plain containers.

    torch >= 2.5 scopes the allowance to this call (``safe_globals``); torch 2.4 has only the
    process-wide ``add_safe_globals``. ``weights_only=True`` is passed explicitly: before
    torch 2.6 the default was full unpickling (``torch.hub.load_state_dict_from_url`` still
    defaults to it).
    """
    import torch

    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        ctx = ser.safe_globals([argparse.Namespace])
    else:  # torch 2.4
        ser.add_safe_globals([argparse.Namespace])
        ctx = contextlib.nullcontext()
    with ctx:
        if url:
            return torch.hub.load_state_dict_from_url(
                path, progress=False, map_location="cpu", weights_only=True
            )
        return torch.load(path, map_location="cpu", weights_only=True)


def _esm2_from_checkpoint(data, where: str):
    """Build an ESM2 from a loaded fair-esm checkpoint dict ({'cfg': …, 'model': state})."""
    import warnings

    import esm

    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        if isinstance(data, dict) and "args" in data:
            arch = getattr(data["args"], "arch", "?")
            raise ValueError(
                f"{where}: is a fair-esm ESM-1 style checkpoint (arch={arch!r}), not ESM2; "
                "expected an ESM2 checkpoint with 'cfg' and 'model' entries"
            )
        raise ValueError(
            f"{where}: not an ESM2 checkpoint: found {keys}; expected a dict with 'cfg' "
            "(cfg['model'] with encoder_layers, encoder_embed_dim, encoder_attention_heads) "
            "and 'model' (state dict), as in fair-esm's esm2_*.pt files"
        )
    cfg = data["cfg"].get("model") if isinstance(data["cfg"], dict) else None
    need = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "token_dropout")
    if cfg is None or not all(hasattr(cfg, a) for a in need):
        raise ValueError(f"{where}: not an ESM2 checkpoint: cfg['model'] lacks {list(need)}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2", data, None)
    except (RuntimeError, KeyError, AttributeError) as e:
        raise ValueError(
            f"{where}: not a valid ESM2 checkpoint, its weights do not fit an ESM2 with "
            f"{cfg.encoder_layers} layers and width {cfg.encoder_embed_dim}: "
            f"{str(e).splitlines()[0]}"
        ) from e
    return model.eval(), alphabet


def model_fingerprint(model) -> str:
    """Cheap identity of a model's weights: SHA-1 of parameter names, shapes and samples.

    Hashes, for every state-dict entry, its name, shape, dtype and its first and last 1,024
    values, so two checkpoints with the same architecture but different weights differ.
    """
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        flat = v.detach().reshape(-1)
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        sample = flat[:1024] if flat.numel() <= 2048 else flat[[*range(1024), *range(-1024, 0)]]
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- planning
def plan_windows(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Residue windows ``[(start, end), …]`` covering a protein of ``length`` residues.

    One window when ``length <= window``; otherwise starts at 0, stride, 2·stride, … and a
    last window ``(length - window, length)``, so every window has exactly ``window`` residues.
    """
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window, stride)) + [length - window]
    return [(s, s + window) for s in starts]


def _batches(sizes: Sequence[int], toks_per_batch: int) -> list[list[int]]:
    """Indices grouped so that max(size) × count ≤ toks_per_batch, in (size, index) order."""
    order = sorted((s, i) for i, s in enumerate(sizes))
    out: list[list[int]] = []
    buf: list[int] = []
    max_len = 0
    for sz, i in order:
        if buf and max(sz, max_len) * (len(buf) + 1) > toks_per_batch:
            out.append(buf)
            buf, max_len = [], 0
        max_len = max(max_len, sz)
        buf.append(i)
    if buf:
        out.append(buf)
    return out


# ---------------------------------------------------------------------------------- forward
def esm2_representation(model, tokens, layer: int, *, attention: str = "sdpa"):
    """Per-token representation (B, T, d) of ESM2 layer ``layer`` for tokens (B, T).

    ``attention="esm"`` is fair-esm's own ``model(tokens, repr_layers=[layer])`` (the
    reference). ``"sdpa"`` computes the same function with
    ``torch.nn.functional.scaled_dot_product_attention`` in (B, H, T, Dh) layout: no (B·H, T, T)
    attention-weight tensors are materialised or averaged, and layers above ``layer`` are not
    run. ``"packed"`` is :func:`esm2_packed` (no FLOPs on padding; rows of padding tokens are
    zero). Layer ``num_layers`` includes the final layer norm, as in fair-esm.
    """
    if attention == "esm":
        return model(tokens, repr_layers=[layer])["representations"][layer]
    if attention == "packed":
        rep, keep = esm2_packed(model, tokens, layer)
        out = rep.new_zeros((*tokens.shape, rep.shape[-1]))
        out[keep] = rep
        return out
    if attention != "sdpa":
        raise ValueError(f"attention {attention!r}; expected 'packed', 'sdpa' or 'esm'")
    import torch.nn.functional as F
    from esm.modules import gelu

    pad = tokens.eq(model.padding_idx)  # (B, T)
    x = model.embed_scale * model.embed_tokens(tokens)  # (B, T, d)
    if model.token_dropout:  # as ESM2.forward: rescale for <mask> tokens (none in our input)
        is_mask = tokens.eq(model.mask_idx)
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        observed = is_mask.sum(-1).to(x.dtype) / (~pad).sum(-1)
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x * (1 - pad.unsqueeze(-1).type_as(x))
    keep = (~pad)[:, None, None, :] if bool(pad.any()) else None  # (B, 1, 1, T): True = attend
    b, t, _ = x.shape
    for blk in model.layers[:layer]:
        att = blk.self_attn
        h = blk.self_attn_layer_norm(x)
        hd, nh = att.head_dim, att.num_heads
        q = (att.q_proj(h) * att.scaling).view(b, t, nh, hd).transpose(1, 2)  # (B, H, T, Dh)
        k = att.k_proj(h).view(b, t, nh, hd).transpose(1, 2)
        v = att.v_proj(h).view(b, t, nh, hd).transpose(1, 2)
        q, k = att.rot_emb(q, k)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1.0)  # q pre-scaled
        x = x + att.out_proj(o.transpose(1, 2).reshape(b, t, nh * hd))
        x = x + blk.fc2(gelu(blk.fc1(blk.final_layer_norm(x))))
    if layer == model.num_layers:
        x = model.emb_layer_norm_after(x)
    return x


#: Packed path: sequences shorter than this many tokens use explicit (bmm, softmax, bmm)
#: attention, longer ones SDPA's fused kernel; both are exact, the crossover is speed only
#: (head width 16 on a 2-core CPU: the (H, L, L) scores of a short protein stay in cache,
#: a long one's do not).
PACKED_MATH_BELOW = 512


class PackedESM2:
    """ESM2 weights rearranged for :func:`esm2_packed` (a snapshot: later edits to the model's
    weights are not seen).

    Per layer, one (3d, d) QKV weight and (3d,) bias: q rows multiplied by the attention
    scaling (1/sqrt(head_dim): a power of two, so exact, for head widths 16 and 64 — the 8M,
    650M and 3B models — and equal up to float rounding for 24, 32 and 128), and within
    every q/k head the two rotary halves interleaved, ``(x1[0], x2[0], x1[1], x2[1], …)``, so
    that the rotary embedding is one complex multiplication in place. q and k are permuted
    alike, which leaves q·k unchanged; v is not rotated nor permuted.
    """

    def __init__(self, model) -> None:
        import torch

        self.model = model
        self.qkv = []
        with torch.no_grad():
            for blk in model.layers:
                att = blk.self_attn
                nh, hd = att.num_heads, att.head_dim
                half = torch.arange(hd // 2)
                perm = torch.stack([half, half + hd // 2], 1).reshape(-1)  # within a head
                rows = (
                    (torch.arange(nh)[:, None] * hd + perm).reshape(-1).to(att.q_proj.weight.device)
                )
                w = torch.cat(
                    [
                        att.q_proj.weight[rows] * att.scaling,
                        att.k_proj.weight[rows],
                        att.v_proj.weight,
                    ]
                )
                b = torch.cat(
                    [att.q_proj.bias[rows] * att.scaling, att.k_proj.bias[rows], att.v_proj.bias]
                )
                self.qkv.append((w.contiguous(), b.contiguous()))
        self.inv_freq = model.layers[0].self_attn.rot_emb.inv_freq.detach()

    def rotary(self, positions):
        """(N, 1, head_dim / 2) complex64 ``cos + i·sin`` for token positions (N,), computed as
        fair-esm's ``RotaryEmbedding`` computes its tables."""
        import torch

        t = torch.arange(int(positions.max()) + 1, device=positions.device).type_as(self.inv_freq)
        freqs = torch.einsum("i,j->ij", t, self.inv_freq)
        return torch.complex(freqs.cos(), freqs.sin())[positions][:, None, :]


def esm2_packed(model, tokens, layer: int, *, packed: PackedESM2 | None = None):
    """ESM2 layer ``layer`` for the real (non-padding) tokens only: ``(rep (N, d), keep (B, T))``.

    Same function as fair-esm's forward (see :func:`esm2_representation`), computed "varlen":
    the N real tokens of all B sequences are gathered into one (N, d) matrix, so layer norms,
    the fused QKV projection, out_proj and the FFN cost nothing for padding; attention runs
    per sequence. ``rep`` is in row-major order of ``keep`` (``tokens != padding_idx``).
    ``packed`` is ``PackedESM2(model)``, built here when not given.
    """
    import torch
    import torch.nn.functional as F

    if packed is None:
        packed = PackedESM2(model)
    keep = tokens.ne(model.padding_idx)  # (B, T)
    lengths = keep.sum(1)
    x = model.embed_scale * model.embed_tokens(tokens)  # (B, T, d), as ESM2.forward
    if model.token_dropout:  # rescale for <mask> tokens (none in our input)
        is_mask = tokens.eq(model.mask_idx)
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        observed = is_mask.sum(-1).to(x.dtype) / lengths
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
    x = x[keep]  # (N, d); padding rows of ESM2.forward are zeroed and masked out anyway
    n, d = x.shape
    if layer == 0:
        return x, keep
    # position of every token inside its sequence (padding is at the end of each row)
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)[keep]
    rot = packed.rotary(pos)  # (N, 1, Dh/2)
    bounds = [0, *torch.cumsum(lengths, 0).tolist()]
    spans = [(a, e) for a, e in zip(bounds[:-1], bounds[1:]) if e > a]
    for blk, (w, b) in zip(model.layers[:layer], packed.qkv):
        att = blk.self_attn
        nh, hd = att.num_heads, att.head_dim
        ln = blk.self_attn_layer_norm
        h = F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
        qkv = torch.addmm(b, h, w.t())  # (N, 3d): q (scaled), k, v
        qk = qkv[:, : 2 * d].unflatten(1, (2 * nh, hd // 2, 2))
        if qk.dtype == torch.float32:
            torch.view_as_complex(qk).mul_(rot)  # rotary, in place
        else:  # autocast: rotate in float32
            r = torch.view_as_complex(qk.float().contiguous()) * rot
            qk.copy_(torch.view_as_real(r))
        q, k, v = qkv.view(n, 3, nh, hd).unbind(1)  # (N, H, Dh) each
        o = qkv.new_empty((n, d))  # attention output, heads concatenated
        for a, e in spans:
            qs, ks, vs = (t[a:e].transpose(0, 1) for t in (q, k, v))  # (H, L, Dh)
            if e - a < PACKED_MATH_BELOW:
                y = torch.bmm(torch.softmax(torch.bmm(qs, ks.transpose(1, 2)), -1), vs)
            else:
                y = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], scale=1.0)[0]
            o[a:e].view(e - a, nh, hd).copy_(y.transpose(0, 1))
        x = _add_linear(x, o, att.out_proj)
        ln = blk.final_layer_norm
        h = F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)
        h = torch.ops.aten.gelu_(F.linear(h, blk.fc1.weight, blk.fc1.bias))  # exact (erf) GELU
        x = _add_linear(x, h, blk.fc2)
    if layer == model.num_layers:
        x = model.emb_layer_norm_after(x)
    return x, keep


def _add_linear(x, h, lin):
    """``x + lin(h)``, accumulated into x in place (x is esm2_packed's own tensor) when the
    dtypes agree, i.e. not under autocast."""
    import torch.nn.functional as F

    if h.dtype != x.dtype:
        return x + F.linear(h, lin.weight, lin.bias)
    return x.addmm_(h, lin.weight.t()).add_(lin.bias)


def _sdpa_compatible(model) -> bool:
    layers = getattr(model, "layers", None)
    return bool(layers) and all(
        getattr(blk.self_attn, "rot_emb", None) is not None
        and blk.self_attn.bias_k is None
        and not blk.self_attn.add_zero_attn
        for blk in layers
    )


# ---------------------------------------------------------------------------------- embedding
class ProteinEmbedder:
    """Mean-pooled ESM2 embeddings of protein sequences (see module docstring).

    Parameters
    ----------
    model
        An ``esm.model.esm2.ESM2``. It is moved to ``device`` and put in eval mode.
    alphabet
        Its ``esm.data.Alphabet`` (default: ``model.alphabet``).
    layer
        Representation layer, 0 … num_layers (negative counts from the end); default last
        (which includes ESM2's final layer norm, as in ``esm-extract``).
    toks_per_batch
        Token budget per forward pass (padded batch size × padded length).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
    precision
        ``"auto"`` (bf16/fp16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"``, ``"bf16"``.
    window, stride
        Long-protein windowing in residues (``window`` ≤ 1,022 for real ESM2 checkpoints).
    attention
        ``"auto"`` (default: ``"packed"`` on CPU, ``"sdpa"`` on CUDA), ``"packed"`` (padding-free
        forward, see :func:`esm2_packed`), ``"sdpa"`` (padded batch, fused attention, see
        :func:`esm2_representation`) or ``"esm"`` (fair-esm's forward, the reference). All
        compute the same function; ``config()`` records the one used, so cached embeddings of
        different paths (equal up to float rounding) are not mixed.
    progress
        Show a tqdm bar (residues/s, proteins/s) on a terminal.
    """

    def __init__(
        self,
        model,
        alphabet=None,
        *,
        layer: int | None = None,
        toks_per_batch: int = 4096,
        device: str = "auto",
        precision: str = "auto",
        window: int = 1022,
        stride: int = 511,
        attention: str = "auto",
        progress: bool = True,
    ) -> None:
        import torch

        self.alphabet = alphabet if alphabet is not None else getattr(model, "alphabet", None)
        if self.alphabet is None or not hasattr(model, "num_layers"):
            raise ValueError(
                "model must be an esm.model.esm2.ESM2 with its esm.data.Alphabet; got "
                f"{type(model).__name__}"
            )
        n = int(model.num_layers)
        layer = n if layer is None else int(layer)
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer {layer} out of range for a model with {n} layers (0…{n})")
        self.layer = layer % (n + 1)
        if window < 1 or not 1 <= stride <= window:
            raise ValueError(f"need window ≥ 1 and 1 ≤ stride ≤ window; got {window}, {stride}")
        self.window, self.stride = int(window), int(stride)
        self.toks_per_batch = int(toks_per_batch)
        if self.toks_per_batch < 3:
            raise ValueError(f"toks_per_batch must be ≥ 3; got {toks_per_batch}")
        self.device = resolve_device(device)
        if precision == "auto":
            if self.device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "fp32"
        dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision {precision!r}; expected auto, fp32, fp16 or bf16")
        self.precision = precision
        if attention not in ("auto", "packed", "sdpa", "esm"):
            raise ValueError(f"attention {attention!r}; expected auto, packed, sdpa or esm")
        if attention == "auto":
            attention = "packed" if self.device.type == "cpu" else "sdpa"
        if attention in ("packed", "sdpa") and not _sdpa_compatible(model):
            logger.info("model layers do not fit the %s path; using fair-esm's forward", attention)
            attention = "esm"
        self.attention = attention
        self._amp_dtype = dtypes[precision]
        self.progress = progress
        self.fingerprint = model_fingerprint(model)
        self.model = model.eval().to(self.device)
        self._packed = PackedESM2(self.model) if attention == "packed" else None
        self.dim = int(model.embed_dim)
        a = self.alphabet
        self._bos = a.cls_idx if a.prepend_bos else None
        self._eos = a.eos_idx if a.append_eos else None
        self._pad = a.padding_idx
        self._extra = int(a.prepend_bos) + int(a.append_eos)
        lut = np.full(256, a.unk_idx, dtype=np.int64)
        for c in ESM_RESIDUES:
            lut[ord(c)] = a.get_idx(c)
        self._lut = lut

    def config(self) -> dict:
        """What the embeddings depend on (cache key)."""
        return {
            "model_fingerprint": self.fingerprint,
            "layer": self.layer,
            "window": self.window,
            "stride": self.stride,
            "precision": self.precision,
            "attention": self.attention,
        }

    def tokens(self, pieces: Sequence[str]):
        """Token tensor (B, T) int64 for residue strings, ``<cls> … <eos>`` then padding."""
        import torch

        t = max(len(p) for p in pieces) + self._extra
        out = np.full((len(pieces), t), self._pad, dtype=np.int64)
        off = 1 if self._bos is not None else 0
        for b, p in enumerate(pieces):
            if self._bos is not None:
                out[b, 0] = self._bos
            out[b, off : off + len(p)] = self._lut[np.frombuffer(p.encode(), dtype=np.uint8)]
            if self._eos is not None:
                out[b, off + len(p)] = self._eos
        return torch.from_numpy(out)

    def embed(
        self,
        sequences: Sequence[str],
        *,
        cache: EmbeddingCache | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed protein sequences.

        Parameters
        ----------
        sequences
            N cleaned sequences (upper case, ESM residue letters; see ``clean_sequence``).
        cache
            Where finished proteins are appended after each batch and read from first.
        on_batch
            Called as ``on_batch(i, n_batches)`` after batch ``i`` is computed and cached.

        Returns
        -------
        numpy.ndarray
            float32 (N, d) mean-pooled embeddings, in the order of ``sequences``.
        """
        import torch

        n_seq = len(sequences)
        out = np.zeros((n_seq, self.dim), dtype=np.float32)
        if n_seq == 0:
            return out
        uniq = list(dict.fromkeys(sequences))  # identical proteins are computed once
        keys = [sequence_key(s) for s in uniq]
        done = cache.load() if cache is not None else {}
        vec: dict[int, np.ndarray] = {u: done[k] for u, k in enumerate(keys) if k in done}
        n_cached = len(vec)

        # chunks over *all* unique sequences so batches do not depend on what is cached:
        # a resumed run reproduces an uninterrupted one bit for bit.
        chunks: list[tuple[int, int, int]] = []
        for u, s in enumerate(uniq):
            chunks += [(u, a, b) for a, b in plan_windows(len(s), self.window, self.stride)]
        batches = _batches([b - a + self._extra for _, a, b in chunks], self.toks_per_batch)
        batches = [[c for c in bt if chunks[c][0] not in vec] for bt in batches]
        batches = [bt for bt in batches if bt]
        left = np.bincount([chunks[c][0] for bt in batches for c in bt], minlength=len(uniq))
        acc = {}
        total_res = sum(chunks[c][2] - chunks[c][1] for bt in batches for c in bt)

        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_res,
            unit="res",
            unit_scale=True,
            desc="ESM2",
            disable=not self.progress or None,
            dynamic_ncols=True,
        )
        amp = (
            torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)
            if self._amp_dtype is not None
            else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        n_done = 0
        off = 1 if self._bos is not None else 0
        with bar:
            for ib, bt in enumerate(batches):
                pieces = [uniq[chunks[c][0]][chunks[c][1] : chunks[c][2]] for c in bt]
                toks = self.tokens(pieces)
                # residue weights (B, T): 1/coverage on residue tokens, 0 on BOS/EOS/padding
                w = np.zeros(toks.shape, dtype=np.float32)
                for b, c in enumerate(bt):
                    u, a, e = chunks[c]
                    w[b, off : off + e - a] = 1.0 / self._coverage(len(uniq[u]))[a:e]
                with torch.inference_mode(), amp:
                    toks = toks.to(self.device)
                    wt = torch.from_numpy(w).to(self.device)
                    if self._packed is not None:
                        rep, keep = esm2_packed(self.model, toks, self.layer, packed=self._packed)
                        row = keep.nonzero()[:, 0]  # (N,) sequence of each real token
                        pooled = rep.new_zeros((len(bt), self.dim), dtype=torch.float32)
                        pooled.index_add_(0, row, rep.float() * wt[keep][:, None])  # (B, d)
                    else:
                        rep = esm2_representation(
                            self.model, toks, self.layer, attention=self.attention
                        ).float()  # (B, T, d)
                        pooled = torch.einsum("bt,btd->bd", wt, rep)  # (B, d)
                pooled = pooled.cpu().numpy()
                fin_keys, fin_vecs = [], []
                for b, c in enumerate(bt):
                    u = chunks[c][0]
                    acc[u] = pooled[b] if u not in acc else acc[u] + pooled[b]
                    left[u] -= 1
                    if left[u] == 0:
                        vec[u] = (acc.pop(u) / np.float32(len(uniq[u]))).astype(np.float32)
                        fin_keys.append(keys[u])
                        fin_vecs.append(vec[u])
                if cache is not None and fin_keys:
                    cache.add(fin_keys, np.stack(fin_vecs))
                n_done += len(fin_keys)
                bar.update(int(w.astype(bool).sum()))
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(proteins_per_s=f"{n_done / dt:.1f}", refresh=False)
                if on_batch is not None:
                    on_batch(ib, len(batches))
        dt = time.perf_counter() - t0
        if batches:
            logger.info(
                "embedded %d proteins (%d residues) in %.1f s: %.1f proteins/s, %.0f residues/s"
                "; %d from cache",
                n_done,
                total_res,
                dt,
                n_done / max(dt, 1e-9),
                total_res / max(dt, 1e-9),
                n_cached,
            )
        index = {s: u for u, s in enumerate(uniq)}
        for i, s in enumerate(sequences):
            out[i] = vec[index[s]]
        return out

    def _coverage(self, length: int) -> np.ndarray:
        """(length,) float32 number of windows covering each residue."""
        c = np.zeros(length, dtype=np.float32)
        for a, b in plan_windows(length, self.window, self.stride):
            c[a:b] += 1
        return c
