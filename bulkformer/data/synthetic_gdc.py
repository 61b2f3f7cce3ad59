"""Synthetic GDC "STAR - Counts" files in the exact GDC layout, for tests and benchmarks.

The gene table has 60,660 rows like GENCODE v36: the 19,944 protein-coding genes of the bundled
reference, non-coding Ensembl genes of the bundled length table, made-up ``ENSG9…`` IDs to fill
up, and 44 ``_PAR_Y`` copies, all with version suffixes, in a fixed shuffled order (GDC files
are in genomic order, not ID order). Counts are over-dispersed (log-normal Poisson, many zeros);
the TPM/FPKM columns are computed from them so the files look real, but readers use counts.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pandas as pd

from .gdc import GDC_COLUMNS, GDC_SUFFIX
from .genes import GeneReference, default_gene_lengths

__all__ = ["synthetic_gene_table", "synthetic_counts", "write_gdc_file", "make_gdc_dir"]

SPECIAL_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
N_GDC_GENES = 60660
N_PAR_Y = 44


def synthetic_gene_table(n_genes: int = N_GDC_GENES, *, seed: int = 0) -> pd.DataFrame:
    """(n_genes,) rows: ``gene_id`` (versioned), ``gene_name``, ``gene_type``, ``length``."""
    rng = np.random.default_rng(seed)
    ref = GeneReference.default()
    lens = default_gene_lengths()
    n_par = min(N_PAR_Y, n_genes // 100)
    pc = pd.DataFrame(
        {"uid": ref.gene_ids, "gene_name": ref.symbols, "gene_type": "protein_coding"}
    )
    other = lens.index[~lens.index.isin(ref.gene_ids) & ~lens.index.str.endswith("_PAR_Y")]
    nc = pd.DataFrame({"uid": other, "gene_name": "", "gene_type": "lncRNA"})
    nc["gene_name"] = [f"LNC{i}" for i in range(len(nc))]
    df = pd.concat([pc, nc], ignore_index=True)
    n_base = n_genes - n_par
    if len(df) > n_base:
        df = df.iloc[np.sort(rng.choice(len(df), n_base, replace=False))]
    else:
        k = n_base - len(df)
        fill = pd.DataFrame(
            {
                "uid": [f"ENSG9{i:010d}" for i in range(k)],
                "gene_name": [f"SYN{i}" for i in range(k)],
                "gene_type": "processed_pseudogene",
            }
        )
        df = pd.concat([df, fill], ignore_index=True)
    df = df.reset_index(drop=True)
    df["gene_id"] = df["uid"] + "." + rng.integers(1, 20, len(df)).astype(str)
    par = df[df["gene_type"] == "protein_coding"].sample(n_par, random_state=seed).copy()
    par["gene_id"] = par["gene_id"] + "_PAR_Y"
    df = pd.concat([df, par], ignore_index=True)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    base = df["uid"]
    df["length"] = base.map(lens).fillna(1000.0).to_numpy(np.float64)
    return df[["gene_id", "gene_name", "gene_type", "length"]]


def synthetic_counts(n_samples: int, n_genes: int, *, seed: int = 0) -> np.ndarray:
    """(n_samples, n_genes) int64 over-dispersed counts, ~40 % zeros, ~20-60 M reads each."""
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(0.0, 2.5, n_genes))
    mu[rng.random(n_genes) < 0.3] = 0.0
    depth = rng.uniform(20e6, 60e6, (n_samples, 1))
    lam = mu * rng.lognormal(0.0, 0.5, (n_samples, n_genes))
    lam *= depth / lam.sum(axis=1, keepdims=True)
    return rng.poisson(lam).astype(np.int64)


def write_gdc_file(
    path: str | os.PathLike,
    genes: pd.DataFrame,
    counts: np.ndarray,
    *,
    special: tuple[int, int, int, int] = (2338730, 1675262, 1474343, 1006113),
) -> None:
    """Write one sample as a GDC STAR - Counts file (gzip when the name ends in ``.gz``)."""
    import gzip

    c = np.asarray(counts, dtype=np.int64)
    L = genes["length"].to_numpy(np.float64)
    rate = c / L
    tpm = rate / max(rate.sum(), 1e-300) * 1e6
    fpkm = c / L * 1e9 / max(c.sum(), 1)
    uq = np.quantile(c[c > 0], 0.75) if (c > 0).any() else 1.0
    fpkm_uq = c / L * 1e9 / max(uq * len(c), 1)
    s1 = c // 2
    s2 = c - s1
    lines = ["# gene-model: GENCODE v36", "\t".join(GDC_COLUMNS)]
    lines += [f"{n}\t\t\t{v}\t{v}\t{v}\t\t\t" for n, v in zip(SPECIAL_ROWS, special)]
    fmt = "{}\t{}\t{}\t{}\t{}\t{}\t{:.4f}\t{:.4f}\t{:.4f}".format
    lines += map(
        fmt,
        genes["gene_id"],
        genes["gene_name"],
        genes["gene_type"],
        c.tolist(),
        s1.tolist(),
        s2.tolist(),
        tpm.tolist(),
        fpkm.tolist(),
        fpkm_uq.tolist(),
    )
    data = ("\n".join(lines) + "\n").encode()
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, compresslevel=1) if path.endswith(".gz") else data)


def make_gdc_dir(
    root: str | os.PathLike,
    n_files: int,
    *,
    n_genes: int = N_GDC_GENES,
    seed: int = 0,
    gz: bool = False,
    projects: tuple[str, ...] = ("TCGA-BRCA", "TCGA-LUAD", "TCGA-COAD"),
) -> tuple[str, str, pd.DataFrame, np.ndarray]:
    """A GDC-like download directory ``root/<file id>/<file name>`` plus ``gdc_sample_sheet.tsv``.

    Returns (directory, sample sheet path, gene table, counts (n_files, n_genes) in file order
    of the sample sheet rows).
    """
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    genes = synthetic_gene_table(n_genes, seed=seed)
    counts = synthetic_counts(n_files, len(genes), seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    rows = []
    for i in range(n_files):
        fid = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i))
        name = f"{uuid.UUID(int=int(rng.integers(0, 2**63)) << 32 | i)}{GDC_SUFFIX}"
        name += ".gz" if gz else ""
        os.makedirs(os.path.join(root, fid), exist_ok=True)
        write_gdc_file(os.path.join(root, fid, name), genes, counts[i])
        proj = projects[i % len(projects)]
        case = f"TCGA-{i // 100:02d}-{i % 10000:04d}"
        rows.append(
            {
                "File ID": fid,
                "File Name": name,
                "Data Category": "Transcriptome Profiling",
                "Data Type": "Gene Expression Quantification",
                "Project ID": proj,
                "Case ID": case,
                "Sample ID": f"{case}-{'11A' if i % 7 == 0 else '01A'}",
                "Sample Type": "Solid Tissue Normal" if i % 7 == 0 else "Primary Tumor",
            }
        )
    sheet = os.path.join(root, "gdc_sample_sheet.tsv")
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return root, sheet, genes, counts
