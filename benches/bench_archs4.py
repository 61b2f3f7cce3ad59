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
(d) the inflate ceiling: the same chunks decoded in C++, nothing else;
(e) full-width output (all 67,186 genes, the first 2,000 samples): engine vs inflate and h5py;
(f) 200 random samples in a fresh process, open and index time included (chunk_sweep.py).

A third layout, short chunks (2000 × 1), uses a 2,000-sample file.

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
SHAPES = {"narrow": (8192, 8), "wide": (512, 1000), "short": (2000, 1)}
# short chunks (2000 genes × 1 sample) make a file 2.5× larger per sample: fewer samples
SHAPE_SAMPLES = {"short": min(N_SAMPLES, 2000)}
N_ARCHS4PY = {"narrow": 200, "wide": 16, "short": 16}  # archs4py is slow: time a subset
N_FULL = 2000  # samples read at full width (all genes): the output is 134 MB per 1,000
THREADS = os.cpu_count() or 1
RESULTS: dict = {}


@pytest.fixture(scope="module", params=list(SHAPES))
def bench(request, bench_cache):
    shape = request.param
    cg, cs = SHAPES[shape]
    n_samples = SHAPE_SAMPLES.get(shape, N_SAMPLES)
    path = bench_cache / f"archs4_{N_GENES}x{n_samples}_{cg}x{cs}.h5"
    if not path.exists():
        t = time.perf_counter()
        make_archs4(
            path,
            N_GENES,
            n_samples,
            chunks=(min(cg, N_GENES), min(cs, n_samples)),
            compression_opts=4,
            seed=0,
            low_quality_fraction=0.0,
        )
        print(f"\ngenerated {path} in {time.perf_counter() - t:.0f}s")
    r = np.random.default_rng(0)
    lengths = r.uniform(500, 10_000, N_GENES)
    gene_map = np.full(N_GENES, -1, dtype=np.int64)
    gene_map[r.choice(N_GENES, N_REF, replace=False)] = np.arange(N_REF)
    return dict(shape=shape, path=str(path), n=n_samples, lengths=lengths, gene_map=gene_map)


def _record(shape, name, n, seconds, **extra):
    RESULTS.setdefault(shape, {})[name] = dict(
        samples=n, seconds=seconds, samples_per_s=n / seconds, **extra
    )


def _run(benchmark, fn, rounds=1, warmup=0):
    """Median seconds of ``rounds`` timed calls, after ``warmup`` untimed ones."""
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    return benchmark.stats.stats.median


def test_a_archs4py(benchmark, bench):
    archs4py = pytest.importorskip("archs4py")
    n = min(N_ARCHS4PY[bench["shape"]], bench["n"])
    idx = list(np.linspace(0, bench["n"] - 1, n).astype(int))
    secs = _run(benchmark, lambda: archs4py.data.index(bench["path"], idx, silent=True))
    _record(bench["shape"], "a_archs4py", n, secs)


def _numpy_normalize(counts_gs, b, n_out=N_REF):
    """Vectorized numpy: (genes, n) counts → (n, n_out) float16 log1p(TPM)."""
    L = b["lengths"]
    rate = counts_gs.astype(np.float64) / L[:, None]
    scale = 1e6 / np.maximum(rate.sum(axis=0), 1e-300)
    src = np.flatnonzero(b["gene_map"] >= 0)
    cols = b["gene_map"][src]
    v = np.empty((counts_gs.shape[1], n_out))
    v[:, cols] = np.log1p(rate[src] * scale).T
    return v.astype(np.float16)


