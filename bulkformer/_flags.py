"""Command-line flags generated from an options dataclass, so that every option is reachable.

A field declared with :func:`option` carries its help text (and, optionally, its choices and
alias flags) in its metadata; :func:`add_option_flags` turns each field into ``--field-name``
(underscores become dashes) and :func:`options_from_args` builds the dataclass back from the
parsed arguments::

    @dataclass(frozen=True)
    class Options:
        steps: int = option(1000, "optimizer steps")
        betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas")

    add_option_flags(parser, Options)        # --steps N, --betas B1 B2
    opts = options_from_args(Options, parser.parse_args(argv))

Types: ``int``, ``float``, ``str`` take one value (``choices`` may restrict it); ``bool`` gets
``--name`` / ``--no-name``; ``tuple[T, ...]`` of a fixed length takes that many values.
``choices`` given as a dict maps the words on the command line to the field's values (e.g.
``{"auto": None, "on": True, "off": False}``). ``aliases`` maps extra flags to the value they
set (``{"--fsdp": "fsdp"}``); they are mutually exclusive with the field's own flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

__all__ = ["option", "add_option_flags", "options_from_args", "flag_name"]


def option(default, help: str, *, choices=None, aliases: dict | None = None):
    """A dataclass field with a default, the help text of its flag, and optional choices /
    alias flags (see the module docstring)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if aliases:
        meta["aliases"] = dict(aliases)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    """``"batch_size"`` → ``"--batch-size"``."""
    return "--" + field_name.replace("_", "-")


def add_option_flags(parser: argparse.ArgumentParser, cls, *, skip=()) -> None:
    """Add one flag per field of the dataclass ``cls`` (except ``skip``) to ``parser``.

    Raises
    ------
    TypeError
        A field has no help text (not declared with :func:`option`) or a type that cannot be
        read from the command line.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with option(default, help)")
        tp, default, meta = hints[f.name], f.default, f.metadata
        kw = dict(dest=f.name, default=default, help=meta["help"])
        choices = meta.get("choices")
        if isinstance(choices, dict):
            word = {v: k for k, v in choices.items()}[default]
            kw.update(default=word, choices=tuple(choices))
        elif choices is not None:
            kw["choices"] = tuple(choices)
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if not args or Ellipsis in args or len(set(args)) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: need tuple[T, T, ...] of one type T")
            kw.update(type=args[0], nargs=len(args), metavar=f.name.upper())
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {tp}")
        if "choices" in kw and "type" not in kw and tp in (int, float):
            kw["type"] = tp
        aliases = meta.get("aliases")
        target = parser.add_mutually_exclusive_group() if aliases else parser
        target.add_argument(flag_name(f.name), **kw)
        for alias, value in (aliases or {}).items():
            target.add_argument(
                alias,
                dest=f.name,
                action="store_const",
                const=value,
                default=argparse.SUPPRESS,  # the field's own flag sets the default
                help=f"= {flag_name(f.name)} {value}",
            )


def options_from_args(cls, args: argparse.Namespace, **extra):
    """The dataclass ``cls`` from parsed arguments (fields not on the command line: their
    defaults, or ``extra``)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in extra or not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        choices = f.metadata.get("choices")
        if isinstance(choices, dict):
            v = choices[v]
        elif typing.get_origin(hints[f.name]) is tuple:
            v = tuple(v)
        values[f.name] = v
    return cls(**values, **extra)
