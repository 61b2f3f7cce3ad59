"""Helpers of the eval tests: a real demo corpus cut to a few genes, and tiny random checkpoints."""

from __future__ import annotations

import h5py
import numpy as np
import torch

from bulkformer.data.archs4 import ARCHS4Source
from bulkformer.data.corpus import build_corpus
from bulkformer.data.demo import demo_path
from bulkformer.data.derive import derive_corpus
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.pretrained import export_pretrained


def demo_corpus(tmp, n_genes=64):
    """The 85-sample GEUVADIS demo as a corpus (label sex) cut to its n most variable genes."""
    full = build_corpus(
        ARCHS4Source(demo_path()), tmp / "full", label="sex", min_nonzero=9000, progress=False
    )
    return derive_corpus(full, tmp / f"sub{n_genes}", n_genes=n_genes)


def tiny_checkpoint(corpus, out, *, d_model=16, seed=0):
    """A randomly initialised tiny BulkFormer exported with the corpus' reference and stats."""
    ref = corpus.reference
    cfg = BulkFormerConfig(
        n_genes=len(ref),
        d_model=d_model,
        n_layers=1,
        n_heads=2,
        d_esm=8,
        context_hidden=16,
        reference_id=ref.id,
    )
    torch.manual_seed(seed)
    return export_pretrained(BulkFormer(cfg), ref, corpus.stats, out, {"note": "random"})


def demo_counts():
    """(85, 10101) uint32 counts, gene IDs and sex labels of the demo file."""
    with h5py.File(demo_path(), "r") as f:
        x = f["data/expression"][:].T
        genes = f["meta/genes/ensembl_gene_id"][:].astype(str)
        sex = f["meta/samples/sex"][:].astype(str)
        gsm = f["meta/samples/geo_accession"][:].astype(str)
    return np.ascontiguousarray(x), genes, sex, gsm
