"""Engine vs inflate ceiling across chunk shapes, 1 thread, both accumulation paths.

Run: ``python benches/chunk_sweep.py`` (files are generated once under ``.bench_cache/``).

An informational sweep, not a target: for each chunk shape it prints the 1-thread CPU time of
decoding the chunks (the inflate ceiling) and of normalizing to float16 log1p(TPM) over 20,010
genes, with the gene-major path (default) and with ``engine.set_gene_major(False)`` (transposing),
each in a fresh process. Gene-major accumulation is used for runs of ≥ 8 requested samples.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SHAPES = [
    (8192, 1, 400),
    (8192, 4, 400),
    (8192, 8, 400),
    (8192, 16, 400),
    (512, 1000, 1000),
    (16, 1000, 1000),
    (1, 1000, 1000),
]  # (genes per chunk, samples per chunk, samples)

_ONE = r"""
import sys, time, numpy as np, h5py
from bulkformer.data import engine
path, S = sys.argv[1], int(sys.argv[2])
engine.set_gene_major(sys.argv[3] == "1")
G, N_REF = 67_186, 20_010
r = np.random.default_rng(0)
lengths = r.uniform(500, 10_000, G)
gm = np.full(G, -1, dtype=np.int64)
gm[r.choice(G, N_REF, replace=False)] = np.arange(N_REF)
out = np.zeros((S, N_REF), np.float16)
def best(f, reps=3):
    ts = []
    for _ in range(reps):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    return min(ts)
with h5py.File(path) as f:
    ds = f["data/expression"]
    idx = engine.ChunkIndex.from_dataset(ds)
    s = np.arange(S)
    ti = best(lambda: engine.inflate_only(ds, s, threads=1))
    tz = best(lambda: engine.read_matrix(ds, s, mode="log1p_tpm", gene_map=gm, lengths=lengths,
                                         n_out=N_REF, out=out, threads=1, index=idx))
print(ti, tz)
"""


def main() -> None:
    from bulkformer.data.synthetic import make_archs4

    root = Path(__file__).resolve().parent.parent
    cache = Path(os.environ.get("BULKFORMER_BENCH_CACHE", root / ".bench_cache"))
    cache.mkdir(parents=True, exist_ok=True)
    print(
        f"{'chunks':>14s} {'samples':>8s} {'inflate s':>10s} {'gene-major':>18s} "
        f"{'transposing':>18s}"
    )
    for cg, cs, S in SHAPES:
        path = cache / f"sweep_67186x{S}_{cg}x{cs}.h5"
        if not path.exists():
            make_archs4(
                path,
                67_186,
                S,
                chunks=(cg, cs),
                compression_opts=4,
                seed=0,
                low_quality_fraction=0.0,
            )
        res = {}
        for name, gene_major in (("gene-major", "1"), ("transposing", "0")):
            r = subprocess.run(
                [sys.executable, "-c", _ONE, str(path), str(S), gene_major],
                check=True,
                capture_output=True,
                text=True,
                cwd=cache,
            )
            res[name] = tuple(map(float, r.stdout.split()))
        ti = res["gene-major"][0]
        cells = [f"{res[k][1]:6.3f} s ({ti / res[k][1]:.2f})" for k in res]
        print(f"{f'({cg}, {cs})':>14s} {S:8d} {ti:10.3f} {cells[0]:>18s} {cells[1]:>18s}")


if __name__ == "__main__":
    main()
