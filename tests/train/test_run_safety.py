"""Training runs against hostile or damaged files and a second writer: a planted pickle payload
in state.pt, checkpoints of the older format, corrupt newest checkpoints, a full disk, a resume
of a finished run, and two processes on one run directory."""

import errno
import json
import os
import subprocess
import time

import numpy as np
import pytest
import torch
from train_helpers import FAST, PY, fast_cli_args, subprocess_env

from bulkformer.cli import main
from bulkformer.train import load_checkpoint, pretrain
from bulkformer.train.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    list_checkpoints,
)

OPTS = dict(FAST, steps=4, ckpt_every=1, keep_last=0, seed=2)


def strict_json(path):
    """JSON as the standard has it: NaN / Infinity are refused."""

    def bad(c):
        raise ValueError(f"{path}: non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=bad)


def weights(run):
    from safetensors.torch import load_file

    return load_file(run / "pretrained" / "model.safetensors")


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def drop_digest(ckpt_dir):
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    meta.pop("state_sha256")
    (ckpt_dir / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def ref(corpus64, tmp_path_factory):
    """The uninterrupted run every damaged one is compared with."""
    return pretrain(corpus64, tmp_path_factory.mktemp("ref") / "run", **OPTS)


def copy_run(ref, dest):
    import shutil

    shutil.copytree(ref.out, dest)
    return dest


class Payload:
    """Pickles to ``os.system("touch MARKER")``: runs when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- unsafe pickles
def test_planted_payload_in_state_is_refused_and_never_runs(ref, corpus64, tmp_path):
    run = copy_run(ref, tmp_path / "run")
    newest = list_checkpoints(run)[-1][1]
    marker = tmp_path / "payload-ran"
    state = torch.load(newest / "state.pt", weights_only=True)
    state["scheduler"] = Payload(marker)
    torch.save(state, newest / "state.pt")
    drop_digest(newest)  # an attacker rewrites meta.json too
    with pytest.raises(UnsafeCheckpointError, match=r"step-00000004/state\.pt: refused.*pickled"):
        pretrain(corpus64, run, resume=True, **dict(OPTS, steps=5, force=True))
    assert not marker.exists()
    # the CLI: one line, exit 1, still nothing run
    args = ["pretrain", "--corpus", str(corpus64.path), "--out", str(run), "--resume"]
    assert main(args + fast_cli_args(**OPTS)) == 1
    assert not marker.exists()


def test_older_format_is_refused_unless_trusted(ref, corpus64, tmp_path, capsys):
    """A state.pt of checkpoint format 1 (numpy RNG state as pickled arrays) is refused with a
    message saying what it is; --trust-checkpoint resumes it to the uninterrupted result."""
    run = copy_run(ref, tmp_path / "run")
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-00000004")
    newest = list_checkpoints(run)[-1][1]
    state = torch.load(newest / "state.pt", weights_only=True)
    n = state["rng"][0]["numpy"]
    key = n["key"].numpy().astype(np.uint32)
    state["rng"][0]["numpy"] = (n["bit_generator"], key, n["pos"], n["has_gauss"], n["gauss"])
    del state["format"]
    torch.save(state, newest / "state.pt")
    drop_digest(newest)
    args = ["pretrain", "--corpus", str(corpus64.path), "--out", str(run), "--resume"]
    args += fast_cli_args(**OPTS)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "older bulkformer" in err and "--trust-checkpoint" in err and "state.pt" in err
    assert main(args + ["--trust-checkpoint"]) == 0
    assert same_weights(weights(ref.out), weights(run))
    assert load_checkpoint(run)["format"] == 2  # the new checkpoint is of the safe format


# --------------------------------------------------------------------------- corrupt state
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(ref, corpus64, tmp_path, caplog):
    run = copy_run(ref, tmp_path / "run")
    newest = run / "checkpoints" / "step-00000004" / "state.pt"
    b = bytearray(newest.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 200):  # inside tensor data: still loads
        b[i] ^= 0xFF
    newest.write_bytes(bytes(b))
    # step 3, a truncated file without a recorded digest (an older meta.json)
    third = run / "checkpoints" / "step-00000003"
    (third / "state.pt").write_bytes((third / "state.pt").read_bytes()[:5000])
    drop_digest(third)
    with caplog.at_level("WARNING"):
        res = pretrain(corpus64, run, resume=True, **OPTS)
    assert "step-00000004/state.pt: corrupt (sha256" in caplog.text
    assert "step-00000003/state.pt: corrupt or truncated" in caplog.text
    assert "resuming from" in caplog.text and "step-00000002" in caplog.text
    assert res.steps == 4 and not res.already_finished
    assert same_weights(weights(ref.out), weights(run))  # steps 3 and 4 trained again
    assert load_checkpoint(run)["step"] == 4  # the damaged checkpoints were replaced


def test_no_valid_checkpoint_is_a_clear_error(ref, corpus64, tmp_path):
    run = copy_run(ref, tmp_path / "run")
    for _, p in list_checkpoints(run):
        (p / "state.pt").write_bytes(b"\0" * 100)
    with pytest.raises(CorruptCheckpointError, match="none of the 4 checkpoint"):
        pretrain(corpus64, run, resume=True, **OPTS)


# --------------------------------------------------------------------------- disk full
def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_one(
    corpus64, tmp_path, monkeypatch, capsys
):
    save = torch.save

    def full_disk(obj, f, *a, **k):
        name = str(getattr(f, "name", f))
        if "step-00000003" in name:
            f.write(b"\0" * 1000)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    args = ["pretrain", "--corpus", str(corpus64.path), "--out", str(run)]
    assert main(args + fast_cli_args(**OPTS)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "No space left on device" in err and ".tmp-step-00000003-" in err
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(run)["step"] == 2  # intact (its digest is checked)


# --------------------------------------------------------------------------- finished runs
def test_resuming_a_finished_run_changes_nothing(ref, corpus64, tmp_path, capsys):
    run = copy_run(ref, tmp_path / "run")
    files = ["pretrained/bulkformer.json", "metrics.csv", "run.json", "loss_curve.png"]
    files = [f for f in files if (run / f).exists()]
    before = {f: (run / f).read_bytes() for f in files}
    args = ["pretrain", "--corpus", str(corpus64.path), "--out", str(run), "--resume"]
    assert main(args + fast_cli_args(**OPTS)) == 0
    out = capsys.readouterr().out
    assert "already finished at step 4" in out and "nan" not in out.lower()
    assert {f: (run / f).read_bytes() for f in files} == before
    res = pretrain(corpus64, run, resume=True, **OPTS)
    assert res.already_finished and res.steps == 4
    assert (res.train_loss, res.val_mse, res.tokens_per_s) == (
        ref.train_loss,
        ref.val_mse,
        ref.tokens_per_s,
    )
    summary = strict_json(run / "pretrained" / "bulkformer.json")["training"]
    assert summary["tokens_per_s"] > 0 and np.isfinite(summary["train_loss"])


def test_finished_run_without_its_export_is_exported_again_in_valid_json(ref, corpus64, tmp_path):
    import shutil

    run = copy_run(ref, tmp_path / "run")
    shutil.rmtree(run / "pretrained")  # killed after the last checkpoint, before the export
    res = pretrain(corpus64, run, resume=True, **OPTS)
    assert res.already_finished and res.tokens_per_s is None
    summary = strict_json(run / "pretrained" / "bulkformer.json")["training"]
    assert summary["steps"] == 4 and summary["tokens_per_s"] is None
    assert summary["val_mse"] == pytest.approx(ref.val_mse, rel=1e-6)
    assert np.isfinite(summary["train_loss"])
    assert same_weights(weights(ref.out), weights(run))


# --------------------------------------------------------------------------- two writers
#: ``bulkformer`` whose torch.save sleeps after writing checkpoint 2 (holding .tmp-step-2)
SLOW_CHECKPOINT_2 = """
import sys, time, torch
from bulkformer.cli import main
save = torch.save
def slow_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if ".tmp-step-00000002-" in str(getattr(f, "name", f)):
        f.flush()
        time.sleep(120)
torch.save = slow_save
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_resume_of_a_live_run_is_refused_and_touches_nothing(corpus64, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--corpus", str(corpus64.path), "--out", str(run)]
    args += fast_cli_args(**OPTS)
    first = subprocess.Popen(
        [PY, "-c", SLOW_CHECKPOINT_2, *args], env=subprocess_env(), stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 120
        while not list((run / "checkpoints").glob(".tmp-step-00000002-*/state.pt")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.05)
        live = list((run / "checkpoints").glob(".tmp-step-*"))
        t0 = time.time()
        second = subprocess.run(
            [PY, "-m", "bulkformer.cli", *args, "--resume"],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "being written by another pretraining run" in err[0], err
        assert f"pid {first.pid}" in err[0]
        assert time.time() - t0 < 60  # at once, not after waiting for the first
        assert first.poll() is None
        assert list((run / "checkpoints").glob(".tmp-step-*")) == live  # not deleted
        assert [s for s, _ in list_checkpoints(run)] == [1]
    finally:
        first.kill()
        first.wait()
