"""The linear (probabilistic-PCA) prior of the model: the same estimate as the evaluation's
PCA imputer, no gradient, no effect until fitted, fitted by pretraining on training rows only."""

import numpy as np
import pytest
import torch

from bulkformer.eval.imputers import PCAImputer
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.config import LEGACY_DEFAULTS
from bulkformer.model.prior import PCAPrior
from bulkformer.train.prior import fit_prior

G = 37


def _low_rank(n, rng, rank=4, noise=0.1):
    z = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, G)) + noise * rng.normal(size=(n, G))
    return z.astype(np.float32)


def _fitted(rng, k=5, n=29):
    train = _low_rank(n, rng)
    obs = rng.random(train.shape) > 0.1
    pca = PCAImputer().fit(train, obs, max_k=k)
    prior = PCAPrior(G, max_rank=k + 3)  # room left: unused components must not matter
    prior.set(pca.mean_, pca.components_, pca.penalty(k))
    return pca, prior


def test_prior_equals_the_pca_imputer_on_random_data():
    rng = np.random.default_rng(0)
    pca, prior = _fitted(rng)
    x = _low_rank(11, rng)
    hide = rng.random(x.shape) < 0.3
    hide[0] = False  # nothing hidden
    hide[1, :-2] = True  # almost everything hidden
    want = pca.predict(x, ~hide, 5)
    got = prior(torch.from_numpy(x), torch.from_numpy(hide)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert int(prior.rank) == 5


def test_prior_ignores_hidden_values_and_has_no_gradient():
    rng = np.random.default_rng(1)
    _, prior = _fitted(rng)
    x = torch.from_numpy(_low_rank(4, rng)).requires_grad_(True)
    hide = torch.from_numpy(rng.random((4, G)) < 0.3)
    a = prior(x, hide)
    y = x.detach().clone()
    y[hide] = float("nan")  # hidden values are never read, not even multiplied by 0
    b = prior(y, hide)
    assert torch.equal(a, b) and not a.requires_grad
    assert not any(p.requires_grad for p in prior.parameters())


def test_unfitted_prior_predicts_zero_and_the_rest_of_the_model_is_unchanged():
    torch.manual_seed(0)
    cfg = BulkFormerConfig(n_genes=G, d_model=16, n_layers=1, n_heads=2, d_esm=12)
    with_prior = BulkFormer(cfg).eval()
    torch.manual_seed(0)
    without = BulkFormer(cfg.replace(pca_prior=0)).eval()
    extra = set(with_prior.state_dict()) - set(without.state_dict())
    assert extra == {"prior.mean", "prior.components", "prior.penalty", "prior.rank"}
    x = torch.randn(3, G)
    masked = torch.rand(3, G) < 0.2
    a, b = with_prior(x, masked=masked), without(x, masked=masked)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.sample_pred, b.sample_pred)
    assert not with_prior.prior(x, masked).any()
    # the token head corrects the prior (0 here), not the sample decoder as without a prior
    torch.testing.assert_close(a.pred, b.pred - b.sample_pred, rtol=0, atol=1e-6)


def test_fitted_prior_is_the_floor_of_pred_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    cfg = BulkFormerConfig(n_genes=G, d_model=16, n_layers=1, n_heads=2, d_esm=12, pca_prior=8)
    torch.manual_seed(0)
    m = BulkFormer(cfg).eval()
    x = torch.from_numpy(_low_rank(5, rng))
    masked = torch.rand(5, G) < 0.2
    before = m(x, masked=masked)
    pca, _ = _fitted(rng)
    m.prior.set(pca.mean_, pca.components_, pca.penalty(5))
    after = m(x, masked=masked)
    prior = torch.from_numpy(pca.predict(x.numpy(), ~masked.numpy(), 5))
    torch.testing.assert_close(after.pred - before.pred, prior, rtol=1e-4, atol=1e-4)
    assert torch.equal(after.sample, before.sample)  # the sample vector does not see the prior
    m.save_pretrained(tmp_path)
    back = BulkFormer.from_pretrained(tmp_path).eval()
    assert torch.equal(back(x, masked=masked).pred, after.pred)


