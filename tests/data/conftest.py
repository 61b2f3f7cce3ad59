"""Fixtures of the data tests (helpers live in corpus_data.py)."""

import pytest
from corpus_data import make_reference


@pytest.fixture
def reference():
    return make_reference()
