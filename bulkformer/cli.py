"""``bulkformer`` command line: thin argument parsing, then calls into the Python API.

Each subsystem module defines ``add_parser(subparsers)`` that registers its subcommand(s) with
a ``func`` default taking the parsed ``args``; this file only lists those modules.

Every failure ends the command with one line on stderr (``bulkformer CMD: error: …``, naming
the file, the field and what was expected) and a non-zero exit status; ``--debug`` prints the
traceback as well. An exception the code did not anticipate is reported the same way, as an
internal error, with a pointer to ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback

# module path → subcommands it registers (imported only when one of them is used or for --help)
COMMAND_MODULES = [
    "bulkformer.data.genes",  # genes build | info | lengths
    "bulkformer.data.archs4",  # archs4 info | search | qc
    "bulkformer.data.cli_corpus",  # preprocess, merge, corpus info|export
    "bulkformer.esm",  # esm-embed, esm-align
    "bulkformer.eval.cli",  # embed, probe, finetune, evaluate, demo
    "bulkformer.train.cli",  # pretrain, subset-genes
]

#: exit status of a reported error (bad input, missing file, …) and of an internal error
EXIT_ERROR = 1
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130


def create_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="bulkformer",
        description="Build a bulk RNA-seq foundation model: preprocess public corpora, "
        "embed genes with ESM2, pretrain, and use the model.",
    )
    p.add_argument("--version", action="version", version=f"bulkformer {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the Python traceback as well as the one-line message",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return p


def int_at_least(lo: int):
    """argparse ``type=``: an integer ≥ ``lo`` (``--threads -3`` is refused, not "all cores")."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}: expected an integer ≥ {lo}")
        return v

    parse.__name__ = f"integer ≥ {lo}"
    return parse


def one_line(text: str) -> str:
    """``text`` on one line: line breaks (and the indentation after them) become ``" | "``."""
    parts = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(parts)


def _is_safetensors_error(e: BaseException) -> bool:
    return type(e).__name__ == "SafetensorError"


def error_message(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception that ended a command."""
    if isinstance(e, KeyError) and not isinstance(e, ValueError):
        # KeyError's str() is the repr of its argument: unwrap a message, name a bare key
        arg = e.args[0] if e.args else ""
        msg = arg if isinstance(arg, str) and " " in arg else f"no entry {arg!r} (KeyError)"
        return one_line(msg), EXIT_ERROR
    if isinstance(e, MemoryError):
        return (
            "out of memory (MemoryError): use a smaller --block-size / --batch-size, or fewer "
            "--threads",
            EXIT_ERROR,
        )
    if isinstance(e, OSError):
        msg = str(e)
        if re.search(r"unable to lock file|lock(ing)? .*(errno|unavailable)", msg, re.I):
            msg += (
                " — the HDF5 file is locked: another process has it open for writing, or the "
                "file system does not support locks (then set HDF5_USE_FILE_LOCKING=FALSE)"
            )
        if getattr(e, "errno", None) == 28 and "No space" not in msg:
            msg += " (no space left on the device)"
        return one_line(msg), EXIT_ERROR
    if isinstance(e, (ValueError, LookupError, RuntimeError)) or _is_safetensors_error(e):
        return one_line(str(e)) or type(e).__name__, EXIT_ERROR
    text = one_line(str(e))
    return (
        f"internal error: {type(e).__name__}{': ' + text if text else ''} (rerun with --debug "
        "for the traceback, and please report it)",
        EXIT_INTERNAL,
    )


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
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as e:  # every failure: one line (and the traceback with --debug)
        if args.debug:
            traceback.print_exc()
        msg, status = error_message(e)
        print(f"bulkformer {args.command}: error: {msg}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
