"""Helpers of the training tests (a module of its own: ``conftest`` names clash across test
directories). Fixtures are in conftest.py.

Fixtures make small corpora from the bundled real demo data.

The GEUVADIS demo (85 samples, 10,101 genes in ARCHS4 format) is built into a corpus with a
70/15/15 split (so validation has a dozen samples), then reduced to a few hundred of its most
variable genes with ``derive_corpus`` — full attention over all ~20k genes is far too slow for
CPU tests. Torch runs on one thread: on a busy 2-core machine two OpenMP threads spin-wait
into each other and a step gets ~30× slower.
"""

import os
import sys
from pathlib import Path

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
    """Environment of a child process: one thread, and the package these tests imported (an
    installed copy has the built extension, the checkout's source tree may not)."""
    import bulkformer

    pkg_parent = Path(bulkformer.__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(pkg_parent), **extra)
    env.pop("WORLD_SIZE", None)
    return env


PY = sys.executable
