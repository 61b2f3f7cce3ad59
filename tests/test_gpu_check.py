"""benches/gpu_check.py: the dry run (every case at toy sizes on CPU) passes, so the one-shot GPU
check cannot rot between GPU sessions; a failing case is recorded and the others still run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benches" / "gpu_check.py"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "BULKFORMER_GPU_CHECK_FAIL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_runs_every_case(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = rep["cases"]
    assert set(cases) == {"embedding", "sdpa", "train_step", "esm", "distributed"}
    for name, res in cases.items():
        assert res["status"] == "ok", (name, res.get("error"))
        assert any("skipped" not in row for row in res["rows"]), name
    emb = [row for row in cases["embedding"]["rows"] if "skipped" not in row]
    assert all(row["errors_within_2x_rule"] for row in emb)
    steps = [row for row in cases["train_step"]["rows"] if "tokens_per_s" in row]
    assert all(row["peak_bytes"] > 0 and row["plan_bytes"] > 0 for row in steps)
    dist = cases["distributed"]["rows"]
    assert {row["mode"] for row in dist} == {"ddp", "fsdp"}
    assert all(row["equal"] and row["world"] == 2 for row in dist)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| ddp | 2 | gloo |" in md and "**train_step** — ok" in md


def test_failing_case_is_recorded_and_the_rest_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--cases", "sdpa,esm", "--out", str(tmp_path)],
        env=_env(BULKFORMER_GPU_CHECK_FAIL="esm"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    cases = json.loads((tmp_path / "gpu_check.json").read_text())["cases"]
    assert cases["esm"]["status"] == "error" and "injected" in cases["esm"]["error"]
    assert cases["sdpa"]["status"] == "ok"
    assert "injected failure" in (tmp_path / "gpu_check.md").read_text()


def test_peak_flops_table():
    gc = _load()
    assert gc.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gc.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gc.peak_flops("NVIDIA H200") == 989e12
    assert gc.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gc.peak_flops("NVIDIA H100 NVL") is None
    assert gc.peak_flops("Tesla V100-SXM2-16GB") is None
    assert gc.peak_flops(None) is None
