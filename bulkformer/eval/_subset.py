"""Restrict a corpus to a subset of its genes (e.g. the N most variable) for small CPU models.

Full attention over ~20,000 gene tokens costs ~30 s per sample (forward + backward) on a CPU
for the tiny preset, so CPU demos pretrain on a few hundred genes. Because z-scores are per
gene, a column subset of a corpus is exactly the corpus one would build with the subset as the
gene reference: :func:`subset_corpus` slices the columns of ``expression.npy``, ``missing.npy``
and ``stats.npz`` and writes a new corpus directory whose ``genes.tsv`` is the subset (a new
reference id). Rows, samples, labels and splits are unchanged.

Stopgap until ``bulkformer.train`` ships its own helper; the integrator may replace it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..data.corpus import Corpus, CorpusStats
from ..data.genes import GeneReference

__all__ = ["most_variable_genes", "subset_corpus"]

log = logging.getLogger(__name__)


def most_variable_genes(stats: CorpusStats, n: int, *, min_mean: float = 1.0) -> np.ndarray:
    """Column indices of the ``n`` genes with the largest std of log1p(TPM), sorted ascending.

    Only genes seen in training rows (``count > 0``) with ``mean >= min_mean`` (log1p TPM;
    1.0 ≈ TPM 1.7) are candidates, so that rarely expressed genes with a few outliers do not
    dominate; when fewer than ``n`` pass, the threshold is dropped.
    """
    if n < 1:
        raise ValueError(f"n = {n}: expected a positive number of genes")
    seen = (stats.count > 0) & np.isfinite(stats.std) & (stats.std > 0)
    cand = seen & (stats.mean >= min_mean)
    if cand.sum() < n:
        cand = seen
    if cand.sum() < n:
        raise ValueError(
            f"only {int(cand.sum())} genes vary in the training rows; asked for {n} — "
            "ask for fewer genes"
        )
    score = np.where(cand, stats.std, -np.inf)
    top = np.argpartition(-score, n - 1)[:n]
    return np.sort(top).astype(np.int64)


def subset_corpus(
    corpus: Corpus | str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_genes: int | None = None,
    genes: np.ndarray | None = None,
    min_mean: float = 1.0,
    block_rows: int = 4096,
    overwrite: bool = False,
) -> Corpus:
    """Write a copy of ``corpus`` restricted to some of its genes.

    Parameters
    ----------
    corpus : a :class:`Corpus` or its directory.
    out : new corpus directory (written as ``out.partial`` and renamed).
    n_genes : keep the ``n_genes`` most variable genes (:func:`most_variable_genes`).
    genes : (k,) int column indices or Ensembl IDs to keep instead (kept in corpus order).
    block_rows : rows copied at a time (memory ≈ block_rows × G × 2 bytes).
    overwrite : replace an existing ``out``.

    Returns
    -------
    The new :class:`Corpus` (k genes, same rows, samples and splits).
    """
    if not isinstance(corpus, Corpus):
        corpus = Corpus.open(corpus)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    ref = corpus.reference
    stats = corpus.stats
    if (n_genes is None) == (genes is None):
        raise ValueError("subset_corpus: give exactly one of n_genes= or genes=")
    if genes is None:
        cols = most_variable_genes(stats, int(n_genes), min_mean=min_mean)
    else:
        g = np.asarray(genes)
        if g.dtype.kind in "iu":
            cols = np.sort(g.astype(np.int64))
            if cols.size and (cols[0] < 0 or cols[-1] >= len(ref)):
                raise ValueError(f"genes: column index out of range [0, {len(ref)})")
        else:
            cols = ref.index_of(g)
            if (cols < 0).any():
                bad = g[cols < 0][:3].tolist()
                raise ValueError(
                    f"genes: {int((cols < 0).sum())} ID(s) not in the corpus, e.g. {bad}"
                )
            cols = np.sort(cols)
        if len(np.unique(cols)) != len(cols):
            raise ValueError("genes: duplicate genes")
    sub = GeneReference(
        ref.gene_ids[cols],
        ref.symbols[cols],
        ref.lengths[cols],
        {**ref.provenance, "subset": f"{len(cols)} of {len(ref)} genes of {ref.id}"},
    )
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    sub.to_tsv(partial / "genes.tsv")
    for name in ("samples.tsv", "excluded.tsv", "splits.npz"):
        shutil.copyfile(corpus.path / name, partial / name)
    st = CorpusStats(stats.mean[cols], stats.std[cols], stats.count[cols], sub.id, stats.n)
    (partial / "stats.npz").write_bytes(st.to_bytes())
    np.save(partial / "missing.npy", np.ascontiguousarray(corpus.missing[:, cols]))
    src = corpus.expression
    dst = np.lib.format.open_memmap(
        partial / "expression.npy", mode="w+", dtype=np.float16, shape=(len(src), len(cols))
    )
    for a in range(0, len(src), block_rows):
        dst[a : a + block_rows] = np.asarray(src[a : a + block_rows])[:, cols]
    dst.flush()
    del dst
    manifest = dict(corpus.manifest)
    manifest["reference"] = {"id": sub.id, "n_genes": len(cols)}
    manifest["subset_of"] = {
        "corpus": str(corpus.path),
        "reference_id": ref.id,
        "n_genes": len(ref),
        "selection": "given" if genes is not None else f"top {len(cols)} by std of log1p TPM",
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log.info("wrote %s: %d rows × %d of %d genes", out, len(src), len(cols), len(ref))
    return Corpus.open(out)
