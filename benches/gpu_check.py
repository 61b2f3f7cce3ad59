"""One-shot GPU check: every GPU path of bulkformer measured in one command (≤ 8 min on an H100).

Run on a GPU machine, from the repository root (the first line builds and installs the package
without touching the network; ``fair-esm`` must be installed or carried as a wheel for the ESM2
case, every other case needs only torch and Triton)::

    python benches/gpu_check.py --install --out "$OUT"

With fair-esm carried as a wheel in ``.whl/`` (see benches/RESULTS.md), the whole device
command is::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1; set -o pipefail; \
      python3 benches/gpu_check.py --install --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"

``--install`` runs ``pip install --no-deps --no-build-isolation .`` (no network); when it fails
the checks run from the source tree instead (the C++ engine is not needed here) and the JSON
says so. ``--cases a,b`` reruns some cases only.

and on any CPU (CI runs this through ``tests/test_gpu_check.py``; toy sizes, Triton interpreted,
gloo instead of NCCL)::

    python benches/gpu_check.py --dry-run --out /tmp/gc

Cases, each in its own subprocess (a CUDA error or a hang cannot take the others down) with a
time budget; sizes left when a case is over its budget are skipped and recorded as such:

``embedding``   Triton fused embedding vs the PyTorch reference, forward and forward+backward:
                max error under the 2×-PyTorch-error rule of tests/kernels, GB/s vs the device's
                measured copy bandwidth, peak memory vs the reference. B=8, G=20,010,
                d ∈ {256, 512, 768}, fp32 and bf16.
``sdpa``        SDPA flash, cuDNN and memory-efficient backends, forced one at a time, at
                S=20,010, head dim 64 and 128: TFLOP/s forward and forward+backward
                (flash-attention's count: forward 4·B·S²·H·Dh, backward 2.5 × forward).
``train_step``  bf16 ``base100m`` pretraining steps at 20,010 genes: micro-batch 1/2/4,
                activation checkpointing off/on, torch.compile off/on, then the best eager
                setting under each SDPA backend: tokens/s, MFU vs the GPU's dense bf16 peak,
                peak memory, and the memory planner's estimate vs that peak.
``esm``         ESM2-650M-shaped random model (33 layers, d 1280, 20 heads): residues/s of
                bulkformer.esm.ProteinEmbedder vs the naive one-protein loop.
``distributed`` DDP and FSDP2 over NCCL on the visible GPUs (world size 1 is fine): loss and
                weights after 3 AdamW steps equal to one process with the whole batch.

Output: ``gpu_check.json`` (everything, errors with their traceback tail) and ``gpu_check.md``
(Markdown rows for benches/RESULTS.md) in ``--out`` (default ``$OUT`` if set, else the current
directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CASES = ("embedding", "sdpa", "train_step", "esm", "distributed")
#: seconds per case on the GPU (the whole run, install included, must stay under 8 minutes)
BUDGETS = {"embedding": 45, "sdpa": 35, "train_step": 170, "esm": 50, "distributed": 50}
DRY_BUDGETS = {"embedding": 20, "sdpa": 10, "train_step": 25, "esm": 15, "distributed": 30}
GRACE = 30  # seconds past its budget before a case's process is killed
DRY_GRACE = 300  # the same in the dry run: a loaded CI machine is slow, only a hang is killed
COMPILE_S = 60  # seconds a torch.compile'd base100m step is given before it is tried
#: dense bf16 peak FLOP/s by GPU model (without sparsity)
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))


def peak_flops(name: str | None) -> float | None:
    """Dense bf16 peak of a GPU from its ``torch.cuda.get_device_name`` (None when unknown)."""
    if not name:
        return None
    n = name.replace("-", " ").upper()
    if "H100" in n and "NVL" in n:
        return None  # not in the table
    for key, value in PEAK_BF16:
        parts = key.upper().split()
        if all(p in n for p in parts):
            return value
    return None


# ====================================================================== helpers (in a case)
class Budget:
    """Seconds left for a case; ``over()`` once spent (remaining sizes are then skipped).

    ``save(rows)`` writes the rows so far to the case's result file, so a case killed at its
    hard limit still leaves what it measured."""

    def __init__(self, seconds: float, result: str | None = None) -> None:
        self.t0, self.seconds, self.result = time.perf_counter(), seconds, result

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def over(self, need: float = 0.0) -> bool:
        return self.left() <= need

    def save(self, rows: list) -> None:
        if self.result:
            tmp = self.result + ".tmp"
            Path(tmp).write_text(json.dumps({"status": "partial", "rows": rows}, default=str))
            os.replace(tmp, self.result)


def _timer(dev, fn, reps: int = 10, warmup: int = 2, max_s: float = 5.0) -> float:
    """Median seconds of ``fn()`` (CUDA events on GPU, perf_counter on CPU: 1 warm-up, 2 reps)."""
    import torch

    if dev.type == "cpu":
        reps, warmup = 2, 1
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        if time.perf_counter() - start > max_s:
            break
    times.sort()
    return times[len(times) // 2]


def _peak(dev, fn) -> int:
    from bulkformer.train.plan import measure_peak_memory

    return measure_peak_memory(fn, dev)[1]


def _release(dev) -> None:
    """Drop compiled graphs and cached blocks between settings of a case."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _skip(rows: list, what: str, budget: Budget, need: float = 0.0) -> bool:
    """Record ``what`` as skipped when fewer than ``need`` seconds of the budget are left."""
    budget.save(rows)
    if budget.over(need):
        why = f"case over its {budget.seconds:.0f} s budget"
        if need:
            why = f"needs ~{need:.0f} s, {max(budget.left(), 0):.0f} s of the budget left"
        rows.append({"skipped": what, "reason": why})
        return True
    return False


