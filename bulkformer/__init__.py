"""bulkformer: a transformer foundation model for bulk RNA-seq.

Subpackages are imported lazily so that ``import bulkformer`` is cheap and works without a GPU,
flash-attn or even the compiled extension (``bulkformer._C``) being importable.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

__all__ = ["__version__", "data", "model", "train", "eval", "esm", "kernels"]


def __getattr__(name: str) -> Any:
    if name in {"data", "model", "train", "eval", "esm", "kernels"}:
        return importlib.import_module(f"bulkformer.{name}")
    raise AttributeError(f"module 'bulkformer' has no attribute {name!r}")
