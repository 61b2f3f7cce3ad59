"""``bulkformer`` command line: thin argument parsing, then calls into the Python API.

Each subsystem module defines ``add_parser(subparsers)`` that registers its subcommand(s) with
a ``func`` default taking the parsed ``args``; this file only lists those modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module path → subcommands it registers (imported only when one of them is used or for --help)
COMMAND_MODULES = [
    "bulkformer.data.genes",  # genes build | info
    "bulkformer.data.archs4",  # archs4 info | search | qc
    "bulkformer.data.cli_corpus",  # preprocess, merge, corpus info|export
    "bulkformer.esm",  # esm-embed, esm-align
    "bulkformer.eval.cli",  # embed, probe, finetune, evaluate, demo
    "bulkformer.train.cli",  # pretrain, subset-genes
]


def create_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="bulkformer",
        description="Build a bulk RNA-seq foundation model: preprocess public corpora, "
        "embed genes with ESM2, pretrain, and use the model.",
    )
    p.add_argument("--version", action="version", version=f"bulkformer {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = create_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        print(f"bulkformer {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
