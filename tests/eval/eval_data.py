"""Helpers of the eval tests: a real demo corpus cut to a few genes, and tiny random checkpoints."""

from __future__ import annotations

import h5py
import numpy as np
import torch

from bulkformer.data.archs4 import ARCHS4Source
from bulkformer.data.corpus import build_corpus
from bulkformer.data.demo import demo_path
from bulkformer.eval._subset import subset_corpus
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.pretrained import export_pretrained


def demo_corpus(tmp, n_genes=64):
    """The 85-sample GEUVADIS demo as a corpus (label sex) cut to its n most variable genes."""
    full = build_corpus(
        ARCHS4Source(demo_path()), tmp / "full", label="sex", min_nonzero=9000, progress=False
    )
    return subset_corpus(full, tmp / f"sub{n_genes}", n_genes=n_genes)


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


def stand_in_pretrain(
    corpus_dir,
    out_dir,
    *,
    config="tiny",
    steps=10,
    batch_size=8,
    lr=1e-3,
    seed=0,
    device=None,
    progress=False,
    **_,
):
    """A minimal masked-gene MSE loop with ``bulkformer.train.pretrain``'s call signature, so
    the demo can be tested (and timed) before/without the real trainer."""
    from pathlib import Path
    from types import SimpleNamespace

    from bulkformer.data.corpus import Corpus

    corpus = Corpus.open(corpus_dir)
    ref = corpus.reference
    cfg = BulkFormerConfig.from_preset(config, n_genes=len(ref), reference_id=ref.id)
    torch.manual_seed(seed)
    model = BulkFormer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    train = corpus.splits["train"]
    losses = []
    for _step in range(steps):
        rows = np.sort(rng.choice(train, size=min(batch_size, len(train)), replace=False))
        x = torch.from_numpy(np.asarray(corpus.expression[rows], dtype=np.float32))
        miss = torch.from_numpy(corpus.missing_rows(rows))
        masked = (torch.rand(x.shape) < 0.15) & ~miss
        out = model(x, missing=miss, masked=masked)
        loss = ((out.pred - x)[masked] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    meta = {"steps": steps, "final_loss": float(np.mean(losses[-10:])), "trainer": "stand-in"}
    d = export_pretrained(model, ref, corpus.stats, Path(out_dir) / "export", meta)
    return SimpleNamespace(export_dir=d, metrics=meta)
