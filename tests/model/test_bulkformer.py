import pytest
import torch

from bulkformer.data.genes import ReferenceMismatchError
from bulkformer.model import BulkFormer, BulkFormerConfig, pool
from bulkformer.model.encoder import resolve_attn_backend

G = 97


def _config(**kw):
    base = dict(n_genes=G, d_model=32, n_layers=2, n_heads=4, d_esm=24)
    return BulkFormerConfig(**{**base, **kw})


def _batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, G, generator=g)
    masked = torch.rand(B, G, generator=g) < 0.15
    missing = torch.rand(G, generator=g) < 0.1
    return x, missing, masked


@pytest.fixture
def model():
    torch.manual_seed(0)
    return BulkFormer(_config())


def test_forward_backward_shapes(model):
    x, missing, masked = _batch()
    out = model(x, missing=missing, masked=masked)
    assert out.pred.shape == (3, G) and out.pred.dtype == torch.float32
    assert out.hidden.shape == (3, G, 32)
    assert torch.equal(out.observed, ~(missing | masked))
    assert out.pool("mean").shape == out.pool("max").shape == (3, 32)
    loss = (out.pred - x)[masked & ~missing].square().mean()
    loss = loss + (out.sample_pred - x)[masked & ~missing].square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # e_noprot gets a zero gradient when every gene has a protein
    assert model.embedding.last_backend == "torch"


def test_missing_per_sample_and_none(model):
    x, missing, masked = _batch()
    a = model(x, missing=missing.expand(3, G).clone(), masked=masked).pred
    b = model(x, missing=missing, masked=masked).pred
    torch.testing.assert_close(a, b)
    assert model(x).pred.shape == (3, G)


def test_hidden_values_are_ignored(model):
    x, missing, masked = _batch()
    hide = missing | masked
    x2 = torch.where(hide, torch.randn_like(x) * 5, x)
    a = model(x, missing=missing, masked=masked)
    b = model(x2, missing=missing, masked=masked)
    torch.testing.assert_close(a.pred, b.pred)


def test_input_errors(model):
    x, missing, masked = _batch()
    with pytest.raises(ValueError, match=r"\(B, 97\)"):
        model(x[:, :50])
    with pytest.raises(ValueError, match="masked must be a bool"):
        model(x, masked=masked.float())
    with pytest.raises(ValueError, match="missing must be a bool"):
        model(x, missing=missing[:5])
    with pytest.raises(TypeError, match="floating"):
        model(x.long())


def test_esm_rows_must_match_n_genes():
    with pytest.raises(ValueError, match=r"ESM2 matrix has shape \(96, 24\).*\(97, 24\)"):
        BulkFormer(_config(), esm=torch.randn(96, 24))
    with pytest.raises(ValueError, match="has_protein"):
        BulkFormer(_config(), has_protein=torch.ones(96, dtype=torch.bool))


def test_genes_without_protein_use_e_noprot():
    torch.manual_seed(0)
    esm = torch.randn(G, 24)
    has_protein = torch.ones(G, dtype=torch.bool)
    has_protein[5] = False
    m = BulkFormer(_config(), esm=esm.numpy(), has_protein=has_protein)
    x = torch.randn(1, G)
    hide = torch.zeros(1, G, dtype=torch.bool)
    a = m.embedding(x, hide)
    m.embedding.esm[5].normal_()  # gene 5's ESM2 row must not matter, gene 4's must
    m.embedding.esm[4].normal_()
    b = m.embedding(x, hide)
    torch.testing.assert_close(a[:, 5], b[:, 5])
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_triton_embedding_backend_matches_torch():
    pytest.importorskip("triton")
    from bulkformer.model._kernels import import_kernel

    fe = import_kernel("fused_embedding")
    if not (torch.cuda.is_available() or fe._interpreted()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    torch.manual_seed(0)
    m_torch = BulkFormer(_config(embed_backend="torch"))
    m_triton = BulkFormer(_config(embed_backend="triton"))
    m_triton.load_state_dict(m_torch.state_dict())
    x, missing, masked = _batch()
    outs = []
    for m in (m_torch, m_triton):
        out = m(x, missing=missing, masked=masked)
        out.pred.square().mean().backward()
        outs.append((out.pred, m.embedding.e_mask.grad, m.embedding.esm_proj.weight.grad))
    assert m_triton.embedding.last_backend == "triton"
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path, model):
    x, missing, masked = _batch()
    model.eval()
    want = model(x, missing=missing, masked=masked)
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    back = BulkFormer.from_pretrained(tmp_path / "ckpt").eval()
    assert back.config == model.config
    got = back(x, missing=missing, masked=masked)
    assert torch.equal(got.pred, want.pred) and torch.equal(got.hidden, want.hidden)


def test_from_pretrained_errors(tmp_path):
    m = BulkFormer(_config(reference_id="gr-aaaaaaaaaaaa"))
    m.save_pretrained(tmp_path)
    BulkFormer.from_pretrained(tmp_path, reference_id="gr-aaaaaaaaaaaa")
    with pytest.raises(ReferenceMismatchError, match="gr-bbbbbbbbbbbb"):
        BulkFormer.from_pretrained(tmp_path, reference_id="gr-bbbbbbbbbbbb")
    with pytest.raises(FileNotFoundError, match="not a BulkFormer checkpoint"):
        BulkFormer.from_pretrained(tmp_path / "empty")
    _config(d_model=64).to_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match="does not match"):
        BulkFormer.from_pretrained(tmp_path)


def test_pool_by_hand():
    hidden = torch.tensor([[[1.0, -1.0], [100.0, 100.0], [3.0, -5.0]]])  # (1, 3, 2)
    observed = torch.tensor([[True, False, True]])
    torch.testing.assert_close(pool(hidden, observed, "mean"), torch.tensor([[2.0, -3.0]]))
    torch.testing.assert_close(pool(hidden, observed, "max"), torch.tensor([[3.0, -1.0]]))
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.equal(pool(hidden, none, "max"), torch.zeros(1, 2))
    assert torch.equal(pool(hidden, none, "mean"), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        pool(hidden, observed, "sum")


def test_embed_samples_restores_mode(model):
    x, missing, _ = _batch()
    model.train()
    emb = model.embed_samples(x, missing)
    assert model.training and emb.shape == (3, 32) and not emb.requires_grad
    want = pool(model.eval()(x, missing=missing).hidden, ~missing, "max")
    torch.testing.assert_close(model.embed_samples(x, missing, how="max"), want)


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = BulkFormer(_config())
    b = BulkFormer(_config(activation_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x, missing, masked = _batch()
    for m in (a, b):
        m(x, missing=missing, masked=masked).pred.square().mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_flops_and_mfu(model):
    c = model.config
    n_tok = model.num_parameters(per_token=True)
    assert n_tok < model.num_parameters()
    h = c.context_width
    want = 6 * n_tok + 12 * c.n_layers * c.d_model * G + 6 * (G * h + h * c.d_model) / G
    want += 6 * c.d_model  # the sample decoder Linear(d → G), once per sample
    assert model.flops_per_token() == pytest.approx(want)
    assert model.estimate_mfu(1e6, peak_flops=1e12) == pytest.approx(want * 1e6 / 1e12)


def test_attention_backend_choice():
    x = torch.zeros(1, 4, 8)
    assert resolve_attn_backend("auto", x, 8) == "sdpa"
    assert resolve_attn_backend("sdpa", x, 8) == "sdpa"
    with pytest.raises(RuntimeError, match="flash-attn installed"):
        resolve_attn_backend("flash", x, 8)
