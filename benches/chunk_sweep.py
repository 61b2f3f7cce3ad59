"""The engine on every chunk layout: inflate ceiling, engine and h5py + numpy, side by side.

Run: ``python benches/chunk_sweep.py`` (files are generated once under ``.bench_cache/``;
``--shapes 2000x1,512x1000`` picks layouts, ``--workloads all,random`` picks workloads,
``--reps N`` the repeats of each measurement, best kept; ``--json PATH`` saves the rows).

Every layout is a synthetic ARCHS4 file of 67,186 genes (uint32, gzip level 4), and every
normalizing read is float16 log1p(TPM) (the z-score, a multiply-add per value done afterwards by
``normalize.standardize``, is left out on every side). Workloads:

``all`` (in one process per layout, file open, index built beforehand)
    all samples of the file. 1 thread, CPU seconds: the inflate ceiling (every chunk decoded,
    nothing else), the engine at the 20,010-gene reference width and at full width (all
    67,186 genes). All threads, wall seconds: the engine at both widths and h5py block reads
    + vectorized numpy (the same normalization) at both widths.
``random`` (each side in a fresh process)
    200 random samples, full width (67,186 genes). Timed end to end: open the file, build
    whatever index the side needs, read and normalize. Sides: the engine at all threads and at
    1 thread; h5py + numpy (one block read per chunk column touched, as h5py reads best:
    ``ds[:, sorted samples]`` takes minutes on short chunks); the 1-thread C inflate ceiling of
    exactly the chunks touched (index built outside the timing); Python's bare
    ``zlib.decompress`` of the same chunks (ditto).

Ratios printed: ``engine Nt / h5py`` (target ≥ 3; wall time) and ``engine 1t / inflate 1t``
(target ≥ 0.7; CPU time; for ``random`` the engine's figure includes opening and indexing, the
ceiling's does not). For ``all`` the 1-thread ratio is printed twice: best over best, and
``paired``: the median of the ratios of N back-to-back (inflate, engine) pairs, which a noisy
machine moves less (the engine's first call, which faults in its buffers, is not timed). For ``random`` also ``cpu 1t``: h5py's CPU time over the 1-thread
engine's, a figure a loaded machine does not distort (h5py runs on one thread).
The chunk cache is warm (files in the page cache), as on a machine that just read them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

G, N_REF, N_RANDOM = 67_186, 20_010, 200
THREADS = os.cpu_count() or 1
# (genes per chunk, samples per chunk, samples in the file)
SHAPES = [
    (2000, 1, 2000),
    (1000, 1, 2000),
    (8192, 1, 400),
    (8192, 4, 400),
    (8192, 8, 400),
    (8192, 16, 400),
    (512, 1000, 1000),
    (16, 1000, 1000),
    (1, 1000, 1000),
]

# shared by the child processes: the normalization inputs and the numpy reference
_COMMON = r"""
import os, sys, time, json, numpy as np
G = int(os.environ.get("BULKFORMER_BENCH_GENES", 67_186))  # bench_archs4's quick-look sizes
N_REF = min(20_010, G)
r = np.random.default_rng(0)
lengths = r.uniform(500, 10_000, G)
ref_map = np.full(G, -1, dtype=np.int64)
ref_map[r.choice(G, N_REF, replace=False)] = np.arange(N_REF)
full_map = np.arange(G, dtype=np.int64)

def maps(width):
    return ref_map if width == N_REF else full_map

def numpy_log1p(counts_gs, width):
    # vectorized numpy: (genes, n) counts -> (n, width) float16 log1p(TPM)
    gm = maps(width)
    rate = counts_gs.astype(np.float64) / lengths[:, None]
    scale = 1e6 / np.maximum(rate.sum(axis=0), 1e-300)
    src = np.flatnonzero(gm >= 0)
    v = np.empty((counts_gs.shape[1], width))
    v[:, gm[src]] = np.log1p(rate[src] * scale).T
    return v.astype(np.float16)

def get_index(engine, ds, s):
    # the engine's index for reading samples s (older engines: h5py's chunk_iter, all chunks)
    if hasattr(engine, "chunk_index"):
        return engine.chunk_index(ds, s)
    return engine.ChunkIndex.from_dataset(ds)

def inflate(engine, ds, s, idx):
    from bulkformer import _C
    return _C.inflate_only(**idx._kw(), samples=np.asarray(s, np.int64), threads=1)

def best(f, reps, clock=time.perf_counter):
    ts = []
    for _ in range(reps):
        t = clock(); f(); ts.append(clock() - t)
    return min(ts)

