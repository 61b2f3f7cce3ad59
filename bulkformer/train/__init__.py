"""bulkformer.train: masked-gene pretraining on one GPU or many (torchrun: DDP / FSDP).

``pretrain(corpus, out, esm=None, config="tiny", **options) -> PretrainResult``; the options are
the fields of :class:`PretrainOptions`. For CPU runs, derive a corpus restricted to a few hundred
genes first (:func:`bulkformer.data.derive.derive_corpus`, re-exported here). See
``docs/pretraining.md``.
"""

from ..data.derive import derive_corpus, select_genes
from .checkpoint import CheckpointMismatchError, list_checkpoints, load_checkpoint
from .data import BatchLoader, BlockOrder, Masker
from .pretrain import (
    NonFiniteLossError,
    PretrainOptions,
    PretrainResult,
    lr_at,
    pretrain,
    resolve_config,
)

__all__ = [
    "BatchLoader",
    "BlockOrder",
    "CheckpointMismatchError",
    "Masker",
    "NonFiniteLossError",
    "PretrainOptions",
    "PretrainResult",
    "derive_corpus",
    "list_checkpoints",
    "load_checkpoint",
    "lr_at",
    "pretrain",
    "resolve_config",
    "select_genes",
]
