"""Fixtures of the training tests: small corpora made from the bundled real demo data.

The GEUVADIS demo (85 samples, 10,101 genes in ARCHS4 format) is built into a corpus with a
70/15/15 split (so validation has a dozen samples), then reduced to a few hundred of its most
variable genes with ``derive_corpus`` — full attention over all ~20k genes is far too slow for
CPU tests. Torch runs on one thread: on a busy 2-core machine two OpenMP threads spin-wait
into each other and a step gets ~30× slower.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

#: options shared by the quick tests (tiny model, small batches, one thread, no extras)
FAST = dict(
    batch_size=4,
    lr=1e-3,
    warmup=2,
    val_every=0,
    log_every=1,
    progress=False,
    tensorboard=False,
    threads=1,
    workers=1,
)


def fast_cli_args(**over) -> list[str]:
    """FAST (plus ``over``) as ``bulkformer pretrain`` flags."""
    opts = {**FAST, **over}
    args = []
    for k, v in opts.items():
        if k == "progress":
            args += [] if v else ["--no-progress"]
        elif k == "tensorboard":
            args += ["--tensorboard", {None: "auto", True: "on", False: "off"}[v]]
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("WORLD_SIZE", None)
    return env


PY = sys.executable


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
