"""``bulkformer pretrain`` and ``bulkformer subset-genes``: argument parsing, then the API.

The ``pretrain`` flags beyond the corpus, run directory, ESM2 matrix and config are generated
from the fields of :class:`~bulkformer.train.options.PretrainOptions`.

Under torchrun every rank runs the same command line::

    torchrun --nproc_per_node 8 -m bulkformer.cli pretrain --corpus C --esm E --out RUN ...
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    from .._flags import add_option_flags
    from .options import PretrainOptions

    p = subparsers.add_parser(
        "pretrain",
        help="masked-gene pretraining on a corpus (one process, or many under torchrun)",
        description="Pretrain BulkFormer by reconstructing masked genes of a corpus. Writes "
        "RUN/checkpoints/, RUN/metrics.csv, RUN/tb/ (if tensorboard is installed), "
        "RUN/loss_curve.png and the final model RUN/pretrained/. See docs/pretraining.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--corpus", required=True, help="corpus directory (bulkformer preprocess)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--esm",
        default=None,
        help="ESM2 gene matrix (safetensors); default: a fixed random matrix (smoke runs only)",
    )
    p.add_argument(
        "--config", default="tiny", help="preset (tiny|small|base|base100m) or config.json"
    )
    add_option_flags(p, PretrainOptions)  # one flag per field: every option is reachable
    p.set_defaults(func=run_pretrain)

    s = subparsers.add_parser(
        "subset-genes",
        help="derive a corpus restricted to N genes (for CPU pretraining and tests)",
        description="Write a new corpus with the rows of CORPUS and only N of its genes (by "
        "default the N most variable observed genes). It has its own gene reference id; "
        "models trained on it only accept data of that reference.",
    )
    s.add_argument("--corpus", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--n-genes", type=int, required=True)
    s.add_argument("--by", choices=("variance", "mean", "first"), default="variance")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=run_subset)


def run_pretrain(args) -> int:
    from .._flags import options_from_args
    from .checkpoint import CheckpointMismatchError
    from .options import PretrainOptions
    from .pretrain import NonFiniteLossError, pretrain

    try:
        opts = options_from_args(PretrainOptions, args)
        r = pretrain(args.corpus, args.out, esm=args.esm, config=args.config, options=opts)
    except (NonFiniteLossError, CheckpointMismatchError) as e:
        print(f"bulkformer pretrain: error: {e}", file=sys.stderr)
        return 1
    if r.pretrained is not None:
        val = (
            f"val MSE {r.val_mse:.4f} vs gene-mean baseline {r.val_baseline:.4f}"
            if r.val_mse is not None
            else "no validation rows"
        )
        print(
            f"{r.steps} steps, train loss {r.train_loss:.4f}, {val}, "
            f"{r.tokens_per_s:,.0f} tokens/s; model: {r.pretrained}"
        )
    return 0


def run_subset(args) -> int:
    from ..data.derive import derive_corpus

    c = derive_corpus(
        args.corpus, args.out, n_genes=args.n_genes, by=args.by, overwrite=args.overwrite
    )
    print(c.describe())
    return 0
