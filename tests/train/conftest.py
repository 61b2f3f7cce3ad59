"""Fixtures of the training tests: small corpora made from the bundled real demo data
(see train_helpers.py for why, and for the shared options)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    from bulkformer.data.archs4 import ARCHS4Source
    from bulkformer.data.corpus import build_corpus
    from bulkformer.data.demo import demo_path

    out = tmp_path_factory.mktemp("corpus") / "demo"
    return build_corpus(
        ARCHS4Source(demo_path()),
        out,
        min_nonzero=9000,
        splits=(0.7, 0.15, 0.15),
        progress=False,
    )


@pytest.fixture(scope="session")
def corpus256(demo_corpus, tmp_path_factory):
    from bulkformer.data.derive import derive_corpus

    return derive_corpus(demo_corpus, tmp_path_factory.mktemp("corpus") / "g256", n_genes=256)


@pytest.fixture(scope="session")
def corpus64(demo_corpus, tmp_path_factory):
    from bulkformer.data.derive import derive_corpus

    return derive_corpus(demo_corpus, tmp_path_factory.mktemp("corpus") / "g64", n_genes=64)
