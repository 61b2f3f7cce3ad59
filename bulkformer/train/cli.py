"""``bulkformer pretrain`` and ``bulkformer subset-genes``: argument parsing, then the API.

Under torchrun every rank runs the same command line::

    torchrun --nproc_per_node 8 -m bulkformer.cli pretrain --corpus C --esm E --out RUN ...
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]


def add_parser(subparsers) -> None:
    from .pretrain import PretrainOptions

    d = PretrainOptions()
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
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per rank")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio)
    p.add_argument(
        "--warmup", type=float, default=d.warmup, help="warmup: fraction of steps (<1) or steps"
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--accum", type=int, default=d.accum, help="micro-batches per step")
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clip (0: off)")
    p.add_argument("--mask-fraction", type=float, default=d.mask_fraction)
    p.add_argument("--contrastive-weight", type=float, default=d.contrastive_weight)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-max-samples", type=int, default=d.val_max_samples)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints kept")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="resume although settings changed; without --resume: start an existing run over",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision)
    p.add_argument(
        "--bf16", dest="precision", action="store_const", const="bf16", help="= --precision bf16"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="data reader threads")
    p.add_argument(
        "--threads", type=int, default=d.threads, help="torch CPU threads (0: torch default)"
    )
    p.add_argument("--prefetch", type=int, default=d.prefetch, help="batches read ahead")
    p.add_argument("--block-rows", type=int, default=d.block_rows, help="rows per shuffle block")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ddp", dest="distributed", action="store_const", const="ddp")
    g.add_argument("--fsdp", dest="distributed", action="store_const", const="fsdp")
    p.set_defaults(distributed="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--tensorboard",
        choices=("auto", "on", "off"),
        default="auto",
        help="TensorBoard event files in RUN/tb",
    )
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
    from .checkpoint import CheckpointMismatchError
    from .pretrain import NonFiniteLossError, pretrain

    tb = {"auto": None, "on": True, "off": False}[args.tensorboard]
    try:
        r = pretrain(
            args.corpus,
            args.out,
            esm=args.esm,
            config=args.config,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            min_lr_ratio=args.min_lr_ratio,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            accum=args.accum,
            clip=args.clip,
            mask_fraction=args.mask_fraction,
            contrastive_weight=args.contrastive_weight,
            val_every=args.val_every,
            val_max_samples=args.val_max_samples,
            ckpt_every=args.ckpt_every,
            keep_last=args.keep_last,
            log_every=args.log_every,
            seed=args.seed,
            workers=args.workers,
            prefetch=args.prefetch,
            threads=args.threads,
            block_rows=args.block_rows,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            checkpointing=args.checkpointing,
            distributed=args.distributed,
            resume=args.resume,
            force=args.force,
            progress=args.progress,
            tensorboard=tb,
        )
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
