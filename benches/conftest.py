"""Shared benchmark fixtures: cached synthetic files live in $BULKFORMER_BENCH_CACHE
(default: .bench_cache/ in the repository, git-ignored)."""

import os
from pathlib import Path

import pytest

CACHE = Path(
    os.environ.get("BULKFORMER_BENCH_CACHE", Path(__file__).parent.parent / ".bench_cache")
)


@pytest.fixture(scope="session")
def bench_cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE
