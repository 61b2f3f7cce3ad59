"""``bulkformer pretrain`` flags are generated from PretrainOptions: every field is reachable,
parses to its type, and arrives in :func:`pretrain` unchanged."""

import argparse
import dataclasses
import importlib
import types

import pytest

from bulkformer._flags import add_option_flags, option, options_from_args
from bulkformer.cli import create_parser, main
from bulkformer.train import PretrainOptions

#: a non-default value for every field, and the flags that set it
NON_DEFAULT = {
    "steps": (7, ["--steps", "7"]),
    "batch_size": (3, ["--batch-size", "3"]),
    "lr": (2e-3, ["--lr", "2e-3"]),
    "min_lr_ratio": (0.25, ["--min-lr-ratio", "0.25"]),
    "warmup": (5.0, ["--warmup", "5"]),
    "weight_decay": (0.01, ["--weight-decay", "0.01"]),
    "betas": ((0.8, 0.99), ["--betas", "0.8", "0.99"]),
    "accum": (2, ["--accum", "2"]),
    "clip": (0.5, ["--clip", "0.5"]),
    "mask_fraction": (0.3, ["--mask-fraction", "0.3"]),
    "contrastive_weight": (0.2, ["--contrastive-weight", "0.2"]),
    "contrastive_temperature": (0.05, ["--contrastive-temperature", "0.05"]),
    "val_every": (11, ["--val-every", "11"]),
    "val_max_samples": (13, ["--val-max-samples", "13"]),
    "val_masks": (3, ["--val-masks", "3"]),
    "val_baselines": (False, ["--no-val-baselines"]),
    "val_baseline_rows": (77, ["--val-baseline-rows", "77"]),
    "ckpt_every": (17, ["--ckpt-every", "17"]),
    "keep_last": (0, ["--keep-last", "0"]),
    "log_every": (1, ["--log-every", "1"]),
    "seed": (42, ["--seed", "42"]),
    "workers": (1, ["--workers", "1"]),
    "threads": (1, ["--threads", "1"]),
    "prefetch": (9, ["--prefetch", "9"]),
    "block_rows": (64, ["--block-rows", "64"]),
    "device": ("cpu", ["--device", "cpu"]),
    "precision": ("bf16", ["--bf16"]),
    "compile": (True, ["--compile"]),
    "checkpointing": (True, ["--checkpointing"]),
    "distributed": ("fsdp", ["--fsdp"]),
    "resume": (True, ["--resume"]),
    "force": (True, ["--force"]),
    "trust_checkpoint": (True, ["--trust-checkpoint"]),
    "progress": (False, ["--no-progress"]),
    "tensorboard": (False, ["--tensorboard", "off"]),
    "peak_flops": (1.5e15, ["--peak-flops", "1.5e15"]),
}
BASE = ["pretrain", "--corpus", "C", "--out", "R"]


def fields():
    return {f.name for f in dataclasses.fields(PretrainOptions)}


def test_every_option_field_has_a_flag():
    """A new PretrainOptions field without a flag fails (and so does one this test omits)."""
    sub = next(a for a in create_parser()._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["pretrain"]._actions}
    assert fields() <= dests
    assert {"corpus", "out", "esm", "config"} <= dests
    assert set(NON_DEFAULT) == fields()  # this test names a value for every field


def test_flags_reach_pretrain_with_their_types(monkeypatch):
    seen = {}

    def fake_pretrain(corpus, out, *, esm=None, config="tiny", **options):
        seen.update(corpus=corpus, out=out, esm=esm, config=config, **options)
        return types.SimpleNamespace(pretrained=None, already_finished=False)

    monkeypatch.setattr(
        importlib.import_module("bulkformer.train.pretrain"), "pretrain", fake_pretrain
    )
    argv = BASE + ["--esm", "E", "--config", "small"]
    for _, flags in NON_DEFAULT.values():
        argv += flags
    assert main(argv) == 0
    want = PretrainOptions(**{k: v for k, (v, _) in NON_DEFAULT.items()})
    assert seen["options"] == want
    assert (seen["corpus"], seen["out"], seen["esm"], seen["config"]) == ("C", "R", "E", "small")
    for k, (v, _) in NON_DEFAULT.items():
        assert getattr(want, k) != getattr(PretrainOptions(), k), k  # really non-default
        assert type(getattr(seen["options"], k)) is type(v), k

    # no flags: the dataclass defaults
    seen.clear()
    assert main(BASE) == 0
    assert seen["options"] == PretrainOptions()


def test_alias_flags_and_choices(monkeypatch):
    p = argparse.ArgumentParser()
    add_option_flags(p, PretrainOptions)
    parse = lambda *a: options_from_args(PretrainOptions, p.parse_args(list(a)))  # noqa: E731
    assert parse("--distributed", "ddp").distributed == "ddp"
    assert parse("--precision", "fp32").precision == "fp32"
    assert parse("--tensorboard", "on").tensorboard is True
    assert parse("--no-resume").resume is False
    for bad in (["--ddp", "--fsdp"], ["--fsdp", "--distributed", "ddp"], ["--precision", "fp16"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        a: int = option(1, "documented")
        b: int = 2

    with pytest.raises(TypeError, match=r"Opts\.b: declare it with option"):
        add_option_flags(argparse.ArgumentParser(), Opts)
