"""Byte-flip fuzzing of a small ARCHS4 file: random bytes flipped in the compressed chunks and,
separately, in the rest of the file (superblock, object headers, B-trees, heaps, metadata
strings), several seeds. ``bulkformer preprocess`` runs on each file in a child process (so a
segfault or abort is seen as a crash, not as a dead test runner) and must either build or
fail with one line ``bulkformer preprocess: error: …`` naming the file; never a traceback,
never an internal error.

A flip that leaves the file readable can change values without any error (HDF5 keeps no
checksum of raw data such as metadata strings): such runs count as "built", and the test
checks that a build whose chunks were flipped matches the clean build (deflate streams carry
an Adler-32 checksum, so a changed chunk must be detected, not read).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from corpus_data import make_reference

import bulkformer
from bulkformer.data.synthetic import make_archs4

SEEDS = range(6)
FLIPS = (1, 8, 64)

DRIVER = r"""
import contextlib, io, json, sys
from bulkformer.cli import main
cases = json.loads(sys.argv[1])
for c in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["preprocess", "--archs4", c["file"], "--reference", c["ref"],
                   "--min-nonzero", "1", "--no-progress", "--threads", "2",
                   "--out", c["out"]])
    print(json.dumps({"file": c["file"], "rc": rc, "err": err.getvalue()}), flush=True)
"""


def _chunk_spans(path):
    with h5py.File(path) as f:
        ds = f["data/expression"]
        spans = []
        ds.id.chunk_iter(lambda ci: spans.append((ci.byte_offset, ci.size)))
    return spans


def _flip(path, rng, n, where, spans):
    size = os.path.getsize(path)
    inside = np.zeros(size, dtype=bool)
    for off, sz in spans:
        inside[off : off + sz] = True
    pool = np.flatnonzero(inside if where == "chunks" else ~inside)
    pos = rng.choice(pool, size=min(n, len(pool)), replace=False)
    with open(path, "r+b") as fh:
        for p in pos.tolist():
            fh.seek(p)
            b = fh.read(1)[0]
            fh.seek(p)
            fh.write(bytes([b ^ int(rng.integers(1, 256))]))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    path = make_archs4(d / "clean.h5", 48, 36, chunks=(16, 12), seed=11)
    ref = make_reference(48)
    ref.to_tsv(d / "ref.tsv")
    return d, path, str(d / "ref.tsv")


def test_byte_flips_never_crash_and_errors_name_the_file(clean):
    d, path, ref = clean
    spans = _chunk_spans(path)
    cases = [{"file": path, "ref": ref, "out": str(d / "out_clean"), "where": "none"}]
    for seed in SEEDS:
        for where in ("chunks", "metadata"):
            n = FLIPS[seed % len(FLIPS)]
            f = d / f"s{seed}_{where}_{n}.h5"
            f.write_bytes(open(path, "rb").read())
            _flip(f, np.random.default_rng(seed), n, where, spans)
            cases.append({"file": str(f), "ref": ref, "out": str(d / f"out_{f.stem}"),
                          "where": where})  # fmt: skip
    # the child imports the package these tests imported (an installed copy has the built
    # extension; the checkout's source tree, first on ``python -c``'s path from the repo root,
    # may not), and runs outside the checkout
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(bulkformer.__file__)))
    path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        capture_output=True, text=True, timeout=300, env=env, cwd=d,
    )  # fmt: skip
    results = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert res.returncode == 0 and len(results) == len(cases), (
        f"driver died (status {res.returncode}: a crash) after {len(results)} of {len(cases)} "
        f"files; stderr tail: {res.stderr[-2000:]}"
    )
    assert results[0]["rc"] == 0, results[0]["err"]
    want = np.load(d / "out_clean" / "expression.npy")
    n_err = 0
    for c, r in zip(cases[1:], results[1:]):
        name = os.path.basename(c["file"])
        if r["rc"] == 0:
            if c["where"] == "chunks":  # a flipped deflate stream must not read as data
                np.testing.assert_array_equal(np.load(os.path.join(c["out"], "expression.npy")),
                                              want, err_msg=name)  # fmt: skip
            continue
        n_err += 1
        lines = [ln for ln in r["err"].splitlines() if ln.startswith("bulkformer ")]
        assert r["rc"] == 1, f"{name}: exit {r['rc']}: {r['err'][-800:]}"
        assert "Traceback" not in r["err"], f"{name}: {r['err'][-800:]}"
        assert len(lines) == 1 and lines[0].startswith("bulkformer preprocess: error: "), r["err"]
        assert name in lines[0], f"{name}: error does not name the file: {lines[0]}"
        assert not os.path.exists(c["out"] + ".partial"), name
    assert n_err >= len(SEEDS)  # the flips do reach the reader
