"""What a pretraining run is built from, checked against its corpus: the model config
(:func:`resolve_config`) and the ESM2 gene matrix (:func:`load_esm`)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ..data.corpus import Corpus
from ..data.genes import ReferenceMismatchError
from ..model import BulkFormerConfig

__all__ = ["resolve_config", "load_esm"]

log = logging.getLogger(__name__)


def resolve_config(config, corpus: Corpus, *, d_esm: int | None = None) -> BulkFormerConfig:
    """A BulkFormerConfig for ``corpus``: from a preset name, a JSON path / text, or a config.

    Presets get the corpus' ``n_genes`` and ``reference_id`` (and ``d_esm`` of the ESM2
    matrix when given). A given config must agree with the corpus: same ``n_genes``, and
    ``reference_id`` equal to the corpus' (or None, then set).

    Raises
    ------
    ReferenceMismatchError
        The config names another gene reference than the corpus.
    ValueError
        The config's ``n_genes`` or ``d_esm`` disagree with the corpus / ESM2 matrix.
    """
    ref_id, G = corpus.manifest["reference"]["id"], corpus.n_genes
    if isinstance(config, BulkFormerConfig):
        cfg, where = config, "the given config"
    elif isinstance(config, str) and config in _presets():
        over = dict(n_genes=G, reference_id=ref_id)
        if d_esm is not None:
            over["d_esm"] = d_esm
        return BulkFormerConfig.from_preset(config, **over)
    elif isinstance(config, (str, os.PathLike)):
        if isinstance(config, str) and not config.lstrip().startswith("{"):
            if not Path(config).exists():
                raise ValueError(
                    f"--config {config!r}: neither a preset ({', '.join(sorted(_presets()))}) "
                    "nor an existing JSON file"
                )
        cfg, where = BulkFormerConfig.from_json(config), f"config {config}"
    else:
        raise TypeError(
            f"config must be a preset name, a JSON path or a BulkFormerConfig: {config}"
        )
    if cfg.reference_id is not None and cfg.reference_id != ref_id:
        raise ReferenceMismatchError(
            f"{where} is for gene reference {cfg.reference_id!r} but corpus {corpus.path} uses "
            f"{ref_id!r} ({G} genes)"
        )
    if cfg.n_genes != G:
        raise ValueError(f"{where} has n_genes={cfg.n_genes} but corpus {corpus.path} has {G}")
    if d_esm is not None and cfg.d_esm != d_esm:
        raise ValueError(f"{where} has d_esm={cfg.d_esm} but the ESM2 matrix is {d_esm} wide")
    return cfg.replace(reference_id=ref_id)


def _presets() -> dict:
    from ..model import PRESETS

    return PRESETS


def load_esm(esm, corpus: Corpus):
    """``(embeddings (G, d_esm), has_protein (G,), fingerprint)`` of the ESM2 matrix ``esm``
    checked against the corpus' gene reference; ``(None, None, fingerprint)`` without one."""
    if esm is None:
        log.warning(
            "no ESM2 matrix given (--esm): genes get the model's fixed *random* identity "
            "vectors (random_esm, seed 0) — fine for tests and smoke runs, not for a real model"
        )
        return None, None, {"kind": "random_esm", "seed": 0}
    try:
        from ..esm import load_esm_matrix
    except ImportError as e:  # pragma: no cover - depends on the esm branch being merged
        raise ValueError(f"--esm needs bulkformer.esm (load_esm_matrix): {e}") from e
    emb, has_protein, meta = load_esm_matrix(esm, reference=corpus.reference)
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != corpus.n_genes:
        raise ReferenceMismatchError(
            f"ESM2 matrix {esm} has shape {emb.shape} but corpus {corpus.path} has "
            f"{corpus.n_genes} genes: one row per reference gene is expected"
        )
    rid = (meta or {}).get("reference_id")
    if rid is not None:
        corpus.reference.check_same(rid, f"ESM2 matrix {esm}")
    digest = hashlib.sha1(np.ascontiguousarray(emb, dtype=np.float32).tobytes()).hexdigest()[:16]
    fp = {"kind": "file", "path": str(esm), "sha1": digest, "reference_id": rid}
    return emb, np.asarray(has_protein, dtype=bool), fp
