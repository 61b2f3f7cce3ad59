"""The sample vector, its bottleneck objective and the ablation switches of BulkFormerConfig."""

import json

import pytest
import torch

from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.config import LEGACY_DEFAULTS
from bulkformer.train.objectives import masked_sse, pretrain_sse

G = 41


def _config(**kw):
    # without the PCA prior (tests/model/test_prior.py): pred corrects the sample decoder here
    base = dict(
        n_genes=G, d_model=16, n_layers=2, n_heads=2, d_esm=12, context_hidden=24, pca_prior=0
    )
    return BulkFormerConfig(**{**base, **kw})


def _batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, G, generator=g)
    masked = torch.rand(B, G, generator=g) < 0.2
    missing = torch.rand(G, generator=g) < 0.1
    return x, missing, masked & ~missing


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return BulkFormer(_config(**kw)).eval()


def _names(m):
    return set(m.state_dict())


def test_default_model_has_a_sample_vector_and_decoder():
    m = _model()
    x, missing, masked = _batch()
    out = m(x, missing=missing, masked=masked)
    assert out.sample.shape == (3, 16) and out.sample_pred.shape == (3, G)
    assert out.sample_pred.dtype == torch.float32
    assert m.config.pooling == "sample"
    assert torch.equal(out.pool(), out.sample) and torch.equal(out.pool("sample"), out.sample)
    assert m.embed_samples(x, missing).shape == (3, 16)
    torch.testing.assert_close(m.embed_samples(x, missing), m(x, missing=missing).sample)


@pytest.mark.parametrize("token", [True, False])
def test_sample_objective_gradient_reaches_encoder_and_sample_token(token):
    m = _model(sample_token=token).train()
    x, missing, masked = _batch()
    out = m(x, missing=missing, masked=masked)
    masked_sse(out.sample_pred, x, masked).backward()  # the sample objective alone
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert grads["head.weight"] is None  # the token head is not on this path
    assert grads["embedding.context.0.weight"].abs().sum() > 0
    enc = [n for n in grads if n.startswith("encoder.")]
    if token:
        assert grads["sample_token"].abs().sum() > 0
        assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in enc), enc
    else:  # the context vector is the sample vector: it bypasses the encoder
        assert all(grads[n] is None for n in enc)


def test_sample_vector_depends_only_on_observed_values():
    m = _model()
    x, missing, masked = _batch()
    hide = missing | masked
    x2 = torch.where(hide, torch.randn_like(x) * 5, x)
    a, b = m(x, missing=missing, masked=masked), m(x2, missing=missing, masked=masked)
    torch.testing.assert_close(a.sample, b.sample)
    torch.testing.assert_close(a.sample_pred, b.sample_pred)
    x3 = x.clone()
    x3[0, torch.nonzero(~hide[0])[0, 0]] += 1.0
    assert not torch.allclose(m(x3, missing=missing, masked=masked).sample[0], a.sample[0])


def test_pretrain_sse_terms():
    m = _model()
    x, missing, masked = _batch()
    out = m(x, missing=missing, masked=masked)
    tok = ((out.pred - x)[masked]).square().sum()
    keep = ~missing.expand_as(x)
    on_masked = ((out.sample_pred - x)[masked]).square().sum()
    on_all = ((out.sample_pred - x)[keep]).square().sum()
    total, t, s = pretrain_sse(out, x, masked, 0.5, targets="masked")
    torch.testing.assert_close(t, tok)
    torch.testing.assert_close(s, on_masked)
    torch.testing.assert_close(total, tok + 0.5 * on_masked)
    total, _, s = pretrain_sse(out, x, masked, 2.0, targets="observed", mask_fraction=0.25)
    torch.testing.assert_close(s, 0.25 * on_all)
    torch.testing.assert_close(total, tok + 2.0 * 0.25 * on_all)
    total, _, s = pretrain_sse(out, x, masked, 0.0)
    torch.testing.assert_close(total, tok) and torch.testing.assert_close(s, torch.tensor(0.0))


# ---------------------------------------------------------------- ablation switches
def _shared_load(src: BulkFormer, dst: BulkFormer) -> tuple[set, set]:
    """Load every tensor ``dst`` shares with ``src``; return (only in src, only in dst)."""
    a, b = src.state_dict(), dst.state_dict()
    dst.load_state_dict({k: v for k, v in a.items() if k in b}, strict=False)
    return set(a) - set(b), set(b) - set(a)