def test_b_h5py_numpy(benchmark, bench):
    n = bench["n"]
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
    output; one untimed call first, so the engine's pooled value buffers are faulted in too, as
    for a caller that reads a file in batches. ``fresh`` (1 thread only): a new ``np.empty``
    buffer and no untimed call, so the run also pays the kernel's first touch of its pages
    (400 MB here) and of the value buffers."""
    if out_buffer == "fresh" and threads != 1:
        pytest.skip("fresh-buffer cost is recorded at 1 thread")
    n = bench["n"]
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
            warmup=int(out_buffer == "reused"),
        )
    suffix = "" if out_buffer == "reused" else "_fresh_out"
    _record(bench["shape"], f"c_engine_{threads}t{suffix}", n, secs)


@pytest.mark.parametrize("threads", [1, THREADS])
def test_d_inflate_ceiling(benchmark, bench, threads):
    n = bench["n"]
    with h5py.File(bench["path"]) as f:
        ds = f["data/expression"]
        secs = _run(
            benchmark, lambda: engine.inflate_only(ds, np.arange(n), threads=threads), warmup=1
        )
    _record(bench["shape"], f"d_inflate_{threads}t", n, secs)


@pytest.mark.parametrize("threads", [1, THREADS])
def test_e_full_width(benchmark, bench, threads):
    """All genes of the file (no reference subset), the first N_FULL samples: engine vs the
    inflate ceiling of the same chunks (1 thread) and vs h5py + numpy (all threads). As (c)
    ``reused``: the output buffer is faulted in and one untimed call comes first (a first call
    also faults in 268 MB of value buffers per 1,000-sample chunk column: the fresh-buffer cost
    of (c), here at 3.4 times the width); then the median of 3 calls, and for the ceiling the
    median of 3 calls."""
    n = min(N_FULL, bench["n"])
    s = np.arange(n)
    out = np.empty((n, N_GENES), np.float16)
    out.fill(0)
    with h5py.File(bench["path"]) as f:
        ds = f["data/expression"]
        idx = engine.chunk_index(ds, s)
        kw = dict(mode="log1p_tpm", lengths=bench["lengths"], out=out, index=idx)
        secs = _run(
            benchmark, lambda: engine.read_matrix(ds, s, threads=threads, **kw), rounds=3, warmup=1
        )
        _record(bench["shape"], f"e_full_width_engine_{threads}t", n, secs)
        if threads == 1:
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                engine.inflate_only(ds, s, threads=1, index=idx)
                ts.append(time.perf_counter() - t)
            _record(bench["shape"], "e_full_width_inflate_1t", n, float(np.median(ts)))
        else:
            cs = SHAPES[bench["shape"]][1]
            block = max(cs, 256 // cs * cs) if cs < 256 else cs
            b = dict(bench, gene_map=np.arange(N_GENES))
            t = time.perf_counter()
            for lo in range(0, n, block):
                hi = min(n, lo + block)
                out[lo:hi] = _numpy_normalize(ds[:, lo:hi], b, N_GENES)
            _record(bench["shape"], "e_full_width_h5py_numpy", n, time.perf_counter() - t)


def test_f_random_subset_fresh_process(bench):
    """200 random samples, all genes, each side in a fresh process, timed from opening the file
    (index and open time included): see benches/chunk_sweep.py (workload ``random``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import chunk_sweep

    r = chunk_sweep.run_random(Path(bench["path"]), reps=2)
    RESULTS.setdefault(bench["shape"], {})["f_random_fresh"] = r


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
    sps = {
        k: v["samples_per_s"] for k, v in r.items() if isinstance(v, dict) and "samples_per_s" in v
    }
    T = THREADS
    checks = {
        f"engine {T}t / h5py+numpy >= 3": sps[f"c_engine_{T}t"] / sps["b_h5py_numpy"],
        "engine 1t / inflate 1t >= 0.7": sps["c_engine_1t"] / sps["d_inflate_1t"],
        f"engine {T}t / engine 1t >= 1.7": sps[f"c_engine_{T}t"] / sps["c_engine_1t"],
    }
    if "e_full_width_engine_1t" in sps:
        checks["full width: engine 1t / inflate 1t >= 0.7"] = (
            sps["e_full_width_engine_1t"] / sps["e_full_width_inflate_1t"]
        )
        checks[f"full width: engine {T}t / h5py+numpy >= 3"] = (
            sps[f"e_full_width_engine_{T}t"] / sps["e_full_width_h5py_numpy"]
        )
    fr = r.get("f_random_fresh")
    if fr:
        checks[f"random 200, fresh: engine {T}t / h5py+numpy >= 3"] = fr[f"ratio_{T}t_h5py"]
        checks["random 200, fresh: engine 1t / inflate 1t >= 0.7 (CPU)"] = fr["ratio_1t_inflate"]
    if "a_archs4py" in sps:
        checks[f"engine {T}t / archs4py (wide: >= 50)"] = sps[f"c_engine_{T}t"] / sps["a_archs4py"]
    r["ratios"] = checks
    from bulkformer import _C

    r["inflate_backend"] = _C.inflate_backend()
    lines = [
        f"\n== {bench['shape']} chunks {SHAPES[bench['shape']]} "
        f"({N_GENES} genes x {bench['n']} samples, {_C.inflate_backend()}) =="
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
