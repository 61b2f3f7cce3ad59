"""Benchmarks of the eval step that scales worst: UMAP and t-SNE projection of embeddings.

Anchor: a 12,000-sample projection in 5 minutes. Random (N, 64) embeddings with 8 clusters,
N = 1,000 / 3,000 (and 12,000 with ``BULKFORMER_BENCH_FULL=1``); ``extra_info`` records the
seconds and a linear extrapolation to 12,000 samples (UMAP and Barnes-Hut t-SNE both scale
~N log N, so linear extrapolation is slightly optimistic — run the full size to be sure).
The first UMAP call in a process also pays numba's JIT compile; a warm-up call runs first.

Run::

    python -m pytest benches/bench_eval.py --benchmark-enable -q -s
    BULKFORMER_BENCH_FULL=1 python -m pytest benches/bench_eval.py --benchmark-enable -q -s
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from bulkformer.eval.plots import project

SIZES = [1000, 3000] + ([12000] if os.environ.get("BULKFORMER_BENCH_FULL") else [])
ANCHOR_N, ANCHOR_S = 12000, 300.0


def _emb(n, d=64, seed=0):
    r = np.random.default_rng(seed)
    centers = r.normal(scale=4.0, size=(8, d))
    return (centers[r.integers(0, 8, n)] + r.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _warm_umap():
    project(_emb(50, 8), "umap")  # numba JIT compile, not part of the measurement


@pytest.mark.parametrize("method", ["umap", "tsne"])
@pytest.mark.parametrize("n", SIZES)
def test_projection(benchmark, method, n):
    X = _emb(n)
    t0 = time.perf_counter()
    out = benchmark.pedantic(project, args=(X, method), rounds=1, iterations=1)
    s = time.perf_counter() - t0
    assert out.shape == (n, 2)
    est = s * ANCHOR_N / n
    benchmark.extra_info.update(
        n=n, seconds=round(s, 2), est_seconds_12k=round(est, 1), anchor_seconds_12k=ANCHOR_S
    )
    print(f"\n{method} {n:>6} × 64: {s:7.1f} s  (→ 12k ≈ {est:6.0f} s; anchor {ANCHOR_S:.0f} s)")
