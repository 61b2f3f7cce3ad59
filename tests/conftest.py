"""Test configuration: run Triton kernels in the interpreter when no CUDA device is present.

TRITON_INTERPRET must be set before triton is first imported, so it is set here at collection.
"""

import os

import numpy as np
import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


HAS_CUDA = _cuda_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
