"""Hostile-but-realistic trials of the training and model side (issue 12), as a table.

For each category a few trials are run on a tiny pretraining run of the bundled demo corpus
(64 genes) and each outcome is classified:

- clear error: a ValueError/OSError (what the CLI prints as one line) naming the file;
- unclear error: such an error that does not name the file;
- crash: any other exception (a traceback in the CLI);
- silent wrong result: no error, but a wrong result (a planted payload ran, a corrupt file
  loaded, a summary rewritten, NaN written into JSON, a class 'nan');
- data loss: the last good checkpoint (or a live run's files) changed or went missing.

A trial that is expected to succeed (a fallback, a finished-run resume) counts as handled when
its result is right. Usage::

    PYTHONPATH=. python scripts/trust_trials_train.py [--work DIR]
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bulkformer._io import sha256_file
from bulkformer.train import pretrain
from bulkformer.train.checkpoint import list_checkpoints, load_checkpoint

OPTS = dict(
    steps=3,
    ckpt_every=1,
    keep_last=0,
    batch_size=4,
    lr=1e-3,
    warmup=1,
    val_every=0,
    log_every=1,
    progress=False,
    tensorboard=False,
    threads=1,
    workers=1,
)
ROWS: dict[str, list[str]] = {}
KINDS = ("clear", "unclear", "crash", "silent", "loss")


def record(category, kind, note=""):
    ROWS.setdefault(category, []).append(kind)
    print(f"  {category:20s} {kind:8s} {note}", flush=True)


def classify_error(e: BaseException, name: str) -> str:
    if not isinstance(e, (ValueError, OSError)):
        return "crash"
    return "clear" if name in str(e) and len(str(e).splitlines()) == 1 else "unclear"


def digests(run: Path) -> dict:
    return {
        str(p.relative_to(run)): sha256_file(p)
        for p in sorted((run / "checkpoints").rglob("*"))
        if p.is_file() and ".tmp-" not in str(p)  # the live writer's file may still grow
    }


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def corpus(work: Path):
    from bulkformer.data.archs4 import ARCHS4Source
    from bulkformer.data.corpus import build_corpus
    from bulkformer.data.demo import demo_path
    from bulkformer.data.derive import derive_corpus

    full = build_corpus(ARCHS4Source(demo_path()), work / "demo", min_nonzero=9000, progress=False)
    return derive_corpus(full, work / "g64", n_genes=64)


def trials_unsafe(c, ref, work):
    for i, where in enumerate(("scheduler", "rng", "optimizer", "whole")):
        run = Path(shutil.copytree(ref, work / f"unsafe{i}"))
        newest = list_checkpoints(run)[-1][1]
        marker = work / f"ran{i}"
        state = torch.load(newest / "state.pt", weights_only=True)
        state = Payload(marker) if where == "whole" else {**state, where: Payload(marker)}
        torch.save(state, newest / "state.pt")
        meta = json.loads((newest / "meta.json").read_text())
        meta["state_sha256"] = sha256_file(newest / "state.pt")  # the attacker fixes it up
        (newest / "meta.json").write_text(json.dumps(meta))
        try:
            pretrain(c, run, resume=True, **OPTS)
            kind = "silent"
        except Exception as e:
            kind = classify_error(e, "state.pt")
        record("unsafe pickle", "silent" if marker.exists() else kind, where)


def trials_corrupt_weights(c, ref, work):
    from bulkformer.model.pretrained import load_pretrained

    for i, (name, how) in enumerate(
        [("model.safetensors", s) for s in ("flip0", "flip1", "flip2", "truncate")]
        + [("genes.tsv", "flip0"), ("stats.npz", "flip0"), ("config.json", "flip0")]
    ):
        d = Path(shutil.copytree(ref / "pretrained", work / f"weights{i}"))
        f = d / name
        b = bytearray(f.read_bytes())
        if how == "truncate":
            b = b[: len(b) // 3]
        else:
            rng = np.random.default_rng(int(how[-1]))
            lo = len(b) // 2 if name == "model.safetensors" else len(b) - 8
            for j in rng.choice(np.arange(lo, len(b)), min(200, len(b) - lo), replace=False):
                b[j] ^= 0x20
        f.write_bytes(bytes(b))
        try:
            load_pretrained(d)
            record("corrupt weights", "silent", f"{name} {how}")
        except Exception as e:
            record("corrupt weights", classify_error(e, name), f"{name} {how}")


def trials_finished(c, ref, work):
    for i, drop_export in enumerate((False, True)):
        run = Path(shutil.copytree(ref, work / f"finished{i}"))
        if drop_export:
            shutil.rmtree(run / "pretrained")
        before = {f: (run / f).read_bytes() for f in ("metrics.csv", "run.json")}
        try:
            res = pretrain(c, run, resume=True, **OPTS)
        except Exception as e:
            record("finished-run resume", classify_error(e, str(run)))
            continue
        text = (run / "pretrained" / "bulkformer.json").read_text()
        summary = json.loads(text, parse_constant=lambda x: (_ for _ in ()).throw(ValueError(x)))
        summary = summary["training"]
        ok = (
            res.already_finished
            and summary["steps"] == OPTS["steps"]
            and summary["train_loss"] is not None
            and summary["val_mse"] is not None
            and {f: (run / f).read_bytes() for f in before} == before
        )
        record("finished-run resume", "clear" if ok else "silent", f"export dropped={drop_export}")


SLOW = """
import sys, time, torch
from bulkformer.cli import main
save = torch.save
def slow(obj, f, *a, **k):
    save(obj, f, *a, **k)
    if ".tmp-step-00000002-" in str(getattr(f, "name", f)):
        f.flush(); time.sleep(120)