# ====================================================================== cases
def _copy_bandwidth(dev, n: int) -> float:
    """Device copy bandwidth of ``n`` fp32 elements, bytes read + written per second."""
    import torch

    src = torch.empty(n, device=dev).normal_()
    dst = torch.empty_like(src)
    return 2 * n * 4 / _timer(dev, lambda: dst.copy_(src), reps=20)


def _embedding_one(fe, dev, B, G, d, dtype, atol) -> dict:
    """One (d, dtype) configuration of the embedding case."""
    import torch

    g = torch.Generator().manual_seed(d)
    x = (2 * torch.randn(B, G, generator=g)).to(dev)
    hide = (torch.rand(B, G, generator=g) < 0.2).to(dev)
    wesm = torch.randn(G, d, generator=g).to(dtype).to(dev)
    ctx = torch.randn(B, d, generator=g).to(dtype).to(dev)
    em = torch.randn(d, generator=g).to(dev)
    dout = torch.randn(B, G, d, generator=g).to(dtype).to(dev)
    ins = (x, hide, wesm, ctx, em)

    def run(fn, ins, dout, **kw):
        leaves = [t.detach().clone().requires_grad_(True) for t in ins[2:]]
        out = fn(ins[0], ins[1], *leaves, **kw)
        out.backward(dout.to(out.dtype))
        return [out.detach()] + [t.grad for t in leaves]

    f64 = [t.double() if t.is_floating_point() else t for t in ins]
    ref64 = run(fe.fused_embedding_ref, f64, dout.double())
    ref = run(fe.fused_embedding_ref, ins, dout)
    fused = run(fe.fused_embedding, ins, dout, backend="triton")
    errs, ok = {}, True
    for key, f, r, o in zip(("out", "dwesm", "dcontext", "de_mask"), fused, ref, ref64):
        scale = 1.0 + o.abs().max().item()
        ef = (f.double() - o).abs().max().item()
        er = (r.double() - o).abs().max().item()
        errs[key] = {"fused": ef, "reference": er}
        ok &= ef <= 2 * er + atol * scale
    del ref64, f64, ref, fused
    es = wesm.element_size()
    fwd_bytes = B * G * (4 + 1) + G * d * es + B * d * es + d * 4 + B * G * d * es
    bwd_bytes = B * G * d * es + B * G + G * d * es
    fw = lambda fn, **kw: fn(*ins, **kw)  # noqa: E731
    t_fused = _timer(dev, lambda: fw(fe.fused_embedding, backend="triton"))
    t_ref = _timer(dev, lambda: fw(fe.fused_embedding_ref))
    leaves = [t.detach().clone().requires_grad_(True) for t in ins[2:]]

    def step(fn, **kw):
        out = fn(x, hide, *leaves, **kw)
        out.backward(dout.to(out.dtype))

    t_fused_fb = _timer(dev, lambda: step(fe.fused_embedding, backend="triton"))
    t_ref_fb = _timer(dev, lambda: step(fe.fused_embedding_ref))
    for t in leaves:
        t.grad = None
    mem_fused = _peak(dev, lambda: step(fe.fused_embedding, backend="triton"))
    for t in leaves:
        t.grad = None
    mem_ref = _peak(dev, lambda: step(fe.fused_embedding_ref))
    gbs = fwd_bytes / t_fused / 1e9
    return {
        "d": d,
        "dtype": str(dtype).split(".")[-1],
        "B": B,
        "G": G,
        "errors_within_2x_rule": bool(ok),
        "errors": errs,
        "fwd_ms": {"fused": 1e3 * t_fused, "reference": 1e3 * t_ref},
        "fwd_bwd_ms": {"fused": 1e3 * t_fused_fb, "reference": 1e3 * t_ref_fb},
        "fwd_GBps": gbs,
        "fwd_bwd_GBps": (fwd_bytes + bwd_bytes) / t_fused_fb / 1e9,
        "peak_bytes": {"fused": mem_fused, "reference": mem_ref},
        "memory_ratio": mem_fused / max(mem_ref, 1),
        "speedup_fwd": t_ref / t_fused,
    }


