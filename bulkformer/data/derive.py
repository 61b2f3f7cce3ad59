"""Derive a smaller corpus: the same samples restricted to a subset of genes.

Full attention over all ~20,000 gene tokens costs ~30 s per sample (forward + backward) for
the tiny preset on a CPU, so CPU tests, demos and smoke runs pretrain on a few hundred genes
instead. Rather than teaching every consumer about column subsets, :func:`derive_corpus` writes
a new, ordinary corpus directory (``docs/corpus_format.md``) whose gene reference is the chosen
subset: it gets its own reference id, its statistics are the parent's sliced to those genes
(so its z-scores are bit-identical to the parent's columns), and ``manifest.json`` records where
it came from under ``derived_from``. Everything downstream (pretraining, export, embedding)
sees a normal corpus, and a checkpoint trained on it refuses data of any other reference.

:func:`select_genes` chooses the genes: by default the ``n`` most variable observed genes, where
variability is the parent's per-gene σ of log1p(TPM) over its training split (the z-scores
themselves have unit variance by construction, so they cannot rank genes).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .._io import json_bytes, npy_bytes, replace_dir, write_atomic
from .corpus import Corpus, CorpusStats
from .corpus.guard import check_out, discard_partial, output_lock
from .corpus.stats import stats_sha
from .genes import GeneReference

__all__ = ["select_genes", "derive_corpus", "SELECT_BY"]

log = logging.getLogger(__name__)

#: ways :func:`select_genes` can rank genes
SELECT_BY = ("variance", "mean", "first")


def _open(corpus) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)


def select_genes(corpus, n: int, by: str = "variance") -> GeneReference:
    """A gene reference of ``n`` observed genes of ``corpus``, in the corpus' gene order.

    Parameters
    ----------
    corpus : Corpus or path of a corpus directory
    n : number of genes to keep (at most the number of observed genes).
    by : how to rank genes:
        ``"variance"`` the largest σ of log1p(TPM) over the training split (``stats.std``);
        ``"mean"`` the highest mean log1p(TPM) (``stats.mean``);
        ``"first"`` the first ``n`` observed genes in reference order.

    Returns
    -------
    GeneReference
        The chosen genes in the parent's column order (not ranked order), with provenance lines
        naming the parent reference and the rule. Ties are broken by reference order.

    Raises
    ------
    ValueError
        ``n`` is not positive or exceeds the observed genes (those some source has and that
        vary in the training split), or ``by`` is unknown.
    """
    c = _open(corpus)
    if by not in SELECT_BY:
        raise ValueError(f"select_genes: by must be one of {SELECT_BY}, got {by!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"select_genes: n must be a positive integer, got {n!r}")
    stats = c.stats
    observed = (~c.missing.all(0)) & (stats.count > 0) & (stats.std > 0)  # (G,)
    n_obs = int(observed.sum())
    if n > n_obs:
        raise ValueError(
            f"select_genes: asked for {n} genes but corpus {c.path} has only {n_obs} observed "
            f"genes with non-zero variance (of {c.n_genes})"
        )
    idx = np.flatnonzero(observed)
    if by == "first":
        keep = idx[:n]
    else:
        score = (stats.std if by == "variance" else stats.mean)[idx]
        order = np.argsort(-score, kind="stable")  # stable: ties keep reference order
        keep = np.sort(idx[order[:n]])
    ref = c.reference
    prov = dict(ref.provenance)
    prov["subset"] = f"{n} of {len(ref)} genes of {ref.id} selected by {by} in corpus {c.path}"
    return GeneReference(ref.gene_ids[keep], ref.symbols[keep], ref.lengths[keep], prov)


def derive_corpus(
    corpus,
    out: str | os.PathLike,
    *,
    n_genes: int | None = None,
    genes: GeneReference | None = None,
    by: str = "variance",
    overwrite: bool = False,
    block_rows: int = 4096,
) -> Corpus:
    """Write a corpus with the rows of ``corpus`` and only a subset of its genes.

    Parameters
    ----------
    corpus : Corpus or path of a corpus directory (the parent).
    out : output directory (written as ``out.partial`` and renamed when complete).
    n_genes : keep this many genes chosen by :func:`select_genes` (``by``).
    genes : or keep exactly these genes (each must be in the parent's reference; they are
        kept in the parent's order).
    by : ranking rule of :func:`select_genes`.
    overwrite : replace an existing ``out`` (only a bulkformer corpus; never the parent).
    block_rows : rows copied per block (memory ≈ block_rows × G_parent × 2 bytes).

    Returns
    -------
    Corpus
        The derived corpus. Its ``expression``, ``missing`` and ``stats`` are the parent's
        columns; ``samples.tsv``, ``excluded.tsv`` and ``splits.npz`` are copied unchanged;
        ``manifest.json`` has the new ``reference`` and a ``derived_from`` record (parent path
        and reference id, rule, number of genes).
    """
    t0 = time.time()
    parent = _open(corpus)
    if (n_genes is None) == (genes is None):
        raise ValueError("derive_corpus: give exactly one of n_genes= or genes=")
    pref = parent.reference
    if genes is None:
        genes = select_genes(parent, n_genes, by=by)
        rule = by
    else:
        rule = "given"
    cols = pref.index_of(genes.gene_ids, strip=False)
    if (cols < 0).any():
        bad = genes.gene_ids[cols < 0][:3].tolist()
        raise ValueError(
            f"derive_corpus: {int((cols < 0).sum())} gene(s) are not in the reference of "
            f"{parent.path}, e.g. {bad}"
        )
    order = np.argsort(cols, kind="stable")
    cols = cols[order]
    ref = GeneReference(
        genes.gene_ids[order], genes.symbols[order], genes.lengths[order], genes.provenance
    )
    out = check_out(out, overwrite, [parent.path])  # fail fast; checked again under the lock
    with output_lock(out, "subset-genes (derive)"):
        check_out(out, overwrite, [parent.path])
        partial = out.with_name(out.name + ".partial")
        discard_partial(partial)
        partial.mkdir(parents=True)
        _write(parent, partial, ref, cols, rule, block_rows, t0)
        replace_dir(partial, out)  # the old ``out`` (overwrite=True) stays whole until swapped
    log.info(
        "derived corpus %s: %d rows × %d genes (of %d, by %s) from %s",
        out,
        len(parent),
        len(ref),
        parent.n_genes,
        rule,
        parent.path,
    )
    return Corpus.open(out)


def _write(parent: Corpus, partial: Path, ref: GeneReference, cols, rule: str, block_rows, t0):
    """The files of the derived corpus, into ``partial``."""
    ps = parent.stats
    stats = CorpusStats(ps.mean[cols], ps.std[cols], ps.count[cols], ref.id, ps.n)
    ref.to_tsv(partial / "genes.tsv")
    write_atomic(partial / "stats.npz", stats.to_bytes())
    write_atomic(partial / "missing.npy", npy_bytes(np.ascontiguousarray(parent.missing[:, cols])))
    for name in ("samples.tsv", "excluded.tsv", "splits.npz"):
        shutil.copyfile(parent.path / name, partial / name)
    src = parent.expression  # (N, G_parent) float16 memmap
    N = len(parent)
    dst = np.lib.format.open_memmap(partial / "expression.npy", "w+", np.float16, (N, len(ref)))
    for a in range(0, N, block_rows):
        dst[a : a + block_rows] = src[a : a + block_rows][:, cols]
    dst.flush()
    del dst

    m = copy.deepcopy(parent.manifest)
    m["reference"] = {"id": ref.id, "n_genes": len(ref)}
    if m["parameters"].get("stats") is not None:
        m["parameters"]["stats"] = {
            "reference_id": ref.id,
            "n": stats.n,
            "sha256": stats_sha(stats),
        }
    m["derived_from"] = {
        "path": str(parent.path),
        "reference_id": parent.manifest["reference"]["id"],
        "n_genes": parent.n_genes,
        "rule": rule,
        "n_genes_kept": len(ref),
    }
    m.setdefault("build", {})["derived_seconds"] = round(time.time() - t0, 3)
    write_atomic(partial / "manifest.json", json_bytes(m))
