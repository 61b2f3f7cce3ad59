"""Find ``bulkformer.kernels`` whether bulkformer is installed or run from a source checkout.

``pip install .`` installs the repository's top-level ``kernels/`` directory as the subpackage
``bulkformer.kernels`` (a ``package_dir`` mapping). In a source checkout that has not been
installed (tests run from the repository root), ``bulkformer/kernels`` does not exist; only then
is ``<repo>/kernels`` loaded under the name ``bulkformer.kernels`` and registered in
``sys.modules``, so that ``import bulkformer.kernels.<op>`` works the same way in both cases.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["import_kernel"]

_NAME = "bulkformer.kernels"


def _kernels_package() -> ModuleType:
    try:
        return importlib.import_module(_NAME)
    except ModuleNotFoundError as e:
        if e.name != _NAME:  # something inside the installed package is missing: not ours
            raise
    init = Path(__file__).resolve().parents[2] / "kernels" / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(
            f"{_NAME} is not installed and no source checkout kernels/ was found at "
            f"{init.parent}: reinstall bulkformer (pip install .)",
            name=_NAME,
        )
    spec = importlib.util.spec_from_file_location(
        _NAME, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    importlib.import_module("bulkformer").kernels = module
    return module


def import_kernel(op: str) -> ModuleType:
    """Import ``bulkformer.kernels.<op>`` (e.g. ``"fused_embedding"``), in-tree or installed."""
    _kernels_package()
    return importlib.import_module(f"{_NAME}.{op}")
