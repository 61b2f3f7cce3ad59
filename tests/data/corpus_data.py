"""Small random expression data with odd sizes, and the numpy reference of the corpus pipeline."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bulkformer.data.genes import GeneReference
from bulkformer.data.normalize import log1p_tpm_ref, qc_ref, zscore_ref
from bulkformer.data.source import align_genes


def make_reference(G: int = 37, seed: int = 7) -> GeneReference:
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(300, 9000, G)
    lengths[3] = np.nan  # a reference gene without a known length
    return GeneReference(
        np.array([f"ENSG{i:011d}" for i in range(G)], dtype=object),
        np.array([f"G{i}" for i in range(G)], dtype=object),
        lengths,
        {"source": "test"},
    )


def make_source_data(S, genes, *, seed, labels=("a", "b", "c"), zero_frac=0.3):
    """(counts (S, J) int64, gene_ids (J,) with version suffixes, samples DataFrame)."""
    rng = np.random.default_rng(seed)
    gene_ids = np.array([f"ENSG{g:011d}.{1 + g % 5}" for g in genes], dtype=object)
    counts = rng.poisson(rng.uniform(1, 40, len(genes)), (S, len(genes))).astype(np.int64)
    counts[rng.random(counts.shape) < rng.uniform(0, zero_frac, (S, 1))] = 0
    samples = pd.DataFrame(
        {"tissue": rng.choice(list(labels), S), "batch": rng.integers(0, 3, S)},
        index=pd.Index([f"S{seed}_{i}" for i in range(S)]),
    )
    return counts, gene_ids, samples


def pipeline_ref(inputs, ref: GeneReference, *, min_nonzero, split, stats=None):
    """Numpy reference of the whole corpus pipeline.

    inputs : list of (counts, gene_ids, lengths or None) in corpus order.
    split : (N,) int8 split code of every input sample (0 train).
    Returns dict with values (kept rows, float64 log1p TPM), z, missing (n_sources, G),
    keep (N,), mean, std.
    """
    vals, covs, nz_all, src = [], [], [], []
    for i, (counts, ids, lengths) in enumerate(inputs):
        al = align_genes(ids, ref, source_lengths=lengths)
        vals.append(log1p_tpm_ref(counts, al.lengths, al.gene_map, len(ref)))
        covs.append(al.covered)
        nz_all.append(qc_ref(counts)[0])
        src.append(np.full(len(counts), i))
    v = np.concatenate(vals)
    nz = np.concatenate(nz_all)
    src = np.concatenate(src)
    cov = np.stack(covs)[src]  # (N, G)
    keep = nz >= min_nonzero
    if stats is None:
        train = keep & (split == 0)
        w = cov[train]
        x = v[train]
        cnt = w.sum(axis=0)
        mean = np.where(cnt > 0, (x * w).sum(axis=0) / np.maximum(cnt, 1), 0.0)
        var = np.where(cnt > 0, (((x - mean) ** 2) * w).sum(axis=0) / np.maximum(cnt, 1), 0.0)
        std = np.sqrt(var)
    else:
        mean, std = stats
    z = np.stack([zscore_ref(v[r], mean, std, cov[r]) for r in np.flatnonzero(keep)])
    return {
        "values": v[keep],
        "z": z,
        "missing": ~np.stack(covs),
        "keep": keep,
        "mean": mean,
        "std": std,
        "source": src[keep],
    }


#: the data files of a corpus (compared byte for byte by :func:`same_files`)
FILES = [
    "genes.tsv",
    "samples.tsv",
    "excluded.tsv",
    "expression.npy",
    "missing.npy",
    "stats.npz",
    "splits.npz",
]


def same_files(a: Path, b: Path):
    """Assert two corpus directories hold the same bytes (the manifest's build section aside)."""
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    ma.pop("build"), mb.pop("build")
    assert ma == mb


#: a build in a subprocess: ``python script OUT [STATS]``; with ``SLOW=seconds`` in the
#: environment every block (read and standardize) is slowed down, to be killed or raced
BUILD_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    from corpus_data import make_reference, make_source_data
    from bulkformer.data.corpus import build_corpus
    from bulkformer.data.corpus._npy import NpyRows
    from bulkformer.data.memory import ArraySource
    if os.environ.get("SLOW"):  # slow down every block (read and standardize) to be killed
        delay, read, rows = float(os.environ["SLOW"]), ArraySource.read_block, NpyRows.rows
        def slow_read(*a, **k):
            time.sleep(delay)
            return read(*a, **k)
        def slow_rows(*a, **k):
            time.sleep(delay)
            return rows(*a, **k)
        ArraySource.read_block, NpyRows.rows = slow_read, slow_rows
    ref = make_reference()
    c, g, s = make_source_data(300, list(range(0, 37)), seed=4)
    src = ArraySource(c, g, s, lengths=ref.lengths, path="mem")
    build_corpus(src, sys.argv[1], ref, label="tissue", min_nonzero=20, block_size=10,
                 progress=False, stats=sys.argv[2] if len(sys.argv) > 2 else None)
    """
)
