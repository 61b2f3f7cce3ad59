"""Pretraining benchmarks: our training step against a plain PyTorch loop, and the data loader
against what a step consumes, at the full G = 20,010 genes.

Run (benchmarks are disabled by the default ``addopts``, so enable them)::

    python -m pytest benches/bench_train.py --benchmark-enable -q -s

Cases:

- ``test_train_step_cpu_ours_vs_plain``: tokens/s of a training step of the tiny preset, batch
  ``BULKFORMER_BENCH_TRAIN_BATCH`` (default 1), through :func:`bulkformer.train.pretrain` (corpus
  memmap → prefetching loader → device masks → masked MSE with a global count → clipping →
  AdamW + schedule) against a plain loop over the same model on random tensors with plain
  AdamW. ``ratio = ours ÷ plain``; ≥ 1.0 means our machinery costs nothing (steps 2… of each,
  median; the first step is warm-up).
- ``test_sample_objective_overhead``: seconds of a plain training step of the tiny preset at
  G = 20,010 with today's default (``[SAMPLE]`` token, sample decoder, ``objectives.pretrain_sse``,
  the 256-component PCA prior), without the prior, and off (``sample_token=False,
  sample_weight=0, pca_prior=0``: the token loss only), taking turns step by step; ``overhead``
  = on ÷ off − 1 (median of steps 2…), target ≤ 10%.
- ``test_loader_throughput``: samples/s of :class:`bulkformer.train.BatchLoader` over a
  20,010-gene corpus on disk (page cache warm), against the step's consumption
  (samples/s of the step above, or of one fresh step): ``loader_vs_step`` should be ≥ 20.
- ``test_train_step_gpu_base100m_bf16``: tokens/s and MFU (``BULKFORMER_PEAK_FLOPS``) of
  ``pretrain`` with the ~100M preset in bf16 on CUDA; skips without CUDA.

The corpus (2,000 synthetic samples × 20,010 genes, 80 MB) is cached in the bench cache.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch

from bulkformer.data.corpus import Corpus, build_corpus
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.train import BatchLoader, BlockOrder, pretrain
from bulkformer.train.monitor import read_metrics

G = 20_010
N_SAMPLES = 2_000
STEPS = 3
BATCH = int(os.environ.get("BULKFORMER_BENCH_TRAIN_BATCH", "1"))
CUDA = torch.cuda.is_available()
PEAK_FLOPS = float(os.environ.get("BULKFORMER_PEAK_FLOPS", "989e12"))
_measured: dict = {}  # step figures shared with the loader case


@pytest.fixture(scope="module")
def corpus20k(bench_cache) -> Corpus:
    from bench_corpus import SyntheticSource, bench_reference

    out = bench_cache / f"train_corpus_{N_SAMPLES}x{G}"
    if not (out / "manifest.json").exists():
        ref = bench_reference(G)
        build_corpus(
            SyntheticSource(N_SAMPLES, ref), out, ref, min_nonzero=0, overwrite=True, progress=False
        )
    return Corpus.open(out)


def _plain_step_seconds(steps: int, batch: int) -> list[float]:
    """Seconds per step of a plain loop: same model and seed, random tensors, plain AdamW."""
    torch.manual_seed(0)
    cfg = BulkFormerConfig.from_preset("tiny", n_genes=G)
    model = BulkFormer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        x = torch.randn(batch, G)
        masked = torch.rand(batch, G) < 0.15
        t = time.perf_counter()
        loss = (model(x, masked=masked).pred - x)[masked].square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times


def test_train_step_cpu_ours_vs_plain(benchmark, corpus20k, tmp_path):
    plain = _plain_step_seconds(STEPS, BATCH)

    def ours():
        return pretrain(
            corpus20k,
            tmp_path / "run",
            config="tiny",
            steps=STEPS,
            batch_size=BATCH,
            log_every=1,
            val_every=0,
            val_max_samples=1,
            ckpt_every=0,
            progress=False,
            tensorboard=False,
            force=True,
            device="cpu",
        )

    r = benchmark.pedantic(ours, rounds=1, iterations=1)
    rows = [x for x in read_metrics(r.metrics) if x["kind"] == "train"]
    ours_tps = statistics.median(x["tokens_per_s"] for x in rows[1:])
    plain_tps = BATCH * G / statistics.median(plain[1:])
    _measured["step_samples_per_s"] = ours_tps / G
    benchmark.extra_info.update(
        G=G,
        batch=BATCH,
        ours_tokens_per_s=ours_tps,
        plain_tokens_per_s=plain_tps,
        ratio=ours_tps / plain_tps,
        threads=torch.get_num_threads(),
    )
    print(
        f"\ntraining step, tiny, G={G}, batch {BATCH}: ours {ours_tps:,.0f} tokens/s, plain loop "
        f"{plain_tps:,.0f} tokens/s, ratio {ours_tps / plain_tps:.3f}"
    )


def test_sample_objective_overhead(benchmark):
    from bulkformer.train.objectives import pretrain_sse

    variants = (
        ("on", {}),  # today's default: [SAMPLE] token, sample decoder, PCA prior (256)
        ("no_prior", dict(pca_prior=0)),  # the sample objective alone
        ("off", dict(sample_token=False, sample_weight=0.0, pca_prior=0)),  # token loss only
    )
    models, opts = {}, {}
    for name, over in variants:
        torch.manual_seed(0)
        models[name] = BulkFormer(BulkFormerConfig.from_preset("tiny", n_genes=G, **over))
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
        if models[name].config.pca_prior:  # a fitted-looking prior: orthonormal components
            q, _ = torch.linalg.qr(torch.randn(G, models[name].config.pca_prior))
            models[name].prior.set(torch.zeros(G), q, torch.full((q.shape[1],), 0.1))
    times = {name: [] for name, _ in variants}

    def step(name, x, masked):
        m, opt = models[name], opts[name]
        t = time.perf_counter()
        out = m(x, masked=masked)
        total, _, _ = pretrain_sse(out, x, masked, m.config.sample_weight)
        (total / masked.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times[name].append(time.perf_counter() - t)

    def run():
        g = torch.Generator().manual_seed(0)
        names = [name for name, _ in variants]
        for i in range(STEPS + 1):
            x = torch.randn(BATCH, G, generator=g)
            masked = torch.rand(BATCH, G, generator=g) < 0.15
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
                step(name, x, masked)

    benchmark.pedantic(run, rounds=1, iterations=1)
    med = {name: statistics.median(times[name][1:]) for name in times}
    over = {name: med[name] / med["off"] - 1 for name in ("on", "no_prior")}
    benchmark.extra_info.update(
        G=G,
        batch=BATCH,
        on_s=med["on"],
        no_prior_s=med["no_prior"],
        off_s=med["off"],
        overhead=over["on"],
        overhead_no_prior=over["no_prior"],
        threads=torch.get_num_threads(),
    )
    print(
        f"\nsample objective, tiny, G={G}, batch {BATCH}: step {med['on']:.3f} s (default: sample "
        f"objective + PCA prior), {med['no_prior']:.3f} s (sample objective, no prior), "
        f"{med['off']:.3f} s off; overhead {100 * over['on']:+.1f}% "
        f"({100 * over['no_prior']:+.1f}% without the prior)"
    )


@pytest.mark.parametrize("batch", [8])
def test_loader_throughput(benchmark, corpus20k, batch):
    order = BlockOrder(corpus20k.splits["train"], block_rows=1024, seed=0)
    src = corpus20k.samples["source_index"].to_numpy()
    n_batches = len(order) // batch
    np.asarray(corpus20k.expression).sum(dtype=np.float32)  # warm the page cache

    def read_epoch():
        ld = BatchLoader(corpus20k.expression, src, order, batch, workers=2, prefetch=8)
        for _ in range(n_batches):
            next(ld)
        ld.close()

    benchmark.pedantic(read_epoch, rounds=3, warmup_rounds=1)
    loader = n_batches * batch / benchmark.stats.stats.median
    step = _measured.get("step_samples_per_s")
    if step is None:  # run alone: time one plain step (2nd of 2)
        step = BATCH / _plain_step_seconds(2, BATCH)[1]
    benchmark.extra_info.update(
        loader_samples_per_s=loader,
        loader_MB_per_s=loader * G * 2 / 1e6,
        step_samples_per_s=step,
        loader_vs_step=loader / step,
    )
    print(
        f"\nloader: {loader:,.0f} samples/s ({loader * G * 2 / 1e6:,.0f} MB/s) vs step "
        f"{step:.3g} samples/s: {loader / step:,.0f}×"
    )
    assert loader / step >= 20, "the data loader would starve the training step"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [4])
def test_train_step_gpu_base100m_bf16(benchmark, corpus20k, tmp_path, batch):
    def run():
        return pretrain(
            corpus20k,
            tmp_path / "run",
            config="base100m",
            steps=12,
            batch_size=batch,
            precision="bf16",
            log_every=1,
            val_every=0,
            val_max_samples=batch,
            ckpt_every=0,
            progress=False,
            tensorboard=False,
            force=True,
            device="cuda",
            peak_flops=PEAK_FLOPS,
        )

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    rows = [x for x in read_metrics(r.metrics) if x["kind"] == "train"][3:]
    tps = statistics.median(x["tokens_per_s"] for x in rows)
    mfu = statistics.median(x["mfu"] for x in rows)
    benchmark.extra_info.update(tokens_per_s=tps, mfu=mfu, batch=batch)
    print(f"\nbase100m bf16, batch {batch}: {tps:,.0f} tokens/s, MFU {mfu:.1%}")