def test_sample_weight_zero_removes_the_decoder_only():
    full, off = _model(), _model(sample_weight=0.0)
    gone, new = _shared_load(full, off)
    assert new == set() and gone == {n for n in _names(full) if n.startswith("sample_decoder.")}
    assert gone  # the decoder had parameters
    x, missing, masked = _batch()
    a, b = full(x, missing=missing, masked=masked), off(x, missing=missing, masked=masked)
    assert b.sample_pred is None
    assert torch.equal(a.sample, b.sample)
    torch.testing.assert_close(a.pred, b.pred + a.sample_pred)  # no decoder: no residual


def test_sample_token_off_uses_the_context_vector():
    full, off = _model(), _model(sample_token=False)
    gone, new = _shared_load(full, off)
    assert gone == {"sample_token"} and new == set()
    x, missing, masked = _batch()
    out = off(x, missing=missing, masked=masked)
    ctx = off.embedding.context(x.masked_fill(missing | masked, 0.0))
    torch.testing.assert_close(out.sample, ctx)
    assert out.hidden.shape == (3, G, 16)


def test_esm_identity_off_is_a_learned_table_and_nothing_else():
    full, off = _model(), _model(esm_identity=False)
    gone, new = _shared_load(full, off)
    assert gone == {
        "embedding.esm",
        "embedding.has_protein",
        "embedding.esm_proj.weight",
        "embedding.esm_proj.bias",
        "embedding.e_noprot",
    }
    assert new == {"embedding.gene_embed"}
    assert off.embedding.gene_embed.requires_grad
    with torch.no_grad():  # the learned table set to the projected ESM2 rows: same model
        off.embedding.gene_embed.copy_(full.embedding.identity())
    x, missing, masked = _batch()
    a, b = full(x, missing=missing, masked=masked), off(x, missing=missing, masked=masked)
    torch.testing.assert_close(a.pred, b.pred)
    torch.testing.assert_close(a.sample_pred, b.sample_pred)
    # the table is trained: the reconstruction loss gives it a gradient
    off.train()
    masked_sse(off(x, missing=missing, masked=masked).pred, x, masked).backward()
    assert off.embedding.gene_embed.grad.abs().sum() > 0


def test_context_mlp_off_drops_the_context_term_only():
    full, off = _model(), _model(context_mlp=False)
    gone, new = _shared_load(full, off)
    assert new == set() and gone == {n for n in _names(full) if n.startswith("embedding.context.")}
    with torch.no_grad():  # a context MLP whose output is 0 is the same model
        full.embedding.context[2].weight.zero_()
        full.embedding.context[2].bias.zero_()
    x, missing, masked = _batch()
    a, b = full(x, missing=missing, masked=masked), off(x, missing=missing, masked=masked)
    torch.testing.assert_close(a.pred, b.pred)
    torch.testing.assert_close(a.sample, b.sample)
    # without the context, a token's input embedding depends on its own gene only
    hide = missing | masked
    e = off.embedding(x, hide)
    x2 = x.clone()
    x2[:, 7] += 3.0
    e2 = off.embedding(x2, hide)
    others = torch.arange(G) != 7
    torch.testing.assert_close(e[:, others], e2[:, others])
    with torch.no_grad():
        full.embedding.context[2].weight.normal_()  # context on again: every token changes
    assert not torch.allclose(
        full.embedding(x, hide)[:, others], full.embedding(x2, hide)[:, others]
    )


def test_gene_decoder_uses_gene_identities():
    m = _model(sample_decoder="gene")
    x, missing, masked = _batch()
    out = m(x, missing=missing, masked=masked)
    dec = m.sample_decoder
    want = dec.out(dec.norm(out.sample)) @ m.embedding.identity().T + dec.bias
    torch.testing.assert_close(out.sample_pred, want)
    assert m.sample_decoder.out.weight.shape == (16, 16)