def paired(fa, fb, reps, clock=time.process_time):
    # a and b alternately, reps times: (best a, best b, median of the per-pair ratios a / b).
    # A slow spell of a noisy machine falls on both sides of a pair, so the median of the
    # pairs moves less from run to run than the ratio of two bests taken apart.
    ta, tb = [], []
    for _ in range(reps):
        t = clock(); fa(); ta.append(clock() - t)
        t = clock(); fb(); tb.append(clock() - t)
    return min(ta), min(tb), float(np.median(np.array(ta) / np.array(tb)))
"""

_ALL = (
    _COMMON
    + r"""
import h5py
from bulkformer.data import engine
path, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {}
with h5py.File(path) as f:
    ds = f["data/expression"]
    S = ds.shape[1]
    s = np.arange(S)
    idx = get_index(engine, ds, s)
    res["inflate_1t_cpu"] = float("inf")
    cs = ds.chunks[1]
    block = max(cs, 256 // cs * cs) if cs < 256 else cs
    for width in (N_REF, G):
        gm = maps(width)
        out = np.zeros((S, width), np.float16)
        run = lambda t: engine.read_matrix(ds, s, mode="log1p_tpm", gene_map=gm, lengths=lengths,
                                           n_out=width, out=out, threads=t, index=idx)
        run(1)  # the first call faults in the output and value buffers: not timed
        ti, res[f"engine_1t_cpu_{width}"], res[f"ratio_1t_inflate_{width}_paired"] = paired(
            lambda: inflate(engine, ds, s, idx), lambda: run(1), reps)
        res["inflate_1t_cpu"] = min(res["inflate_1t_cpu"], ti)
        res[f"engine_{threads}t_wall_{width}"] = best(lambda: run(threads), reps)
        def h5():
            for lo in range(0, S, block):
                out[lo:lo + block] = numpy_log1p(ds[:, lo:lo + block], width)
        res[f"h5py_wall_{width}"] = best(h5, max(1, reps - 1))
print(json.dumps(res))
"""
)

_RANDOM = (
    _COMMON
    + r"""
import os, zlib, h5py
from bulkformer.data import engine  # imported before the clock starts, as h5py is
path, side, threads, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), 1
t0, c0 = time.perf_counter(), time.process_time()
f = h5py.File(path)
ds = f["data/expression"]
S = ds.shape[1]
s = np.sort(np.random.default_rng(seed).choice(S, n, replace=False))
gm = maps(G)
extra = {}
if side == "engine":
    t = time.perf_counter()
    idx = get_index(engine, ds, s)
    extra["index_s"] = time.perf_counter() - t
    engine.read_matrix(ds, s, mode="log1p_tpm", gene_map=gm, lengths=lengths,
                       dtype=np.float16, threads=threads, index=idx)
