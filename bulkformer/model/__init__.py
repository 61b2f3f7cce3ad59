"""bulkformer.model: the BulkFormer transformer over all genes of a bulk RNA-seq profile.

``BulkFormer(config, esm=None, has_protein=None)(x, missing=None, masked=None)`` returns a
:class:`BulkFormerOutput` with ``pred`` (B, G), ``hidden`` (B, G, D) and ``pool(how)``.
"""

from .bulkformer import BulkFormer, BulkFormerOutput, pool
from .config import PRESETS, BulkFormerConfig
from .embedding import GeneEmbedding, random_esm
from .encoder import Encoder

__all__ = [
    "BulkFormer",
    "BulkFormerConfig",
    "BulkFormerOutput",
    "Encoder",
    "GeneEmbedding",
    "PRESETS",
    "pool",
    "random_esm",
]
