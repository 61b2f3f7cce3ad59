"""Synthetic ARCHS4-format files for tests and benchmarks.

The layout is the real one (ARCHS4 v2.x gene-level files): ``data/expression`` uint32 genes ×
samples, gzip-chunked; ``meta/genes/{ensembl_gene_id|ensembl_gene, symbol, biotype}``;
``meta/samples/{geo_accession, series_id, title, source_name_ch1, characteristics_ch1,
singlecellprobability, readsaligned|alignedreads, ...}``; ``meta/info/{version, ...}``; strings
are variable-length. Counts are negative binomial with gene-specific means (log-normal), a few
tissue programs that up-regulate gene sets, varying library sizes, and many silent genes.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

__all__ = ["make_archs4", "TISSUES"]

TISSUES = ("liver", "brain", "blood", "lung", "muscle", "kidney")


def _strings(values) -> np.ndarray:
    return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object)


def simulate_counts(
    n_genes: int,
    n_samples: int,
    rng: np.random.Generator,
    tissues: np.ndarray,
    n_programs: int,
    silent_fraction: float = 0.5,
) -> np.ndarray:
    """(n_genes, n_samples) uint32 counts, negative binomial (dispersion 0.3)."""
    base = rng.lognormal(mean=0.0, sigma=2.0, size=n_genes)
    base[rng.random(n_genes) < silent_fraction] *= 1e-3  # many genes barely expressed
    programs = np.ones((n_programs, n_genes))
    for p in range(n_programs):
        genes = rng.choice(n_genes, size=max(1, n_genes // 50), replace=False)
        programs[p, genes] = rng.lognormal(1.5, 0.5, size=len(genes))
    libsize = rng.lognormal(np.log(2e7), 0.6, size=n_samples)
    mu = base[:, None] * programs[tissues].T  # (G, S)
    mu *= libsize / mu.sum(axis=0)
    r = 1.0 / 0.3
    lam = rng.gamma(shape=r, scale=mu / r)
    return np.minimum(rng.poisson(lam), np.iinfo(np.uint32).max).astype(np.uint32)


def make_archs4(
    path: str | os.PathLike,
    n_genes: int = 2000,
    n_samples: int = 100,
    *,
    chunks: tuple[int, int] | None = (1000, 10),
    compression: str | None = "gzip",
    compression_opts: int | None = 4,
    shuffle: bool = False,
    seed: int = 0,
    gene_ids: list[str] | None = None,
    id_field: str = "ensembl_gene_id",
    aligned_field: str = "readsaligned",
    version: str = "2.2",
    transposed: bool = False,
    n_programs: int = len(TISSUES),
    single_cell_fraction: float = 0.05,
    low_quality_fraction: float = 0.05,
    block_samples: int = 1000,
    dtype: str = "<u4",
) -> str:
    """Write a synthetic ARCHS4 gene-level file and return its path.

    ``chunks`` is (genes, samples) in the logical orientation; ``transposed=True`` writes the
    old samples × genes layout. ``low_quality_fraction`` of samples get most genes zeroed (so
    they fail the ≥ 14,000 non-zero genes filter); ``single_cell_fraction`` get a high
    single-cell probability. Written to a temporary name, then renamed.
    """
    path = os.fspath(path)
    rng = np.random.default_rng(seed)
    tissues = rng.integers(0, n_programs, size=n_samples)
    if gene_ids is None:
        gene_ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    if len(gene_ids) != n_genes:
        raise ValueError(f"gene_ids has {len(gene_ids)} entries, expected {n_genes}")
    tmp = f"{path}.tmp-{os.getpid()}"
    shape = (n_samples, n_genes) if transposed else (n_genes, n_samples)
    dchunks = None if chunks is None else (chunks[::-1] if transposed else chunks)
    try:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset(
                "data/expression",
                shape=shape,
                dtype=dtype,
                chunks=dchunks,
                compression=compression,
                compression_opts=compression_opts if compression == "gzip" else None,
                shuffle=shuffle,
            )
            lowq = rng.random(n_samples) < low_quality_fraction
            aligned = np.zeros(n_samples, dtype=np.float64)
            # generate the same counts whatever the block size: one child RNG per block
            for b, lo in enumerate(range(0, n_samples, block_samples)):
                hi = min(n_samples, lo + block_samples)
                brng = np.random.default_rng([seed, b])
                counts = simulate_counts(n_genes, hi - lo, brng, tissues[lo:hi], n_programs)
                for j in np.flatnonzero(lowq[lo:hi]):
                    keep = brng.random(n_genes) < 0.1
                    counts[~keep, j] = 0
                aligned[lo:hi] = counts.sum(axis=0, dtype=np.float64)
                if transposed:
                    ds[lo:hi, :] = counts.T
                else:
                    ds[:, lo:hi] = counts
            g = f.create_group("meta/genes")
            g.create_dataset(id_field, data=_strings(gene_ids), dtype=h5py.string_dtype())
            g.create_dataset(
                "symbol",
                data=_strings([f"GENE{i}" for i in range(n_genes)]),
                dtype=h5py.string_dtype(),
            )
            g.create_dataset(
                "biotype",
                data=_strings(["protein_coding" if i % 3 else "lncRNA" for i in range(n_genes)]),
                dtype=h5py.string_dtype(),
            )
            s = f.create_group("meta/samples")
            series = rng.integers(10000, 10000 + max(1, n_samples // 20), size=n_samples)
            tname = [TISSUES[t % len(TISSUES)] for t in tissues]
            fields = {
                "geo_accession": [f"GSM{1000000 + i}" for i in range(n_samples)],
                "series_id": [f"GSE{x}" for x in series],
                "title": [f"{t} sample {i}" for i, t in enumerate(tname)],
                "source_name_ch1": [f"human {t}" for t in tname],
                "characteristics_ch1": [
                    f"tissue: {t},age: {20 + i % 60}" for i, t in enumerate(tname)
                ],
                "organism_ch1": ["Homo sapiens"] * n_samples,
            }
            for k, v in fields.items():
                s.create_dataset(k, data=_strings(v), dtype=h5py.string_dtype())
            scp = rng.random(n_samples) * 0.2
            scp[rng.random(n_samples) < single_cell_fraction] = 0.9
            s.create_dataset("singlecellprobability", data=scp)
            s.create_dataset(aligned_field, data=aligned)
            s.create_dataset("tissue_program", data=tissues.astype(np.int64))
            info = f.create_group("meta/info")
            info.create_dataset("version", data=version.encode(), dtype=h5py.string_dtype())
            info.create_dataset("creation-date", data=b"synthetic", dtype=h5py.string_dtype())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
