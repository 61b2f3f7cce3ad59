"""Small random expression data with odd sizes, and the numpy reference of the corpus pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bulkformer.data.genes import GeneReference
from bulkformer.data.oracle import log1p_tpm_ref, qc_ref, zscore_ref
from bulkformer.data.source import align_genes

#: bound of the engine's float32 log1p(TPM) against the float64 reference (the Cephes log1p and
#: float32 C/L), also the largest change one normalization path brought to GDC / .h5ad / array
#: sources (measured 9.54e-07 = one float32 ulp at 8-16, see docs/engine.md)
LOG1P_ATOL = 2e-6


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