torch.save = slow
sys.exit(main(sys.argv[1:]))
"""


def cli_args(c, run):
    args = ["pretrain", "--corpus", str(c.path), "--out", str(run), "--no-progress"]
    for k, v in OPTS.items():
        if k == "progress":
            continue
        v = {False: "off"}.get(v, v) if k == "tensorboard" else v
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def trials_concurrent(c, work):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for i, extra in enumerate((["--resume"], ["--force"], ["--resume", "--force"])):
        run = work / f"live{i}"
        first = subprocess.Popen(
            [sys.executable, "-c", SLOW, *cli_args(c, run)], env=env, stderr=subprocess.PIPE
        )
        try:
            while not list((run / "checkpoints").glob(".tmp-step-00000002-*/state.pt")):
                if first.poll() is not None:
                    raise RuntimeError(first.stderr.read().decode()[-2000:])
                time.sleep(0.05)
            before = sorted(p.name for p in (run / "checkpoints").iterdir())
            snap = digests(run)
            second = subprocess.run(
                [sys.executable, "-m", "bulkformer.cli", *cli_args(c, run), *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            lost = sorted(p.name for p in (run / "checkpoints").iterdir()) != before or any(
                digests(run).get(k) != v for k, v in snap.items()
            )
            err = second.stderr.strip().splitlines()
            if lost:
                kind = "loss"
            elif second.returncode == 0:
                kind = "silent"
            elif "Traceback" in second.stderr:
                kind = "crash"
            else:
                kind = "clear" if len(err) == 1 and str(run) in err[0] else "unclear"
            record("concurrent resume", kind, " ".join(extra))
        finally:
            first.kill()
            first.wait()


def trials_corrupt_state(c, ref, work):
    cases = ["flip0", "flip1", "truncate", "zeros", "meta-garbage", "all"]
    for i, how in enumerate(cases):
        run = Path(shutil.copytree(ref, work / f"state{i}"))
        targets = (
            [p for _, p in list_checkpoints(run)]
            if how == "all"
            else [list_checkpoints(run)[-1][1]]
        )
        for t in targets:
            f = t / "state.pt"
            b = bytearray(f.read_bytes())
            if how.startswith("flip"):
                rng = np.random.default_rng(int(how[-1]))
                for j in rng.choice(len(b), 200, replace=False):
                    b[j] ^= 0x41
            elif how == "truncate":
                b = b[: len(b) // 2]
            elif how == "zeros" or how == "all":
                b = bytearray(len(b))
            if how == "meta-garbage":
                (t / "meta.json").write_text("{not json")
                b = b[: len(b) // 2]  # and a truncated state without a readable digest
            f.write_bytes(bytes(b))
        try:
            res = pretrain(c, run, resume=True, **OPTS)
            st = load_checkpoint(run)
            ok = how != "all" and res.steps == OPTS["steps"] and st["step"] == OPTS["steps"]
            record("corrupt state", "clear" if ok else "silent", f"{how}: fell back")
        except Exception as e:
            kind = classify_error(e, "state.pt")
            record("corrupt state", kind if how == "all" else "unclear", how)


def trials_disk_full(c, work):
    from bulkformer.model import bulkformer as bfmod

    save = torch.save
    cases = ("state.pt", "meta.json", "export")
    real_open = open
    for i, where in enumerate(cases):
        run = work / f"full{i}"
        restore = []

        def fail(*_):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        if where == "state.pt":

            def bad_save(obj, f, *a, **k):
                if "step-00000002" in str(getattr(f, "name", f)):
                    f.write(b"\0" * 512)
                    fail()
                return save(obj, f, *a, **k)

            torch.save = bad_save
            restore.append(lambda: setattr(torch, "save", save))
        elif where == "meta.json":
            import builtins

            def bad_open(file, mode="r", *a, **k):
                if str(file).endswith("meta.json") and "step-00000002" in str(file) and "w" in mode:
                    fail()
                return real_open(file, mode, *a, **k)  # noqa: B023 (used in this iteration)

            builtins.open = bad_open
            restore.append(lambda o=real_open: setattr(builtins, "open", o))
        else:
            orig = bfmod.BulkFormer.save_pretrained

            def bad_export(self, d, *a, **k):
                fail()

            bfmod.BulkFormer.save_pretrained = bad_export
            restore.append(lambda o=orig: setattr(bfmod.BulkFormer, "save_pretrained", o))
        try:
            pretrain(c, run, **OPTS)
            kind = "silent"
        except Exception as e:
            kind = classify_error(e, str(run))
            if "No space left" not in str(e):
                kind = "unclear" if kind == "clear" else kind
        finally:
            for r in restore:
                r()
        good = list_checkpoints(run)
        try:
            intact = bool(good) and load_checkpoint(run)["step"] == good[-1][0]
        except Exception:
            intact = False
        leftovers = list((run / "checkpoints").glob(".tmp-*")) + list(run.parent.glob("*.tmp-*"))
        leftovers += list(run.glob("pretrained.tmp-*"))
        record("disk full", kind if intact and not leftovers else "loss", where)


def trials_nan_labels():
    from bulkformer.eval import linear_probe, make_folds

    X = np.random.default_rng(0).normal(size=(30, 4))
    for what in (np.nan, None, "", float("nan")):
        y = np.array(["a", "b"] * 15, dtype=object)
        y[4] = what
        try:
            make_folds(y, n_splits=3)
            linear_probe(X, y, make_folds(y, n_splits=3))
            record("NaN labels", "silent", repr(what))
        except ValueError as e:
            record("NaN labels", "clear" if "no label" in str(e) else "unclear", repr(what))
        except Exception:
            record("NaN labels", "crash", repr(what))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="trust-trials-"))
    work.mkdir(parents=True, exist_ok=True)
    c = corpus(work)
    ref = pretrain(c, work / "ref", **OPTS).out
    trials_unsafe(c, ref, work)
    trials_corrupt_weights(c, ref, work)
    trials_finished(c, ref, work)
    trials_concurrent(c, work)
    trials_corrupt_state(c, ref, work)
    trials_disk_full(c, work)
    trials_nan_labels()
    print()
    print(
        "| category | trials | clear errors | unclear errors | crashes | silent wrong | data loss |"
    )
    print("|---|---|---|---|---|---|---|")
    for cat, kinds in ROWS.items():
        n = [kinds.count(k) for k in KINDS]
        print(f"| {cat} | {len(kinds)} | " + " | ".join(map(str, n)) + " |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = sum(k != "clear" for kinds in ROWS.values() for k in kinds)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
