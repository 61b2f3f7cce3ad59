"""A pretrained BulkFormer as one directory: weights, config, gene reference and statistics.

Like a tokenizer travelling with a language model, the gene reference (column order) and the
per-gene log1p(TPM) statistics (μ, σ) travel with the weights, so new data is aligned and
standardized exactly like the pretraining corpus.

Layout (``export_pretrained`` writes it, :func:`load_pretrained` reads it)::

    config.json         BulkFormerConfig (reference_id included)
    model.safetensors   all parameters and buffers (ESM2 matrix included)
    genes.tsv           the gene reference (GeneReference.to_tsv)
    stats.npz           the corpus statistics (bulkformer.data.corpus.CorpusStats)
    bulkformer.json     metadata: package version, corpus, training summary (free-form), and
                        "files": the sha256 of each of the four files above

:func:`load_pretrained` verifies the digests (a mismatch raises :class:`CorruptFileError`
naming the file and both digests); a directory without them (exported by an older bulkformer)
loads with a warning.

The directory is written under a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .._io import json_safe, replace_dir, sha256_file
from ..data.genes import GeneReference, ReferenceMismatchError
from .bulkformer import CONFIG_NAME, WEIGHTS_NAME, BulkFormer

__all__ = ["CorruptFileError", "Pretrained", "export_pretrained", "load_pretrained"]

log = logging.getLogger(__name__)

GENES_NAME = "genes.tsv"
STATS_NAME = "stats.npz"
META_NAME = "bulkformer.json"
#: the files whose sha256 ``bulkformer.json`` records (under "files")
CHECKED_FILES = (CONFIG_NAME, WEIGHTS_NAME, GENES_NAME, STATS_NAME)


class CorruptFileError(ValueError):
    """A file of a pretrained directory differs from the digest its export recorded."""


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
    try:
        model.save_pretrained(tmp)
        reference.to_tsv(tmp / GENES_NAME)
        (tmp / STATS_NAME).write_bytes(stats.to_bytes())
        meta = {"bulkformer_version": __version__, "reference_id": reference.id}
        meta.update(metadata or {})
        meta["files"] = {name: sha256_file(tmp / name) for name in CHECKED_FILES}
        text = json.dumps(json_safe(meta), indent=1, default=str, allow_nan=False)
        (tmp / META_NAME).write_text(text)
        replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: no half-written export left
        if isinstance(e, OSError) and not isinstance(e, FileExistsError):
            why = e.strerror or str(e)
            raise OSError(e.errno, f"cannot write the pretrained export {out}: {why}") from e
        raise
    return out


def _verify_files(d: Path, meta: dict) -> None:
    """Check the files of ``d`` against the digests of its ``bulkformer.json``."""
    digests = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(digests, dict):
        log.warning(
            "%s: no file checksums in %s (exported by an older bulkformer): the weights are not "
            "verified; export it again to add them",
            d,
            META_NAME,
        )
        return
    for name in CHECKED_FILES:
        expected = digests.get(name)
        if expected is None:
            raise CorruptFileError(f"{d / META_NAME}: field files.{name}: no sha256 recorded")
        actual = sha256_file(d / name)
        if actual != expected:
            raise CorruptFileError(
                f"{d / name}: corrupt or modified (sha256 {actual}, expected {expected} as "
                f"recorded in {d / META_NAME}); export or download it again"
            )


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
    meta = {}
    if (d / META_NAME).exists():
        try:
            meta = json.loads((d / META_NAME).read_text())
        except ValueError as e:
            raise CorruptFileError(f"{d / META_NAME}: not valid JSON ({e})") from None
    _verify_files(d, meta)
    reference = GeneReference.from_tsv(d / GENES_NAME)
    stats = CorpusStats.load(d / STATS_NAME)
    try:
        reference.check_same(stats.reference_id, f"{d / STATS_NAME}")
    except ReferenceMismatchError as e:
        raise ReferenceMismatchError(f"{d}: {e}") from None
    try:
        model = BulkFormer.from_pretrained(d, map_location=map_location)
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise CorruptFileError(
            f"{d / WEIGHTS_NAME}: not a readable safetensors file ({e}); it is truncated or "
            "damaged: export or download it again"
        ) from None
    if model.config.reference_id is not None:
        reference.check_same(model.config.reference_id, f"{d / CONFIG_NAME}")
    return Pretrained(model, reference, stats, meta, str(d))
