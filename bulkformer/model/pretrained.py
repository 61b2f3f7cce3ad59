"""A pretrained BulkFormer as one directory: weights, config, gene reference and statistics.

Like a tokenizer travelling with a language model, the gene reference (column order) and the
per-gene log1p(TPM) statistics (μ, σ) travel with the weights, so new data is aligned and
standardized exactly like the pretraining corpus.

Layout (``export_pretrained`` writes it, :func:`load_pretrained` reads it)::

    config.json         BulkFormerConfig (reference_id included)
    model.safetensors   all parameters and buffers (ESM2 matrix included)
    genes.tsv           the gene reference (GeneReference.to_tsv)
    stats.npz           the corpus statistics (bulkformer.data.corpus.CorpusStats)
    bulkformer.json     metadata: package version, corpus, training summary (free-form)

The directory is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .._io import replace_dir
from ..data.genes import GeneReference, ReferenceMismatchError
from .bulkformer import CONFIG_NAME, WEIGHTS_NAME, BulkFormer

__all__ = ["Pretrained", "export_pretrained", "load_pretrained"]

GENES_NAME = "genes.tsv"
STATS_NAME = "stats.npz"
META_NAME = "bulkformer.json"


@dataclass
class Pretrained:
    """What :func:`load_pretrained` returns."""

    model: BulkFormer
    reference: GeneReference
    stats: object  # bulkformer.data.corpus.CorpusStats
    metadata: dict = field(default_factory=dict)
    path: str = ""


def export_pretrained(
    model: BulkFormer,
    reference: GeneReference,
    stats,
    directory,
    metadata: dict | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a self-contained pretrained directory (see module docstring); returns its path.

    ``stats`` is a :class:`~bulkformer.data.corpus.CorpusStats` (or a path to a ``stats.npz``
    / corpus directory). The model's ``config.reference_id`` (when set), the reference and the
    statistics must all name the same gene reference.
    """
    from .. import __version__
    from ..data.corpus import CorpusStats

    if not isinstance(stats, CorpusStats):
        stats = CorpusStats.load(stats)
    reference.check_same(stats.reference_id, "the statistics")
    rid = model.config.reference_id
    if rid is not None:
        reference.check_same(rid, "the model (config.reference_id)")
    if model.config.n_genes != len(reference):
        raise ValueError(
            f"model has n_genes={model.config.n_genes} but the reference has {len(reference)}"
        )
    out = Path(directory)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    reference.to_tsv(tmp / GENES_NAME)
    (tmp / STATS_NAME).write_bytes(stats.to_bytes())
    meta = {"bulkformer_version": __version__, "reference_id": reference.id, **(metadata or {})}
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1, default=str))
    replace_dir(tmp, out)
    return out


def load_pretrained(directory, *, map_location="cpu") -> Pretrained:
    """Load a directory written by :func:`export_pretrained` (checks all reference ids)."""
    from ..data.corpus import CorpusStats

    d = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME, GENES_NAME, STATS_NAME):
        if not (d / name).is_file():
            raise FileNotFoundError(
                f"{d / name} not found: not a pretrained BulkFormer directory (expected "
                f"{CONFIG_NAME}, {WEIGHTS_NAME}, {GENES_NAME}, {STATS_NAME})"
            )
    reference = GeneReference.from_tsv(d / GENES_NAME)
    stats = CorpusStats.load(d / STATS_NAME)
    try:
        reference.check_same(stats.reference_id, f"{d / STATS_NAME}")
    except ReferenceMismatchError as e:
        raise ReferenceMismatchError(f"{d}: {e}") from None
    model = BulkFormer.from_pretrained(d, map_location=map_location)
    if model.config.reference_id is not None:
        reference.check_same(model.config.reference_id, f"{d / CONFIG_NAME}")
    meta = json.loads((d / META_NAME).read_text()) if (d / META_NAME).exists() else {}
    return Pretrained(model, reference, stats, meta, str(d))
