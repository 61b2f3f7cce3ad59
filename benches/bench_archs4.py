"""ARCHS4 engine benchmarks: samples/s and peak RSS, measured side by side in one run.

Run: ``python -m pytest benches/bench_archs4.py --benchmark-enable -s``
(``BULKFORMER_BENCH_SAMPLES`` / ``BULKFORMER_BENCH_GENES`` shrink the files for a quick look).

For each chunk shape (narrow and wide in samples) on a synthetic ARCHS4 file of 67,186 genes ×
10,000 samples (generated once, cached), normalizing to float16 log1p(TPM) over a 20,010-gene
reference (the engine's part of the corpus writer; the z-score, a multiply-add per value done
afterwards by ``normalize.standardize``, is left out on every side):

(a) archs4py's own ``data.index`` (one process per sample, column reads; counts only);
(b) h5py block reads + vectorized numpy normalization;
(c) our engine at 1 thread and at all threads, writing into a reused (already faulted-in)
    output buffer; at 1 thread also into a fresh one (first-touch page faults included);
(d) the inflate ceiling: the same chunks decoded in C++, nothing else.

A summary table with the ratios and the targets is printed at the end and written to
``benches/results_archs4.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from bulkformer.data import engine
from bulkformer.data.synthetic import make_archs4

N_GENES = int(os.environ.get("BULKFORMER_BENCH_GENES", 67_186))
N_SAMPLES = int(os.environ.get("BULKFORMER_BENCH_SAMPLES", 10_000))
N_REF = min(20_010, N_GENES)
SHAPES = {"narrow": (8192, 8), "wide": (512, 1000)}
N_ARCHS4PY = {"narrow": 200, "wide": 16}  # archs4py is slow: time a subset, report samples/s
THREADS = os.cpu_count() or 1
RESULTS: dict = {}


@pytest.fixture(scope="module", params=list(SHAPES))
def bench(request, bench_cache):
    shape = request.param
    cg, cs = SHAPES[shape]
    path = bench_cache / f"archs4_{N_GENES}x{N_SAMPLES}_{cg}x{cs}.h5"
    if not path.exists():
        t = time.perf_counter()
        make_archs4(
            path,
            N_GENES,
            N_SAMPLES,
            chunks=(min(cg, N_GENES), min(cs, N_SAMPLES)),
            compression_opts=4,
            seed=0,
            low_quality_fraction=0.0,
        )
        print(f"\ngenerated {path} in {time.perf_counter() - t:.0f}s")
    r = np.random.default_rng(0)
    lengths = r.uniform(500, 10_000, N_GENES)
    gene_map = np.full(N_GENES, -1, dtype=np.int64)
    gene_map[r.choice(N_GENES, N_REF, replace=False)] = np.arange(N_REF)
    return dict(shape=shape, path=str(path), lengths=lengths, gene_map=gene_map)


def _record(shape, name, n, seconds, **extra):
    RESULTS.setdefault(shape, {})[name] = dict(
        samples=n, seconds=seconds, samples_per_s=n / seconds, **extra
    )


def _run(benchmark, fn, rounds=1):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    return benchmark.stats.stats.median


def test_a_archs4py(benchmark, bench):
    archs4py = pytest.importorskip("archs4py")
    n = min(N_ARCHS4PY[bench["shape"]], N_SAMPLES)
    idx = list(np.linspace(0, N_SAMPLES - 1, n).astype(int))
    secs = _run(benchmark, lambda: archs4py.data.index(bench["path"], idx, silent=True))
    _record(bench["shape"], "a_archs4py", n, secs)


def _numpy_normalize(counts_gs, b):
    """Vectorized numpy: (genes, n) counts → (n, G_ref) float16 log1p(TPM)."""
    L = b["lengths"]
    rate = counts_gs.astype(np.float64) / L[:, None]
    scale = 1e6 / np.maximum(rate.sum(axis=0), 1e-300)
    src = np.flatnonzero(b["gene_map"] >= 0)
    cols = b["gene_map"][src]
    v = np.empty((counts_gs.shape[1], N_REF))
    v[:, cols] = np.log1p(rate[src] * scale).T
    return v.astype(np.float16)


def test_b_h5py_numpy(benchmark, bench):
    n = N_SAMPLES
    out = np.empty((n, N_REF), np.float16)
    cs = SHAPES[bench["shape"]][1]
    block = max(cs, 256 // cs * cs) if cs < 256 else cs

    def run():
        with h5py.File(bench["path"]) as f:
            ds = f["data/expression"]
            for lo in range(0, n, block):
                hi = min(n, lo + block)
                out[lo:hi] = _numpy_normalize(ds[:, lo:hi], bench)

    secs = _run(benchmark, run)
    _record(bench["shape"], "b_h5py_numpy", n, secs)


@pytest.mark.parametrize("out_buffer", ["reused", "fresh"])
@pytest.mark.parametrize("threads", [1, THREADS])
def test_c_engine(benchmark, bench, threads, out_buffer):
    """``reused``: the caller's output buffer is already in memory (faulted in), as when a
    buffer is reused; this is the figure compared with the inflate ceiling, which writes no
    output. ``fresh`` (1 thread only): a new ``np.empty`` buffer, so the run also pays the
    kernel's first touch of its pages (400 MB here)."""
    if out_buffer == "fresh" and threads != 1:
        pytest.skip("fresh-buffer cost is recorded at 1 thread")
    n = N_SAMPLES
    out = np.empty((n, N_REF), np.float16)
    if out_buffer == "reused":
        out.fill(0)
    with h5py.File(bench["path"]) as f:
        ds = f["data/expression"]
        idx = engine.ChunkIndex.from_dataset(ds)
        secs = _run(
            benchmark,
            lambda: engine.read_matrix(
                ds,
                np.arange(n),
                mode="log1p_tpm",
                gene_map=bench["gene_map"],
                lengths=bench["lengths"],
                n_out=N_REF,
                out=out,
                threads=threads,
                index=idx,
            ),
        )
    suffix = "" if out_buffer == "reused" else "_fresh_out"
    _record(bench["shape"], f"c_engine_{threads}t{suffix}", n, secs)