def test_config_errors():
    with pytest.raises(ValueError, match="needs a sample vector"):
        _config(sample_token=False, context_mlp=False)
    with pytest.raises(ValueError, match="pooling = 'sample'"):
        _config(sample_token=False, context_mlp=False, sample_weight=0.0)
    _config(sample_token=False, context_mlp=False, sample_weight=0.0, pooling="mean")
    with pytest.raises(ValueError, match="sample_weight"):
        _config(sample_weight=-1.0)
    with pytest.raises(ValueError, match="esm_identity"):
        _config(esm_identity=1)
    with pytest.raises(ValueError, match="sample_decoder"):
        _config(sample_decoder="mlp")
    with pytest.raises(ValueError, match="sample_targets"):
        _config(sample_targets="all")
    m = _model(sample_token=False, context_mlp=False, sample_weight=0.0, pooling="mean")
    with pytest.raises(ValueError, match="no sample vector"):
        m(_batch()[0]).pool("sample")


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"esm_identity": False},
        {"context_mlp": False},
        {"sample_token": False, "sample_decoder": "gene"},
    ],
)
def test_ablations_run_on_the_triton_backend_like_torch(over):
    pytest.importorskip("triton")
    from bulkformer.model._kernels import import_kernel

    fe = import_kernel("fused_embedding")
    if not (torch.cuda.is_available() or fe._interpreted()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    m_torch = _model(embed_backend="torch", **over).train()
    m_triton = _model(embed_backend="triton", **over).train()
    m_triton.load_state_dict(m_torch.state_dict())
    x, missing, masked = _batch()
    res = []
    for m in (m_torch, m_triton):
        out = m(x, missing=missing, masked=masked)
        pretrain_sse(out, x, masked, 1.0)[0].backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        res.append((out.pred, out.sample_pred, grads))
    assert m_triton.embedding.last_backend == "triton"
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-4, atol=1e-5)
    assert res[0][2].keys() == res[1][2].keys()
    for n in res[0][2]:
        torch.testing.assert_close(res[0][2][n], res[1][2][n], rtol=1e-4, atol=1e-5, msg=n)


def test_switches_are_saved_and_round_trip(tmp_path):
    over = dict(esm_identity=False, context_mlp=False, sample_decoder="gene", sample_weight=0.3)
    m = _model(**over)
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[k] for k in over} == over
    back = BulkFormer.from_pretrained(tmp_path).eval()
    assert back.config == m.config
    x, missing, masked = _batch()
    assert torch.equal(back(x, missing=missing).sample_pred, m(x, missing=missing).sample_pred)


# ---------------------------------------------------------------- old checkpoints
#: config.json fields and weight names as written before the sample vector existed
OLD_FIELDS = {
    "n_genes": G, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_esm": 12, "ree_scale": 4.0,
    "mlp_ratio": 4.0, "context_hidden": 24, "dropout": 0.0, "norm_eps": 1e-5, "bias": True,
    "init_std": 0.02, "pooling": "mean", "activation_checkpointing": False,
    "attn_backend": "auto", "embed_backend": "auto", "reference_id": None,
}  # fmt: skip
OLD_WEIGHTS = {
    "embedding.esm", "embedding.has_protein", "embedding.esm_proj.weight",
    "embedding.esm_proj.bias", "embedding.e_noprot", "embedding.e_mask",
    "embedding.context.0.weight", "embedding.context.0.bias", "embedding.context.2.weight",
    "embedding.context.2.bias", "norm.weight", "norm.bias", "head.weight", "head.bias",
    *(f"encoder.blocks.0.{n}" for n in (
        "ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias",
        "mlp.proj.weight", "mlp.proj.bias")),
}  # fmt: skip


def test_old_checkpoint_loads_with_old_behaviour(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    ref = BulkFormer(BulkFormerConfig(**{**LEGACY_DEFAULTS, **OLD_FIELDS})).eval()
    assert set(ref.state_dict()) == OLD_WEIGHTS  # the legacy settings build the old model
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in ref.state_dict().items()}  # fmt: skip
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(OLD_FIELDS))
    m = BulkFormer.from_pretrained(tmp_path).eval()
    c = m.config
    assert (c.sample_token, c.sample_weight, c.pooling) == (False, 0.0, "mean")
    assert c.esm_identity and c.context_mlp
    assert BulkFormerConfig.from_dict(OLD_FIELDS).sample_weight == 1.0  # a new config: new
    ref.load_state_dict(state)
    x, missing, masked = _batch()
    a, b = m(x, missing=missing, masked=masked), ref(x, missing=missing, masked=masked)
    assert torch.equal(a.pred, b.pred) and b.sample_pred is None
    # by hand: the old forward (no [SAMPLE] token) on the loaded weights
    hide = missing | masked
    h = m.head(m.norm(m.encoder(m.embedding(x, hide)))).squeeze(-1)
    torch.testing.assert_close(a.pred, h)
    torch.testing.assert_close(m.embed_samples(x, missing), m(x, missing=missing).pool("mean"))


def test_residual_head_adds_the_sample_decoder_to_the_token_head():
    on, off = _model(), _model(residual_head=False)
    gone, new = _shared_load(on, off)
    assert gone == set() and new == set()  # the same parameters
    x, missing, masked = _batch()
    a, b = on(x, missing=missing, masked=masked), off(x, missing=missing, masked=masked)
    torch.testing.assert_close(a.pred, b.pred + b.sample_pred)
    torch.testing.assert_close(a.sample_pred, b.sample_pred)
    torch.testing.assert_close(b.pred, off.head(b.hidden).squeeze(-1))