elif side == "h5py":  # one block read per chunk column touched, then numpy on all of them
    cs = ds.chunks[1]
    blocks = []
    for c in np.unique(s // cs):
        lo = c * cs
        blocks.append(ds[:, lo:lo + cs][:, s[(s >= lo) & (s < lo + cs)] - lo])
    numpy_log1p(np.concatenate(blocks, axis=1), G)
else:  # ceilings: the chunks touched, index built outside the timing
    idx = get_index(engine, ds, s)
    cols = np.unique(s // idx.chunk_samples)
    held = getattr(idx, "cols", None)
    k = cols if held is None else np.searchsorted(held, cols)
    offs, sizes = idx.offsets[:, k].T.ravel(), idx.sizes[:, k].T.ravel()
    t0, c0 = time.perf_counter(), time.process_time()
    if side == "inflate":
        inflate(engine, ds, s, idx)
    else:  # Python's zlib, one chunk at a time
        fd = os.open(path, os.O_RDONLY)
        for o, z in zip(offs.tolist(), sizes.tolist()):
            zlib.decompress(os.pread(fd, z, o))
        os.close(fd)
    extra["chunks"] = int(len(offs))
f.close()
print(json.dumps(dict(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, **extra)))
"""
)


def _child(script: str, *args, env: dict | None = None) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_file(cache: Path, cg: int, cs: int, S: int) -> Path:
    from bulkformer.data.synthetic import make_archs4

    path = cache / f"sweep_{G}x{S}_{cg}x{cs}.h5"
    if not path.exists():
        make_archs4(
            path, G, S, chunks=(cg, cs), compression_opts=4, seed=0, low_quality_fraction=0.0
        )
    return path


def run_all(path: Path, S: int, reps: int) -> dict:
    r = _child(_ALL, path, reps, THREADS)
    T = THREADS
    row = dict(r)
    row["ratio_1t_inflate_20010"] = r["inflate_1t_cpu"] / r[f"engine_1t_cpu_{N_REF}"]
    row["ratio_1t_inflate_67186"] = r["inflate_1t_cpu"] / r[f"engine_1t_cpu_{G}"]
    for w in (N_REF, G):
        row[f"ratio_{T}t_h5py_{w}"] = r[f"h5py_wall_{w}"] / r[f"engine_{T}t_wall_{w}"]
    return row


def run_random(path: Path, reps: int) -> dict:
    sides = {
        f"engine_{THREADS}t": ("engine", THREADS),
        "engine_1t": ("engine", 1),
        "h5py": ("h5py", 1),
        "inflate_1t": ("inflate", 1),
        "zlib_py_1t": ("zlib", 1),
    }
    res: dict = {}
    for _ in range(reps):  # rounds alternate the sides; each keeps its best of every figure
        for name, (side, t) in sides.items():
            r = _child(_RANDOM, path, side, t, N_RANDOM)
            prev = res.setdefault(name, r)
            for k, v in r.items():
                prev[k] = min(prev[k], v)
    T = THREADS
    row = {f"{k}_{m}": v[m] for k, v in res.items() for m in ("wall", "cpu")}
    row["engine_index_s"] = res["engine_1t"].get("index_s")
    row["chunks"] = res["inflate_1t"]["chunks"]
    row[f"ratio_{T}t_h5py"] = res["h5py"]["wall"] / res[f"engine_{T}t"]["wall"]
    row["ratio_1t_inflate"] = res["inflate_1t"]["cpu"] / res["engine_1t"]["cpu"]
    # per core: h5py is single-threaded, so on a quiet machine Nt/h5py ≈ N × this
    row["ratio_cpu_h5py"] = res["h5py"]["cpu"] / res["engine_1t"]["cpu"]
    row["ratio_1t_zlib_py"] = res["zlib_py_1t"]["cpu"] / res["engine_1t"]["cpu"]
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=None, help="e.g. 2000x1,512x1000 (default: all)")
    ap.add_argument("--workloads", default="all,random")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    a = ap.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    cache = Path(os.environ.get("BULKFORMER_BENCH_CACHE", root / ".bench_cache"))
    cache.mkdir(parents=True, exist_ok=True)
    shapes = SHAPES
    if a.shapes:
        want = {tuple(map(int, x.split("x"))) for x in a.shapes.split(",")}
        shapes = [s for s in SHAPES if s[:2] in want]
    workloads = a.workloads.split(",")
    from bulkformer import _C

    T = THREADS
    print(f"inflate: {_C.inflate_backend()}, {T} threads, best of {a.reps}")
    rows = []
    for cg, cs, S in shapes:
        path = ensure_file(cache, cg, cs, S)
        row = {"chunks": f"{cg}x{cs}", "samples": S}
        if "all" in workloads:
            r = run_all(path, S, a.reps)
            row["all"] = r
            print(
                f"all    {cg:>5d} x {cs:<5d} {S:5d} samples | inflate 1t {r['inflate_1t_cpu']:.3f} s"
                f" | engine 1t {r[f'engine_1t_cpu_{N_REF}']:.3f} s"
                f" ({r['ratio_1t_inflate_20010']:.2f}, paired {r['ratio_1t_inflate_20010_paired']:.2f}),"
                f" full width {r[f'engine_1t_cpu_{G}']:.3f} s ({r['ratio_1t_inflate_67186']:.2f},"
                f" paired {r['ratio_1t_inflate_67186_paired']:.2f})"
                f" | engine {T}t / h5py: {r[f'ratio_{T}t_h5py_{N_REF}']:.1f}x"
                f" ({r[f'engine_{T}t_wall_{N_REF}']:.3f} vs {r[f'h5py_wall_{N_REF}']:.3f} s),"
                f" full width {r[f'ratio_{T}t_h5py_{G}']:.1f}x"
                f" ({r[f'engine_{T}t_wall_{G}']:.3f} vs {r[f'h5py_wall_{G}']:.3f} s)",
                flush=True,
            )
        if "random" in workloads:
            r = run_random(path, a.reps)
            row["random"] = r
            print(
                f"random {cg:>5d} x {cs:<5d} {N_RANDOM:5d} of {S} | engine {T}t"
                f" {r[f'engine_{T}t_wall']:.3f} s, 1t {r['engine_1t_wall']:.3f} s"
                f" (cpu {r['engine_1t_cpu']:.3f}, index {r['engine_index_s'] * 1e3:.0f} ms)"
                f" | h5py {r['h5py_wall']:.3f} s | inflate 1t cpu {r['inflate_1t_cpu']:.3f} s"
                f" | py zlib {r['zlib_py_1t_cpu']:.3f} s | {r['chunks']} chunks"
                f" | {T}t/h5py {r[f'ratio_{T}t_h5py']:.1f}x (cpu 1t {r['ratio_cpu_h5py']:.1f}x)"
                f" 1t/inflate {r['ratio_1t_inflate']:.2f} 1t/py-zlib {r['ratio_1t_zlib_py']:.2f}",
                flush=True,
            )
        rows.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
