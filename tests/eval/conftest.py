"""Fixtures of the eval tests: the real demo corpus cut to 64 genes and a random tiny checkpoint
(helpers live in eval_data.py)."""

import pytest
from eval_data import demo_corpus, tiny_checkpoint

from bulkformer.model.pretrained import load_pretrained


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return demo_corpus(tmp_path_factory.mktemp("corpus"), n_genes=64)


@pytest.fixture(scope="session")
def ckpt(corpus, tmp_path_factory):
    return tiny_checkpoint(corpus, tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture
def pretrained(ckpt):
    return load_pretrained(ckpt)