def test_prior_set_checks_shapes_and_values():
    prior = PCAPrior(G, max_rank=4)
    ok = dict(mean=np.zeros(G), components=np.zeros((G, 2)), penalty=np.ones(2))
    with pytest.raises(ValueError, match="components"):
        prior.set(**{**ok, "components": np.zeros((G + 1, 2))})
    with pytest.raises(ValueError, match="max_rank"):
        prior.set(ok["mean"], np.zeros((G, 5)), np.ones(5))
    with pytest.raises(ValueError, match="positive"):
        prior.set(ok["mean"], ok["components"], np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        prior.set(np.full(G, np.nan), ok["components"], ok["penalty"])


def test_config_and_legacy():
    assert LEGACY_DEFAULTS["pca_prior"] == 0  # old checkpoints load without a prior
    assert BulkFormerConfig.from_dict({"n_genes": G}, legacy=True).pca_prior == 0
    with pytest.raises(ValueError, match="pca_prior"):
        BulkFormerConfig(n_genes=G, pca_prior=-1)


def test_fit_prior_chooses_the_rank_on_training_rows():
    rng = np.random.default_rng(3)
    x = _low_rank(60, rng, rank=3, noise=0.05)
    obs = np.ones_like(x, dtype=bool)
    prior = PCAPrior(G, max_rank=16)
    info = fit_prior(prior, x, obs, fraction=0.15, seed=0)
    assert 3 <= info["rank"] <= 8  # a rank-3 signal: a few components, not all 16
    assert info["rows"] == 60 and set(info["val_mse_z"]) <= {1, 2, 4, 8, 16}
    want = PCAImputer().fit(x, obs, max_k=info["rank"])
    np.testing.assert_allclose(prior.mean.numpy(), want.mean_, rtol=1e-5, atol=1e-6)
    tiny = PCAPrior(G, max_rank=4)
    assert fit_prior(tiny, x[:2], obs[:2], fraction=0.15)["rank"] == 0  # too few rows: off
    assert int(tiny.rank) == 0 and not tiny.components.any()


def test_prior_with_many_components_on_several_threads():
    """k > 200 with a batch on 2 threads (where batched LU fails on CPU builds): Cholesky."""
    rng = np.random.default_rng(4)
    g, k = 300, 220
    train = (rng.normal(size=(240, 30)) @ rng.normal(size=(30, g))).astype(np.float32)
    train += 0.3 * rng.normal(size=train.shape).astype(np.float32)
    obs = np.ones_like(train, dtype=bool)
    pca = PCAImputer().fit(train, obs, max_k=k)
    prior = PCAPrior(g, max_rank=256)
    prior.set(pca.mean_, pca.components_, pca.penalty(k))
    x = train[:6] + 0.1 * rng.normal(size=(6, g)).astype(np.float32)
    hide = rng.random(x.shape) < 0.15
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = prior(torch.from_numpy(x), torch.from_numpy(hide)).numpy()
    finally:
        torch.set_num_threads(threads)
    want = pca.predict(x, ~hide, k)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_near_singular_system_falls_back_to_a_jitter_and_stays_finite():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(G, 6)))
    prior = PCAPrior(G, max_rank=6)
    prior.set(np.zeros(G), q, np.full(6, 1e-30))  # no ridge to speak of
    x = torch.from_numpy(rng.normal(size=(3, G)).astype(np.float32))
    hide = torch.ones(3, G, dtype=torch.bool)
    hide[:, :2] = False  # 2 visible genes for 6 components: singular without the jitter
    A = (q[:2].T @ q[:2]) + 1e-30 * np.eye(6)
    assert torch.linalg.cholesky_ex(torch.from_numpy(A).float()[None])[1].item() > 0
    out = prior(x, hide)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :2], x[:, :2], rtol=0, atol=0.05)  # the visible ones fit
