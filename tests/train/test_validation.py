"""Pretraining validation: fixed random masks, baselines on the same positions, and no label
anywhere in pretraining."""

import numpy as np
import pytest
import torch
from train_helpers import FAST

from bulkformer.train import pretrain
from bulkformer.train.monitor import read_metrics
from bulkformer.train.validation import BaselineImputers, val_mask


def test_val_mask_is_per_row_and_per_mask():
    rng = np.random.default_rng(0)
    observed = rng.random((9, 301)) > 0.1
    rows = np.array([3, 8, 11, 40, 41, 42, 50, 77, 90])
    whole = val_mask(observed, rows, 0.2, 0, seed=5)
    parts = np.concatenate([val_mask(observed[a : a + 4], rows[a : a + 4], 0.2, 0, 5)
                            for a in range(0, 9, 4)])  # fmt: skip
    assert np.array_equal(whole, parts)  # batching does not move the positions
    assert not (whole & ~observed).any()
    assert 0.15 < whole.sum() / observed.sum() < 0.25
    other = val_mask(observed, rows, 0.2, 1, seed=5)
    assert (whole != other).mean() > 0.2  # another mask: other positions
    assert np.array_equal(whole, val_mask(observed, rows, 0.2, 0, seed=5))


def _low_rank(n, G=60, r=3, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, r)) @ rng.normal(size=(r, G)) + noise * rng.normal(size=(n, G))


def test_baselines_on_given_positions():
    data = _low_rank(50)
    obs = np.ones_like(data, dtype=bool)
    b = BaselineImputers(data[:40], obs[:40], fraction=0.2)
    np.testing.assert_allclose(b.gene_mean, data[:40].mean(0), rtol=1e-5, atol=1e-6)
    vis = np.random.default_rng(2).random((10, 60)) > 0.2
    p = b.predict(data[40:], vis)
    assert set(p) == {"gene_mean", "knn", "pca"} and all(v.shape == (10, 60) for v in p.values())
    assert b.rank >= 3  # a rank-3 signal
    # the evaluation's PCA imputer, the same one the model's prior uses
    from bulkformer.eval.imputers import PCAImputer

    tr = data[:40].astype(np.float32)  # (the baselines hold float32 training rows)
    want = PCAImputer().fit(tr, obs[:40], max_k=b.rank).predict(data[40:], vis, b.rank)
    np.testing.assert_array_equal(p["pca"], want)
    masked = ~vis
    err = ((p["pca"] - data[40:])[masked] ** 2).mean()
    assert err < 1e-2 * (data[40:][masked] ** 2).mean()  # low-rank data: recovered


def test_validation_scores_baselines_on_the_models_positions(corpus64, tmp_path):
    r = pretrain(corpus64, tmp_path / "run", steps=2, **{**FAST, "val_every": 1})
    val = [x for x in read_metrics(r.metrics) if x["kind"] == "val"]
    assert len(val) == 2
    for key in ("val_gene_mean", "val_knn", "val_pca", "val_sample_mse"):
        assert val[0][key] is not None and val[0][key] > 0, key
        assert r.val_extra[key] == pytest.approx(val[-1][key])
    assert val[0]["val_knn"] == val[1]["val_knn"]  # computed once: the same positions
    assert val[0]["val_mse"] != val[1]["val_mse"]  # the model changed
    # the gene-mean MSE by hand, on 4 masks of every val row (val_mask, seed + 7919)
    rows = np.sort(corpus64.splits["val"])
    x = np.asarray(corpus64.expression[rows], dtype=np.float32)
    tr = np.asarray(corpus64.expression[np.asarray(corpus64.splits["train"])], dtype=np.float32)
    observed = ~np.asarray(corpus64.missing)[corpus64.samples["source_index"].to_numpy()[rows]]
    sse = n = 0.0
    for k in range(4):
        m = val_mask(observed, rows, 0.15, k, 0 + 7919)
        sse += ((x - tr.mean(0)) ** 2)[m].sum()
        n += m.sum()
    assert val[0]["val_gene_mean"] == pytest.approx(sse / n, rel=1e-4)
    assert val[0]["val_baseline"] == pytest.approx(float((x**2)[val_mask(observed, rows, 0.15, 0,
        7919)].mean()), rel=0.5)  # fmt: skip


def test_no_label_reaches_pretraining(corpus64, tmp_path):
    """Two corpora that differ only in their labels give bit-identical pretraining."""
    from bulkformer.data.corpus import Corpus

    a, b = Corpus.open(corpus64.path), Corpus.open(corpus64.path)
    n = len(a.samples)
    a.samples["label"] = np.where(np.arange(n) % 2 == 0, "female", "male")
    b.samples["label"] = np.random.default_rng(0).permutation(a.samples["label"].to_numpy())
    for key in ("sex", "label_index"):
        b.samples[key] = "x"
    opts = dict(FAST, steps=3, val_every=3)
    ra, rb = pretrain(a, tmp_path / "a", **opts), pretrain(b, tmp_path / "b", **opts)
    assert ra.val_mse == rb.val_mse and ra.train_loss == rb.train_loss
    from bulkformer.model.pretrained import load_pretrained

    wa = load_pretrained(ra.pretrained).model.state_dict()
    wb = load_pretrained(rb.pretrained).model.state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
