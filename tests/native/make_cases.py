"""Writes the inputs of ``tsan_read`` (``make tsan``): small chunked HDF5 files with few chunk
columns (so the engine's spare threads decode rows for running tasks) and, next to each, its
chunk index and gene lengths as one little-endian binary file the driver reads.

Usage: python tests/native/make_cases.py OUT_DIR   (prints the case files written)
"""

import sys
from pathlib import Path

import h5py
import numpy as np

from bulkformer.data import engine

G, S = 1037, 301
LAYOUTS = [((64, 301), False), ((1, 301), False), ((7, 301), True), ((100, 150), False)]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    counts = rng.negative_binomial(2, 0.02, size=(G, S)).astype("<u4")
    counts[rng.random((G, S)) < 0.3] = 0
    lengths = rng.uniform(300, 9000, G)
    for i, (chunks, transposed) in enumerate(LAYOUTS):
        path = out / f"case{i}.h5"
        with h5py.File(path, "w") as f:
            shape = (S, G) if transposed else (G, S)
            ds = f.create_dataset(
                "x",
                shape=shape,
                dtype="<u4",
                compression="gzip",
                shuffle=i % 2 == 1,
                chunks=chunks[::-1] if transposed else chunks,
            )
            cg = chunks[0]
            for r0 in range(0, G, cg):
                if (r0 // cg) % 5 == 3:
                    continue  # unwritten chunk row: zeros
                block = counts[r0 : r0 + cg]
                if transposed:
                    ds[:, r0 : r0 + cg] = block.T
                else:
                    ds[r0 : r0 + cg] = block
        with h5py.File(path) as f:
            kw = engine.ChunkIndex.from_dataset(f["x"], transposed=transposed)._kw()
        head = [
            kw["n_genes"],
            kw["n_samples"],
            kw["chunk_genes"],
            kw["chunk_samples"],
            int(kw["transposed"]),
            len(kw["filters"]),
            *kw["filters"],
        ]
        with open(out / f"case{i}.bin", "wb") as b:
            b.write(np.asarray(head, "<i8").tobytes())
            b.write(np.ascontiguousarray(kw["offsets"], "<i8").tobytes())
            b.write(np.ascontiguousarray(kw["sizes"], "<i8").tobytes())
            b.write(np.ascontiguousarray(kw["masks"], "<u4").tobytes())
            b.write(np.asarray(lengths, "<f8").tobytes())
        print(out / f"case{i}.bin")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