def case_embedding(dev, dry: bool, budget: Budget) -> dict:
    """Fused (Triton) vs reference embedding: errors, GB/s vs copy bandwidth, peak memory."""
    import torch

    from bulkformer.model._kernels import import_kernel

    fe = import_kernel("fused_embedding")
    copy_bw = _copy_bandwidth(dev, (1 << 16) if dry else (1 << 28))  # 1 GiB of fp32 on a GPU
    B, G = (2, 197) if dry else (8, 20010)
    dims = (16, 48) if dry else (256, 512, 768)
    rows = []
    for d in dims:
        for dtype, atol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            name = f"d={d} {str(dtype).split('.')[-1]}"
            if _skip(rows, name, budget):
                continue
            row = _embedding_one(fe, dev, B, G, d, dtype, atol)
            row["fwd_frac_of_copy_bw"] = row["fwd_GBps"] * 1e9 / copy_bw
            rows.append(row)
    md = [
        "| d | dtype | 2× rule | fused fwd GB/s | of copy BW | fwd+bwd ms (fused / ref) | "
        "peak MiB (fused / ref) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            md.append(f"| {r['skipped']} | skipped | | | | | |")
            continue
        md.append(
            f"| {r['d']} | {r['dtype']} | {'ok' if r['errors_within_2x_rule'] else 'FAIL'} | "
            f"{r['fwd_GBps']:.0f} | {100 * r['fwd_frac_of_copy_bw']:.0f}% | "
            f"{r['fwd_bwd_ms']['fused']:.2f} / {r['fwd_bwd_ms']['reference']:.2f} | "
            f"{r['peak_bytes']['fused'] / 2**20:.2f} / {r['peak_bytes']['reference'] / 2**20:.2f} |"
        )
    ok = all(r.get("errors_within_2x_rule", True) for r in rows)
    return {"copy_GBps": copy_bw / 1e9, "rows": rows, "markdown": md, "ok": ok}


def _sdpa_backends(dev):
    from torch.nn.attention import SDPBackend

    names = (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"))
    names += (("efficient", "EFFICIENT_ATTENTION"),)
    return [(n, getattr(SDPBackend, a)) for n, a in names]


def _sdpa_one(dev, ran, q, k, v, do, flops_fwd, row, outs, name, dh) -> None:
    """Time one forced SDPA backend on (q, k, v); fill ``row``."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    try:
        with sdpa_kernel([ran]):
            fwd = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731

            def fb():
                F.scaled_dot_product_attention(q, k, v).backward(do)

            with torch.no_grad():
                outs[(name, dh)] = fwd().float()
            t_f = _timer(dev, lambda: torch.no_grad()(fwd)(), reps=10)
            t_fb = _timer(dev, fb, reps=10)
            q.grad = k.grad = v.grad = None
        row.update(
            fwd_ms=1e3 * t_f,
            fwd_bwd_ms=1e3 * t_fb,
            fwd_TFLOPs=flops_fwd / t_f / 1e12,
            fwd_bwd_TFLOPs=3.5 * flops_fwd / t_fb / 1e12,
        )
        ref = outs.get(("flash", dh))
        if ref is not None:
            row["max_abs_diff_vs_flash"] = (outs[(name, dh)] - ref).abs().max().item()
    except Exception as e:  # a backend refusing these shapes is a result, not a crash
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"


def case_sdpa(dev, dry: bool, budget: Budget) -> dict:
    """Each SDPA backend forced alone: TFLOP/s forward and forward+backward, bf16."""
    import torch
    from torch.nn.attention import SDPBackend

    B, S, H = (1, 129, 2) if dry else (1, 20010, 16)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    rows, outs = [], {}
    for dh in (64, 128):
        g = torch.Generator(device=dev).manual_seed(dh)
        q, k, v = (
            torch.randn(B, H, S, dh, device=dev, dtype=dtype, generator=g).requires_grad_(True)
            for _ in range(3)
        )
        do = torch.randn(B, H, S, dh, device=dev, dtype=dtype, generator=g)
        flops_fwd = 4 * B * S * S * H * dh
        for name, backend in _sdpa_backends(dev):
            if _skip(rows, f"{name} head dim {dh}", budget):
                continue
            ran = backend
            if dev.type == "cpu" and name != "flash":
                ran = SDPBackend.MATH  # the CPU has only flash and math kernels
            row = {"backend": name, "head_dim": dh, "B": B, "S": S, "H": H}
            if ran is not backend:
                row["ran"] = "math (dry run on CPU)"
            _sdpa_one(dev, ran, q, k, v, do, flops_fwd, row, outs, name, dh)
            rows.append(row)
    md = [
        "| backend | head dim | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd ms |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r or "error" in r:
            md.append(f"| {r.get('backend', r.get('skipped'))} | {r.get('head_dim', '')} | "
                      f"{r.get('error', 'skipped')} | | |")  # fmt: skip
            continue
        md.append(
            f"| {r['backend']}{' (math)' if 'ran' in r else ''} | {r['head_dim']} | "
            f"{r['fwd_TFLOPs']:.1f} | {r['fwd_bwd_TFLOPs']:.1f} | {r['fwd_bwd_ms']:.2f} |"
        )
    return {"rows": rows, "markdown": md, "ok": any("fwd_TFLOPs" in r for r in rows)}


def case_train_step(dev, dry: bool, budget: Budget) -> dict:
    """bf16 base100m steps: tokens/s, MFU, peak memory, planner estimate vs measured."""
    import contextlib

    import torch
    from torch.nn.attention import sdpa_kernel

    from bulkformer.model import BulkFormerConfig
    from bulkformer.train.plan import format_bytes, measure_train_step, plan_memory

    if dry:
        cfg = BulkFormerConfig.from_preset(
            "base100m", n_genes=128, d_model=32, n_heads=2, n_layers=2, d_esm=16, context_hidden=32
        )
    else:
        cfg = BulkFormerConfig.from_preset("base100m", n_genes=20010)
    precision = "bf16"
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = peak_flops(gpu)
    mbs = (1, 2) if dry else (1, 2, 4)
    settings = [(mb, ck, False) for ck in (False, True) for mb in mbs]
    settings += [(mb, ck, True) for ck in (False, True) for mb in mbs]
    rows = []

    def one(mb, ck, comp, backend=None):
        ctx = sdpa_kernel([backend[1]]) if backend else contextlib.nullcontext()
        if backend and dev.type == "cpu" and backend[0] != "flash":
            from torch.nn.attention import SDPBackend

            ctx = sdpa_kernel([SDPBackend.MATH])
        with ctx:
            m = measure_train_step(
                cfg, micro_batch=mb, device=dev, precision=precision, checkpointing=ck,
                compile=comp, steps=3, timed_steps=1 if dry else 3,
            )  # fmt: skip
        plan = plan_memory(
            cfg, micro_batch=mb, precision=precision, checkpointing=ck,
            adamw="fused" if dev.type == "cuda" else "single", embed_backend="triton" if dev.type == "cuda" else "torch",
        )  # fmt: skip
        flops = m["flops_per_token"] * m["tokens_per_s"]
        row = {
            "micro_batch": mb,
            "checkpointing": ck,
            "compile": comp,
            "sdpa": backend[0] if backend else "auto",
            "tokens_per_s": m["tokens_per_s"],
            "step_s": m["seconds"],
            "model_TFLOPs": flops / 1e12,
            "mfu": flops / peak if peak else None,
            "peak_bytes": m["peak"],
            "plan_bytes": plan.peak,
            "plan_error": plan.peak / m["peak"] - 1,
            "loss": m["loss"],
        }
        _release(dev)
        return row

    def run(mb, ck, comp, name, backend=None):
        try:
            rows.append(one(mb, ck, comp, backend))
        except Exception as e:
            rows.append({"setting": name, "error": _tail(e)})
            _release(dev)

    for mb, ck, _ in [s for s in settings if not s[2]]:
        name = f"mb={mb} ckpt={'on' if ck else 'off'} compile=off"
        if not _skip(rows, name, budget):
            run(mb, ck, False, name)
    good = [r for r in rows if "tokens_per_s" in r]
    if good:  # the fastest eager setting once more under each SDPA backend, forced
        best = max(good, key=lambda r: r["tokens_per_s"])
        for backend in _sdpa_backends(dev)[: 1 if dry else 3]:
            name = f"best eager setting, sdpa={backend[0]}"
            if not _skip(rows, name, budget):
                run(best["micro_batch"], best["checkpointing"], False, name, backend)
    compiled = [s for s in settings if s[2]]
    if good:  # the best eager setting is compiled first
        key = (best["micro_batch"], best["checkpointing"], True)
        compiled = [key] + [s for s in compiled if s != key]
    for mb, ck, _ in compiled:
        name = f"mb={mb} ckpt={'on' if ck else 'off'} compile=on"
        if dry:  # inductor's CPU build takes minutes on a small CI machine
            rows.append({"skipped": name, "reason": "dry run: torch.compile runs on the GPU only"})
            continue
        if not _skip(rows, name, budget, need=COMPILE_S):  # a compile takes ~a minute
            run(mb, ck, True, name)
    md = [
        "| micro-batch | ckpt | compile | SDPA | tokens/s | MFU | peak | planner (err) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "tokens_per_s" not in r:
            md.append(f"| {r.get('skipped') or r.get('setting')} | | | | "
                      f"{'skipped' if 'skipped' in r else 'error'} | | | |")  # fmt: skip
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        md.append(
            f"| {r['micro_batch']} | {'on' if r['checkpointing'] else 'off'} | "
            f"{'on' if r['compile'] else 'off'} | {r['sdpa']} | {r['tokens_per_s']:,.0f} | {mfu} | "
            f"{format_bytes(r['peak_bytes'])} | {format_bytes(r['plan_bytes'])} "
            f"({100 * r['plan_error']:+.1f}%) |"
        )
    errs = [abs(r["plan_error"]) for r in rows if "plan_error" in r]
    mfus = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return {
        "best_mfu": max(mfus) if mfus else None,
        "gpu": gpu,
        "peak_flops": peak,
        "config": cfg.to_dict(),
        "rows": rows,
        "planner_max_abs_error": max(errs) if errs else None,
        "markdown": md,
        "ok": bool(errs),
    }


def case_esm(dev, dry: bool, budget: Budget) -> dict:
    """ProteinEmbedder vs the naive loop on an ESM2-650M-shaped random model."""
    import numpy as np
    import torch

    try:
        import esm
    except ImportError as e:
        raise RuntimeError(
            "fair-esm is not installed: carry its wheel (see benches/gpu_check.py)"
        ) from e
    sys.path.insert(0, str(HERE))
    from bench_esm import _naive, _proteins

    from bulkformer.esm import ProteinEmbedder

    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    shape = (2, 64, 4) if dry else (33, 1280, 20)
    model = esm.model.esm2.ESM2(*shape, alphabet=alphabet).eval().to(dev)
    seqs = _proteins(12 if dry else 200)
    n_res = sum(map(len, seqs))
    emb = ProteinEmbedder(
        model, alphabet, device=str(dev), progress=False, toks_per_batch=2048 if dry else 16384
    )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        t = time.perf_counter()
        r = fn()
        sync()
        return time.perf_counter() - t, r

    timed(lambda: emb.embed(seqs[:8]))  # warm-up
    t_fast, got = timed(lambda: emb.embed(seqs))
    t_naive, ref = timed(lambda: _naive(model, alphabet, seqs, str(dev)))
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    row = {
        "layers_dim_heads": shape,
        "proteins": len(seqs),
        "residues": n_res,
        "embedder_residues_per_s": n_res / t_fast,
        "naive_residues_per_s": n_res / t_naive,
        "speedup": t_naive / t_fast,
        "min_cosine_vs_naive": float(cos.min()),
        "precision": emb.precision,
        "toks_per_batch": emb.toks_per_batch,
    }
    md = [
        "| model | residues | embedder res/s | naive res/s | speed-up | min cos |",
        "|---|---|---|---|---|---|",
        f"| ESM2 {shape[0]}×{shape[1]} random | {n_res:,} | {row['embedder_residues_per_s']:,.0f} "
        f"| {row['naive_residues_per_s']:,.0f} | {row['speedup']:.2f}× | {cos.min():.5f} |",
    ]
    return {"rows": [row], "markdown": md, "ok": bool(cos.min() > 0.999)}


# ---------------------------------------------------------------------- distributed
DIST_STEPS = 3


def _dist_setup(dry: bool):
    import torch

    from bulkformer.model import BulkFormerConfig

    cfg = BulkFormerConfig.from_preset("small", n_genes=96 if dry else 2048, d_esm=32)
    b = 2  # samples per rank
    g = torch.Generator().manual_seed(1)
    return cfg, b, g


def _dist_batches(world: int, dry: bool):
    import torch

    cfg, b, g = _dist_setup(dry)
    xs = [torch.randn(world * b, cfg.n_genes, generator=g) for _ in range(DIST_STEPS)]
    ms = [torch.rand(world * b, cfg.n_genes, generator=g) < 0.15 for _ in range(DIST_STEPS)]
    return cfg, b, xs, ms


def _dist_train(model, opt, xs, ms, rows, world, dev):
    """3 AdamW steps with pretrain's loss (token + sample objective, ``pretrain_sse``) and its
    normalisation: this rank's SSE / global masked count × world (DDP/FSDP average the
    gradients); returns the global losses."""
    import torch.distributed as dist

    from bulkformer.train.objectives import pretrain_sse

    cfg = getattr(model, "module", model).config
    losses = []
    for x, m in zip(xs, ms):
        count = m.sum().double()
        x, m = x[rows].to(dev), m[rows].to(dev)
        out = model(x, masked=m)
        sse, _, _ = pretrain_sse(out, x, m, cfg.sample_weight, targets=cfg.sample_targets)
        (sse / count.to(dev) * world).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        s = sse.detach().double()
        if world > 1 or dist.is_initialized():
            dist.all_reduce(s)
        losses.append((s / count.to(dev)).item())
    return losses


def _dist_worker(rank: int, world: int, modes: list, port: int, dry: bool, out: str) -> None:
    """One rank: for each mode ("ddp", "fsdp") the same init, 3 steps, full state on rank 0."""
    import torch
    import torch.distributed as dist

    from bulkformer.model import BulkFormer
    from bulkformer.train.distributed import DistInfo, full_state_dicts, wrap_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available() and not dry
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    results = {}
    try:
        cfg, b, xs, ms = _dist_batches(world, dry)
        rows = torch.arange(rank * b, (rank + 1) * b)
        for mode in modes:
            try:
                torch.manual_seed(0)
                model = BulkFormer(cfg).to(dev)
                info = DistInfo(rank, world, rank, dev, False)
                if world > 1:  # the wrapping pretrain uses
                    wrapped, fsdp = wrap_model(model, info, mode)
                elif mode == "ddp":  # one GPU: wrap all the same (wrap_model would not)
                    from torch.nn.parallel import DistributedDataParallel as DDP

                    wrapped, fsdp = DDP(model, device_ids=[rank] if cuda else None), False
                else:
                    from torch.distributed.fsdp import fully_shard

                    for block in model.encoder.blocks:
                        fully_shard(block)
                    wrapped, fsdp = fully_shard(model), True
                opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
                losses = _dist_train(wrapped, opt, xs, ms, rows, world, dev)
                sd, _ = full_state_dicts(model, opt, info, fsdp)
                results[mode] = {"losses": losses, "state": sd}
            except Exception as e:  # recorded; the other mode still runs
                results[mode] = {"error": _tail(e)}
            dist.barrier()
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def case_distributed(dev, dry: bool, budget: Budget) -> dict:
    """DDP and FSDP2 (NCCL on GPUs, gloo in the dry run) vs one process, after 3 steps."""
    import socket

    import torch
    import torch.multiprocessing as mp

    from bulkformer.model import BulkFormer

    world = 2 if dry else max(1, torch.cuda.device_count())
    cfg, b, xs, ms = _dist_batches(world, dry)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    ref_model = BulkFormer(cfg).to(dev)
    opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-3)
    ref_losses = _dist_train(ref_model, opt, xs, ms, torch.arange(world * b), 1, dev)
    ref_sd = {k: v.detach().cpu() for k, v in ref_model.state_dict().items()}
    tol = 1e-4  # fp32 on both sides; the sums run in another order across ranks
    modes = ["ddp", "fsdp"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_dist_worker, args=(world, modes, port, dry, out), nprocs=world, join=True)
        results = torch.load(out, weights_only=False)
    rows = []
    for mode in modes:
        got = results[mode]
        row = {"mode": mode, "world": world, "steps": DIST_STEPS, "tolerance": tol}
        row["backend"] = "gloo" if dry or dev.type == "cpu" else "nccl"
        if "error" in got:
            row.update(error=got["error"], equal=False)
            rows.append(row)
            continue
        loss_diff = max(abs(a - c) / max(abs(c), 1e-12) for a, c in zip(got["losses"], ref_losses))
        w_diff = max(
            (got["state"][k].float() - v.float()).abs().max().item() for k, v in ref_sd.items()
        )
        row.update(
            losses=got["losses"],
            reference_losses=ref_losses,
            max_rel_loss_diff=loss_diff,
            max_abs_weight_diff=w_diff,
            equal=bool(loss_diff <= tol and w_diff <= tol),
        )
        rows.append(row)
    md = ["| mode | world | backend | max rel. loss diff | max abs. weight diff | equal (tol 1e-4) |",
          "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            md.append(f"| {r['mode']} | {r['world']} | {r['backend']} | error | | NO |")
            continue
        md.append(
            f"| {r['mode']} | {r['world']} | {r['backend']} | {r['max_rel_loss_diff']:.2e} | "
            f"{r['max_abs_weight_diff']:.2e} | {'yes' if r['equal'] else 'NO'} |"
        )
    return {"rows": rows, "markdown": md, "ok": all(r["equal"] for r in rows)}


# ====================================================================== driver
def _tail(e: BaseException, n: int = 2000) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))[-n:]


def run_case(name: str, dry: bool, budget_s: float, result: str) -> int:
    """Child process: run one case, write its result (or its error) as JSON to ``result``."""
    if os.environ.get("BULKFORMER_GPU_CHECK_FAIL") == name:  # tests: a case that breaks
        Path(result).write_text(json.dumps({"status": "error", "error": "injected failure"}))
        raise SystemExit(3)
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    if dry:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        res = globals()[f"case_{name}"](dev, dry, Budget(budget_s, result))
        res["status"] = "ok" if res.pop("ok", True) else "checked: FAILED"
    except Exception as e:
        res = {"status": "error", "error": _tail(e)}
    res["seconds"] = time.perf_counter() - t0
    import bulkformer

    res["bulkformer"] = str(Path(bulkformer.__file__).parent)  # installed, or the source tree
    Path(result).write_text(json.dumps(res, indent=1, default=str))
    return 0


def _environment() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
            info["gpu_memory"] = torch.cuda.get_device_properties(0).total_memory
            info["peak_bf16_flops"] = peak_flops(info["gpu"])
    except Exception as e:  # pragma: no cover
        info["torch_error"] = str(e)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _install() -> dict:
    """``pip install --no-deps --no-build-isolation .`` (no network needed), timed."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "."]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return {
        "command": " ".join(cmd[2:]),
        "returncode": r.returncode,
        "seconds": time.perf_counter() - t0,
        "output_tail": (r.stdout + r.stderr)[-2000:],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="toy sizes on CPU (CI)")
    p.add_argument("--out", default=os.environ.get("OUT") or ".", help="output directory")
    p.add_argument("--install", action="store_true", help="pip install the package first")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    p.add_argument("--time-limit", type=float, default=420, help="seconds for the whole run")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case:
        return run_case(a.case, a.dry_run, a.budget, a.result)

    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": a.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    env = dict(os.environ)
    if a.install:
        report["install"] = _install()
        print(f"install: rc {report['install']['returncode']} in "
              f"{report['install']['seconds']:.0f} s", flush=True)  # fmt: skip
    if not a.install or report["install"]["returncode"] != 0:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if a.dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    report["environment"] = _environment()
    budgets = DRY_BUDGETS if a.dry_run else BUDGETS
    grace = DRY_GRACE if a.dry_run else GRACE
    names = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        p.error(f"--cases: unknown case(s) {unknown}; known: {', '.join(CASES)}")
    report["cases"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            left = a.time_limit - (time.perf_counter() - t_start)
            if left < 10:
                report["cases"][name] = {"status": "skipped", "reason": "run over --time-limit"}
                continue
            budget = min(budgets[name], left - 5)
            result = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, __file__, "--case", name, "--budget", str(budget),
                   "--result", result] + (["--dry-run"] if a.dry_run else [])  # fmt: skip
            t0 = time.perf_counter()
            try:
                r = subprocess.run(
                    cmd, cwd=tmp, env=env, capture_output=True, text=True,
                    timeout=budget + grace,
                )  # fmt: skip
                if os.path.exists(result):
                    res = json.loads(Path(result).read_text())
                else:
                    res = {"status": "error", "error": f"exit {r.returncode}: {r.stderr[-2000:]}"}
            except subprocess.TimeoutExpired as e:
                err = (e.stderr or b"")[-2000:]
                err = err.decode(errors="replace") if isinstance(err, bytes) else err
                res = {"rows": []}
                if os.path.exists(result):  # what the case measured before it was killed
                    res = json.loads(Path(result).read_text())
                res.update(status="error", error=f"killed after {budget + grace:.0f} s: {err}")
            res["wall_s"] = time.perf_counter() - t0
            report["cases"][name] = res
            print(f"{name}: {res['status']} in {res['wall_s']:.0f} s", flush=True)
    report["total_s"] = time.perf_counter() - t_start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = _markdown(report)
    (out / "gpu_check.md").write_text(md)
    print(md)
    return 0


def _markdown(report: dict) -> str:
    env = report["environment"]
    head = (
        f"### GPU check{' (dry run, CPU toy sizes)' if report['dry_run'] else ''}: "
        f"{env.get('gpu', 'CPU')}, torch {env.get('torch')}, Triton {env.get('triton')}, "
        f"{report['total_s']:.0f} s in all"
    )
    parts = [head, ""]
    if "install" in report:
        i = report["install"]
        parts += [f"`pip {i['command']}`: rc {i['returncode']}, {i['seconds']:.0f} s", ""]
    for name, res in report["cases"].items():
        parts.append(f"**{name}** — {res['status']} ({res.get('wall_s', 0):.0f} s)")
        parts.append("")
        if res.get("markdown"):
            parts += res["markdown"]
        if res.get("error"):
            parts += ["```", res["error"].strip()[-800:], "```"]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
