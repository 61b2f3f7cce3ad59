"""Former home of :class:`~bulkformer.data.array.ArraySource` (kept as an import path).

The value handling of matrix sources lives in :mod:`bulkformer.data.matrix`.
"""

from .array import ArraySource
from .matrix import VALUE_KINDS

__all__ = ["ArraySource", "VALUE_KINDS"]
