"""Pretraining end to end on real demo data (CPU): learning, DDP equivalence, resume, faults."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from train_helpers import FAST, PY, fast_cli_args, subprocess_env

from bulkformer.data.corpus import Corpus
from bulkformer.data.derive import derive_corpus
from bulkformer.data.genes import ReferenceMismatchError
from bulkformer.model import BulkFormerConfig
from bulkformer.model.pretrained import load_pretrained
from bulkformer.train import (
    BlockOrder,
    CheckpointMismatchError,
    NonFiniteLossError,
    list_checkpoints,
    load_checkpoint,
    pretrain,
)
from bulkformer.train.monitor import read_metrics


def train_losses(run):
    return [
        (r["step"], r["loss"]) for r in read_metrics(run / "metrics.csv") if r["kind"] == "train"
    ]


def weights(run):
    return load_pretrained(run / "pretrained").model.state_dict()


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=k)


# --------------------------------------------------------------------------- learning
def test_tiny_model_beats_the_gene_mean_baseline(corpus256, tmp_path):
    """Tiny preset on the 256 most variable demo genes: val MSE on masked genes ends clearly
    below predicting each gene's mean (z = 0), and the run directory is complete."""
    # without the PCA prior, which alone beats the gene mean: this checks that the network learns
    cfg = BulkFormerConfig.from_preset(
        "tiny", n_genes=corpus256.n_genes, reference_id=corpus256.reference.id, pca_prior=0
    )
    r = pretrain(
        corpus256,
        tmp_path / "run",
        config=cfg,
        steps=120,
        batch_size=16,
        lr=3e-3,
        warmup=0.1,
        val_every=40,
        ckpt_every=60,
        log_every=10,
        progress=True,
        tensorboard=None,
        threads=1,
    )
    first, last = r.history[0], r.history[-1]
    assert last["val_baseline"] == pytest.approx(first["val_baseline"])  # same positions
    assert r.val_mse < 0.92 * r.val_baseline, (r.val_mse, r.val_baseline)
    assert r.val_mse < first["val_mse"]
    assert [s for s, _ in list_checkpoints(r.out)] == [60, 120]
    for name in ("metrics.csv", "loss_curve.png", "run.json"):
        assert (r.out / name).is_file()
    if importlib.util.find_spec("tensorboard") is not None:  # the optional extra
        assert any((r.out / "tb").iterdir())
    else:  # without it metrics go to CSV only, and no empty tb/ is left behind
        assert not (r.out / "tb").exists() or not any((r.out / "tb").iterdir())
    p = load_pretrained(r.pretrained)
    assert p.reference.id == corpus256.reference.id == p.model.config.reference_id
    assert p.metadata["training"]["steps"] == 120
    assert p.metadata["training"]["val_mse"] == pytest.approx(r.val_mse)
    assert np.array_equal(p.stats.mean, corpus256.stats.mean)


# --------------------------------------------------------------------------- DDP / FSDP
DIST_OPTS = dict(FAST, steps=4, ckpt_every=2, val_every=2)