@pytest.mark.parametrize("threads", [1, THREADS])
def test_d_inflate_ceiling(benchmark, bench, threads):
    n = N_SAMPLES
    with h5py.File(bench["path"]) as f:
        ds = f["data/expression"]
        secs = _run(benchmark, lambda: engine.inflate_only(ds, np.arange(n), threads=threads))
    _record(bench["shape"], f"d_inflate_{threads}t", n, secs)


_RSS_SCRIPT = r"""
import sys, numpy as np, h5py
from bulkformer.data import engine

def hwm():  # peak resident set of this process, bytes (VmHWM)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

path, n_ref = sys.argv[1], int(sys.argv[2])
with h5py.File(path) as f:
    ds = f["data/expression"]
    G, S = ds.shape
    r = np.random.default_rng(0)
    gm = np.full(G, -1, np.int64); gm[r.choice(G, n_ref, replace=False)] = np.arange(n_ref)
    out = np.ones((S, n_ref), np.float16)  # touched: part of the baseline
    # reset the peak (getrusage's maxrss survives exec and would report the parent's peak)
    open("/proc/self/clear_refs", "w").write("5")
    base = hwm()
    engine.read_matrix(ds, np.arange(S), mode="log1p_tpm", gene_map=gm,
                       lengths=np.full(G, 1000.0), n_out=n_ref, out=out)
    peak = hwm()
print(peak - base, out.nbytes)
"""


def test_peak_rss_streaming(bench):
    res = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, bench["path"], str(N_REF)],
        capture_output=True,
        text=True,
        check=True,
    )
    extra, out_bytes = map(int, res.stdout.split())
    RESULTS.setdefault(bench["shape"], {})["rss_beyond_output_bytes"] = extra
    RESULTS[bench["shape"]]["output_bytes"] = out_bytes


def test_zz_summary(bench):
    """Print and save the side-by-side table for this chunk shape."""
    r = RESULTS.get(bench["shape"], {})
    if "c_engine_1t" not in r:
        pytest.skip("benchmarks did not run (use --benchmark-enable)")
    sps = {k: v["samples_per_s"] for k, v in r.items() if isinstance(v, dict)}
    T = THREADS
    checks = {
        f"engine {T}t / h5py+numpy >= 3": sps[f"c_engine_{T}t"] / sps["b_h5py_numpy"],
        "engine 1t / inflate 1t >= 0.7": sps["c_engine_1t"] / sps["d_inflate_1t"],
        f"engine {T}t / engine 1t >= 1.7": sps[f"c_engine_{T}t"] / sps["c_engine_1t"],
    }
    if "a_archs4py" in sps:
        checks[f"engine {T}t / archs4py (wide: >= 50)"] = sps[f"c_engine_{T}t"] / sps["a_archs4py"]
    r["ratios"] = checks
    from bulkformer import _C

    r["inflate_backend"] = _C.inflate_backend()
    lines = [
        f"\n== {bench['shape']} chunks {SHAPES[bench['shape']]} "
        f"({N_GENES} genes x {N_SAMPLES} samples, {_C.inflate_backend()}) =="
    ]
    for k, v in sps.items():
        lines.append(f"  {k:26s} {v:10.1f} samples/s")
    for k, v in checks.items():
        lines.append(f"  {k:40s} {v:8.2f}")
    if "rss_beyond_output_bytes" in r:
        lines.append(
            f"  peak RSS beyond output buffer: {r['rss_beyond_output_bytes'] / 2**20:.0f} "
            f"MiB (output {r['output_bytes'] / 2**20:.0f} MiB)"
        )
    print("\n".join(lines))
    out = Path(__file__).parent / "results_archs4.json"
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev[bench["shape"]] = r
    out.write_text(json.dumps(prev, indent=1, default=float))
