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
    p.add_argument("--corpus", help="corpus directory (bulkformer preprocess); required")
    p.add_argument("--out", help="run directory; required (neither is needed with --plan)")
    p.add_argument(
        "--esm",
        default=None,
        help="ESM2 gene matrix (safetensors); default: a fixed random matrix (smoke runs only)",
    )
    p.add_argument(
        "--config", default="tiny", help="preset (tiny|small|base|base100m) or config.json"
    )
    add_option_flags(p, PretrainOptions)  # one flag per field: every option is reachable
    m = p.add_argument_group("memory plan (bulkformer.train.plan; no training)")
    m.add_argument("--plan", action="store_true", help="print the estimated per-GPU peak "
                   "memory and step FLOPs of these settings, then exit")  # fmt: skip
    m.add_argument("--gpu-memory", metavar="SIZE", help="with --plan: the largest micro-batch "
                   "and settings that fit a GPU of SIZE (16GB, 24GB, 80GB, 141GB, ...)")  # fmt: skip
    m.add_argument("--n-genes", type=int, help="with --plan and no --corpus: genes per sample")
    m.add_argument("--fsdp-world", type=int, help="with --plan --fsdp: GPUs to shard over")
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

    if args.plan or args.gpu_memory:
        from .plan import run_plan_cli

        return run_plan_cli(args)
    if not args.corpus or not args.out:
        raise ValueError("--corpus and --out are required (except with --plan)")
    try:
        opts = options_from_args(PretrainOptions, args)
        r = pretrain(args.corpus, args.out, esm=args.esm, config=args.config, options=opts)
    except (NonFiniteLossError, CheckpointMismatchError) as e:
        print(f"bulkformer pretrain: error: {e}", file=sys.stderr)
        return 1
    if r.already_finished:
        print(
            f"{r.out} is already finished at step {r.steps} (--steps {opts.steps}): nothing "
            "trained; raise --steps and pass --force to train further"
        )
    if r.pretrained is not None:
        val = (
            f"val MSE {r.val_mse:.4f} vs gene-mean baseline {r.val_baseline:.4f}"
            if r.val_mse is not None and r.val_baseline is not None
            else "no validation rows"
        )
        loss = "n/a" if r.train_loss is None else f"{r.train_loss:.4f}"
        tps = "" if r.tokens_per_s is None else f", {r.tokens_per_s:,.0f} tokens/s"
        print(f"{r.steps} steps, train loss {loss}, {val}{tps}; model: {r.pretrained}")
    return 0


def run_subset(args) -> int:
    from ..data.derive import derive_corpus

    c = derive_corpus(
        args.corpus, args.out, n_genes=args.n_genes, by=args.by, overwrite=args.overwrite
    )
    print(c.describe())
    return 0