@pytest.fixture(scope="module")
def one_process_run(corpus64, tmp_path_factory):
    return pretrain(
        corpus64, tmp_path_factory.mktemp("one") / "run", **{**DIST_OPTS, "batch_size": 4}
    )


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_doubled_batch(
    corpus64, one_process_run, tmp_path, mode
):
    """torchrun, 2 ranks on gloo, batch 2 each == 1 process, batch 4: losses, gradient norms,
    val MSE and final weights (to float rounding). FSDP is FSDP2 (fully_shard), on CPU too."""
    one, run = one_process_run, tmp_path / mode
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "bulkformer.cli", "pretrain", "--corpus", str(corpus64.path)]
    cmd += ["--out", str(run), f"--{mode}", "--device", "cpu"]
    cmd += fast_cli_args(**{**DIST_OPTS, "batch_size": 2})
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = train_losses(one.out), train_losses(run)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=1e-5)
    # gradients too (Adam hides a wrong gradient scale from the weights)
    gn = [
        [r["grad_norm"] for r in read_metrics(d / "metrics.csv") if r["kind"] == "train"]
        for d in (one.out, run)
    ]
    np.testing.assert_allclose(gn[0], gn[1], rtol=1e-5)
    va = [r["val_mse"] for r in read_metrics(run / "metrics.csv") if r["kind"] == "val"]
    np.testing.assert_allclose(va, [h["val_mse"] for h in one.history], rtol=1e-5)
    assert_same_weights(weights(one.out), weights(run), atol=1e-5)
    # the checkpoint holds full (gathered) state dicts, loadable without a process group
    state = load_checkpoint(run)
    assert state["model"].keys() == weights(one.out).keys()
    assert json.loads((run / "run.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------------- kill and resume
#: ``bulkformer`` whose torch.save sleeps after writing checkpoint 6's state.pt (before the
#: rename), so that the test can kill it mid-write
SLEEP_IN_CHECKPOINT_6 = """
import sys, time, torch
from bulkformer.cli import main
save = torch.save
def slow_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if ".tmp-step-00000006-" in str(getattr(f, "name", f)):
        f.flush()
        time.sleep(120)
torch.save = slow_save
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_then_resume_matches_uninterrupted(corpus64, tmp_path):
    opts = dict(FAST, steps=8, ckpt_every=2, keep_last=0, seed=3)
    ref = pretrain(corpus64, tmp_path / "ref", **opts)

    run = tmp_path / "killed"
    cmd = [PY, "-c", SLEEP_IN_CHECKPOINT_6, "pretrain", "--corpus", str(corpus64.path)]
    cmd += ["--out", str(run)] + fast_cli_args(**opts)
    proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until checkpoint 6 is half written
            tmps = list((run / "checkpoints").glob(".tmp-step-00000006-*/state.pt"))
            if tmps:
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("checkpoint 6 was never started")
        time.sleep(0.5)
        assert tmps[0].exists()  # held open by the slowed torch.save, not just caught by luck
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]  # the half-written one is invisible
    assert load_checkpoint(run)["step"] == 4
    assert max(s for s, _ in train_losses(run)) >= 6  # the killed run got past step 4

    res = pretrain(corpus64, run, resume=True, **opts)
    assert res.steps == 8
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6, 8]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    a, b = train_losses(ref.out), train_losses(run)
    assert [s for s, _ in b] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-6, atol=0)
    assert_same_weights(weights(ref.out), weights(run), atol=1e-6)


def tensors(obj):
    """The tensors and arrays of a nested state, in order."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def test_resume_is_bit_identical_to_the_uninterrupted_run(corpus64, tmp_path):
    """Resuming at step 3 of 6 (accumulation, the contrastive term and validation on) ends in
    exactly the state of the run that went through: weights, Adam moments, RNGs, data
    position, and every metric of the steps after the resume."""
    opts = dict(FAST, steps=6, ckpt_every=3, keep_last=0, val_every=3, accum=2, seed=5)
    opts["contrastive_weight"] = 0.3
    ref = pretrain(corpus64, tmp_path / "ref", **opts)
    run = tmp_path / "resumed"
    shutil.copytree(ref.out, run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    res = pretrain(corpus64, run, resume=True, **opts)
    assert res.steps == 6
    a, b = load_checkpoint(ref.out), load_checkpoint(run)
    assert a["step"] == b["step"] == 6 and a["data"] == b["data"]
    assert a["rng"][0]["python"] == b["rng"][0]["python"]
    ta = tensors({k: a[k] for k in ("model", "optimizer", "scheduler", "rng")})
    tb = tensors({k: b[k] for k in ("model", "optimizer", "scheduler", "rng")})
    assert len(ta) == len(tb) > 10
    for x, y in zip(ta, tb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else np.array_equal(x, y)
    cols = ("kind", "step", "lr", "loss", "mse", "contrastive", "grad_norm", "val_mse")
    rows = [[[r[c] for c in cols] for r in read_metrics(d / "metrics.csv")] for d in (ref.out, run)]
    assert rows[0] == rows[1] and len(rows[0]) == 8  # 6 train rows, 2 val rows
    assert_same_weights(weights(ref.out), weights(run))  # the export too, atol 0


# --------------------------------------------------------------------------- faults
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus64, tmp_path):
    bad = derive_corpus(corpus64, tmp_path / "bad", genes=corpus64.reference)
    # rows of the third global batch (batch size 4, seed 0) become NaN
    order = BlockOrder(bad.splits["train"], block_rows=1024, seed=0)
    rows = np.sort(order.epoch(0)[1][8:12])
    x = np.load(bad.path / "expression.npy", mmap_mode="r+")
    x[rows] = np.nan
    x.flush()
    del x
    with pytest.raises(NonFiniteLossError, match="step 3") as e:
        pretrain(bad.path, tmp_path / "run", steps=10, ckpt_every=1, **FAST)
    assert "step-00000002" in str(e.value)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2]
    state = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_changed_config_resume_is_refused_unless_forced(corpus64, tmp_path, capsys):
    from bulkformer.cli import main

    pretrain(corpus64, tmp_path / "run", steps=2, ckpt_every=2, **FAST)
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(corpus64, tmp_path / "run", steps=4, **FAST)
    with pytest.raises(CheckpointMismatchError, match=r"steps: checkpoint 2 → now 4"):
        pretrain(corpus64, tmp_path / "run", steps=4, resume=True, **FAST)
    cfg = tmp_path / "c.json"
    BulkFormerConfig.from_preset("tiny", n_genes=64, d_model=32).to_json(cfg)
    argv = ["pretrain", "--corpus", str(corpus64.path), "--out", str(tmp_path / "run")]
    argv += ["--steps", "2", "--config", str(cfg), "--resume"] + fast_cli_args()
    assert main(argv) == 1
    assert "config.d_model: checkpoint 48 → now 32" in capsys.readouterr().err
    r = pretrain(corpus64, tmp_path / "run", steps=4, resume=True, force=True, **FAST)
    assert r.steps == 4
    assert [s for s, _ in train_losses(tmp_path / "run")] == [1, 2, 3, 4]


def test_mismatched_gene_references_are_refused(corpus64, demo_corpus, tmp_path, monkeypatch):
    other = BulkFormerConfig.from_preset("tiny", n_genes=64, reference_id="gr-000000000000")
    with pytest.raises(ReferenceMismatchError, match="gr-000000000000"):
        pretrain(corpus64, tmp_path / "a", config=other, steps=1, **FAST)
    cfg = tmp_path / "c.json"
    BulkFormerConfig.from_preset("tiny", n_genes=65).to_json(cfg)
    with pytest.raises(ValueError, match="n_genes=65"):
        pretrain(corpus64, tmp_path / "a", config=str(cfg), steps=1, **FAST)

    # a run on one 64-gene corpus cannot be resumed on another (even with force)
    pretrain(corpus64, tmp_path / "b", steps=1, ckpt_every=1, **FAST)
    by_mean = derive_corpus(demo_corpus, tmp_path / "m64", n_genes=64, by="mean")
    assert by_mean.reference.id != corpus64.reference.id
    with pytest.raises(ReferenceMismatchError, match="reference_id"):
        pretrain(by_mean, tmp_path / "b", steps=2, resume=True, force=True, **FAST)

    # ESM2 matrices (bulkformer.esm.load_esm_matrix contract, stubbed here)
    calls = {}

    def load_esm_matrix(path, reference=None):
        calls["reference"] = reference.id
        meta = json.loads(open(path).read())
        emb = np.ones((meta["rows"], 32), dtype=np.float32)
        return emb, np.ones(meta["rows"], dtype=bool), {"reference_id": meta["reference_id"]}

    monkeypatch.setitem(
        sys.modules, "bulkformer.esm", types.SimpleNamespace(load_esm_matrix=load_esm_matrix)
    )
    esm = tmp_path / "esm.json"
    esm.write_text(json.dumps({"rows": 64, "reference_id": "gr-ffffffffffff"}))
    with pytest.raises(ReferenceMismatchError, match="ESM2 matrix"):
        pretrain(corpus64, tmp_path / "c", esm=esm, steps=1, **FAST)
    esm.write_text(json.dumps({"rows": 63, "reference_id": None}))
    with pytest.raises(ReferenceMismatchError, match=r"shape \(63, 32\)"):
        pretrain(corpus64, tmp_path / "c", esm=esm, steps=1, **FAST)
    esm.write_text(json.dumps({"rows": 64, "reference_id": corpus64.reference.id}))
    r = pretrain(corpus64, tmp_path / "c", esm=esm, steps=1, **FAST)
    assert calls["reference"] == corpus64.reference.id
    assert r.config.d_esm == 32


def test_corpus_too_small_for_the_batch(corpus64, tmp_path):
    n = len(Corpus.open(corpus64.path).splits["train"])
    with pytest.raises(ValueError, match=f"has {n} training rows but one global batch needs"):
        pretrain(corpus64, tmp_path / "run", **{**FAST, "batch_size": n + 1}, steps=1)


def test_accumulation_equals_the_larger_batch(corpus64, tmp_path):
    """accum=2 × batch 2 == batch 4: the loss is normalised by the whole step's masked count
    (on CPU the two mask draws are the one larger draw, so the steps are the same)."""
    opts = dict(FAST, steps=3)
    big = pretrain(corpus64, tmp_path / "big", **{**opts, "batch_size": 4})
    acc = pretrain(corpus64, tmp_path / "acc", **{**opts, "batch_size": 2, "accum": 2})
    rows = [
        [(r["loss"], r["grad_norm"]) for r in read_metrics(x.metrics) if r["kind"] == "train"]
        for x in (big, acc)
    ]
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-5)
    assert_same_weights(weights(big.out), weights(acc.out), atol=1e-5)


def test_contrastive_term_and_accumulation_run(corpus64, tmp_path):
    r = pretrain(
        corpus64, tmp_path / "run", steps=3, **{**FAST, "accum": 2}, contrastive_weight=0.5
    )
    rows = [x for x in read_metrics(r.metrics) if x["kind"] == "train"]
    assert all(x["contrastive"] > 0 and x["loss"] > x["mse"] for x in rows)
    assert np.isfinite(r.train_loss)


def test_cli_subset_genes(demo_corpus, tmp_path, capsys):
    from bulkformer.cli import main

    assert (
        main(
            [
                "subset-genes",
                "--corpus",
                str(demo_corpus.path),
                "--out",
                str(tmp_path / "s"),
                "--n-genes",
                "100",
            ]
        )
        == 0
    )
    assert "genes     100" in capsys.readouterr().out
    assert Corpus.open(tmp_path / "s").manifest["derived_from"]["rule"] == "variance"


# --------------------------------------------------------------------------- PCA prior
def test_prior_is_fitted_on_training_rows_only(corpus64, tmp_path):
    """The prior a run fits equals fit_prior on the corpus's training rows; changing the
    validation and test rows' values does not change it; the summary records its rank."""
    from bulkformer.model.prior import PCAPrior
    from bulkformer.train.prior import fit_prior

    opts = dict(FAST, steps=1, val_every=0)
    r = pretrain(corpus64, tmp_path / "run", config="tiny", **opts)
    p = load_pretrained(r.pretrained)
    got = p.model.prior
    train = np.sort(np.asarray(corpus64.splits["train"]))
    x = np.asarray(corpus64.expression[train], dtype=np.float32)
    obs = ~np.asarray(corpus64.missing)[corpus64.samples["source_index"].to_numpy()[train]]
    want = PCAPrior(corpus64.n_genes, got.max_rank)
    info = fit_prior(want, x, obs, fraction=0.15, seed=0)
    assert info["rank"] > 0 and int(got.rank) == info["rank"]
    for name in ("mean", "components", "penalty"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)
    assert p.metadata["training"]["pca_prior_rank"] == info["rank"]
    # the same run on a corpus whose held-out rows are different
    other = tmp_path / "other"
    shutil.copytree(corpus64.path, other)
    held = np.sort(np.r_[corpus64.splits["val"], corpus64.splits["test"]])
    expr = np.load(other / "expression.npy", mmap_mode="r+")
    expr[held] = np.random.default_rng(0).normal(size=expr[held].shape).astype(expr.dtype)
    expr.flush()
    del expr
    r2 = pretrain(Corpus.open(other), tmp_path / "run2", config="tiny", **opts)
    got2 = load_pretrained(r2.pretrained).model.prior
    torch.testing.assert_close(got2.components, got.components, rtol=0, atol=0)
    # pca_prior = 0: no prior at all
    r3 = pretrain(
        corpus64,
        tmp_path / "run3",
        config=BulkFormerConfig.from_preset(
            "tiny", n_genes=corpus64.n_genes, reference_id=corpus64.reference.id, pca_prior=0
        ),
        **opts,
    )
    assert not hasattr(load_pretrained(r3.pretrained).model, "prior")
