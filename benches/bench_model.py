"""Benchmarks of the BulkFormer model: input-embedding kernel, encoder on CPU, GPU training step.

Run (benchmarks are disabled by the default ``addopts``, so enable them)::

    python -m pytest benches/bench_model.py --benchmark-enable -q -s
    python -m pytest benches/bench_model.py --benchmark-enable -k encoder   # CPU encoder only

Numbers land in pytest-benchmark's table and, per case, in ``extra_info`` (``--benchmark-json``):
GB/s, bandwidth fraction, peak memory, tokens/s, MFU. GPU cases skip without CUDA. Set
``BULKFORMER_PEAK_FLOPS`` to the device's dense bf16 peak for MFU (default 989e12, H100/H200 SXM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model._kernels import import_kernel

fe = import_kernel("fused_embedding")
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
PEAK_FLOPS = float(os.environ.get("BULKFORMER_PEAK_FLOPS", "989e12"))


def _embed_inputs(B, G, d, device, dtype):
    x = torch.randn(B, G, device=device)
    hide = torch.rand(B, G, device=device) < 0.15
    wesm = torch.randn(G, d, device=device, dtype=dtype, requires_grad=True)
    context = torch.randn(B, d, device=device, dtype=dtype, requires_grad=True)
    e_mask = torch.randn(d, device=device, requires_grad=True)
    dout = torch.randn(B, G, d, device=device, dtype=dtype)
    return x, hide, wesm, context, e_mask, dout


def _embed_step(provider, mode, x, hide, wesm, context, e_mask, dout):
    """One forward (or forward + backward) of the embedding op with the given provider."""
    if provider == "reference":
        out = fe.fused_embedding_ref(x, hide, wesm, context, e_mask)
    else:
        out = fe.fused_embedding(x, hide, wesm, context, e_mask, backend=provider)
    if mode == "fwd+bwd":
        torch.autograd.grad(out, (wesm, context, e_mask), dout)
    return out


def _embed_bytes(B, G, d, es, mode):
    """Minimum HBM traffic of the op: read Wesm, x, hide, ctx; write E (+ read dE, write dWesm)."""
    fwd = G * d * es + B * G * (4 + 1) + B * d * es + B * G * d * es
    bwd = B * G * d * es + G * d * es + B * d * es
    return fwd + (bwd if mode == "fwd+bwd" else 0)


def _copy_bandwidth(n_bytes=1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    import triton.testing

    a = torch.empty(n_bytes // 4, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a))
    return 2 * n_bytes / (ms * 1e-3)


# --------------------------------------------------------------------------- embedding on CPU
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["reference", "torch"])
@pytest.mark.parametrize("d", [64, 128])
def test_embedding_cpu(benchmark, provider, mode, d):
    """CPU numbers for the PyTorch path (B=8, G=20,010): the reference vs ``backend='torch'``
    through the functional dispatcher (same math; measures the dispatch overhead)."""
    B, G = 8, 20010
    args = _embed_inputs(B, G, d, "cpu", torch.float32)
    benchmark.pedantic(_embed_step, args=(provider, mode, *args), rounds=5, warmup_rounds=1)
    s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        GBps=_embed_bytes(B, G, d, 4, mode) / s / 1e9, tokens_per_s=B * G / s
    )


# --------------------------------------------------------------------------- embedding on GPU
@needs_cuda
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("d", [256, 512, 768])
def test_embedding_gpu(benchmark, provider, mode, dtype, d):
    """Kernel vs reference at B=8, G=20,010: median time (do_bench), GB/s against the measured
    copy bandwidth, and peak memory allocated by one step."""
    import triton.testing

    B, G = 8, 20010
    args = _embed_inputs(B, G, d, "cuda", dtype)
    step = lambda: _embed_step(provider, mode, *args)  # noqa: E731
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = triton.testing.do_bench(step)
    benchmark.pedantic(lambda: (step(), torch.cuda.synchronize()), rounds=20, warmup_rounds=2)
    es = torch.finfo(dtype).bits // 8
    gbps = _embed_bytes(B, G, d, es, mode) / (ms * 1e-3) / 1e9
    copy = _copy_bandwidth() / 1e9
    benchmark.extra_info.update(
        median_ms=ms, GBps=gbps, copy_GBps=copy, frac_of_copy=gbps / copy, peak_MiB=peak / 2**20
    )


# --------------------------------------------------------------------------- encoder on CPU
_MEASURE = r"""
import json, sys, time
import torch
from bulkformer.model import BulkFormer, BulkFormerConfig

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

G = int(sys.argv[1])
torch.manual_seed(0)
warm = BulkFormer(BulkFormerConfig.from_preset("tiny", n_genes=97))
warm(torch.randn(1, 97)).pred.sum().backward()
model = BulkFormer(BulkFormerConfig.from_preset("tiny", n_genes=G))
x, masked = torch.randn(1, G), torch.rand(1, G) < 0.15
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t = time.perf_counter()
model(x, masked=masked).pred[masked].square().mean().backward()
print(json.dumps(dict(seconds=time.perf_counter() - t, step_peak_bytes=status("VmHWM") - before,
                      peak_rss_bytes=status("VmHWM"))))
"""


def _peak_memory(G: int) -> dict:
    """Peak RSS of one fwd+bwd step in a fresh process (glibc mmap threshold 64 KiB so freed
    tensors leave the RSS; VmHWM reset right before the step)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(G)], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("G", [5000, 10000, 20010])
def test_encoder_cpu_fwd_bwd(benchmark, G):
    """Tiny preset (d=48, L=2), batch 1, forward + backward over G genes on CPU; extra_info has
    the step's peak RSS growth measured in a separate process."""
    torch.manual_seed(0)
    model = BulkFormer(BulkFormerConfig.from_preset("tiny", n_genes=G))
    x, masked = torch.randn(1, G), torch.rand(1, G) < 0.15

    def step():
        model.zero_grad(set_to_none=True)
        model(x, masked=masked).pred[masked].square().mean().backward()

    benchmark.pedantic(step, rounds=2, warmup_rounds=1)
    s = benchmark.stats.stats.median
    info = dict(tokens_per_s=G / s, model_GFLOPs_per_s=model.flops_per_token() * G / s / 1e9)
    if Path("/proc/self/clear_refs").exists():
        mem = _peak_memory(G)
        info.update(step_peak_MiB=mem["step_peak_bytes"] / 2**20)
        info.update(process_peak_MiB=mem["peak_rss_bytes"] / 2**20)
    benchmark.extra_info.update(info)


# --------------------------------------------------------------------------- GPU training step
@needs_cuda
@pytest.mark.parametrize("batch", [1, 4])
def test_train_step_base100m_bf16(benchmark, batch):
    """One AdamW step of the ~100M preset on all 20,010 genes, bf16 autocast, 15% masked MSE:
    tokens/s (B·G per step) and MFU against ``BULKFORMER_PEAK_FLOPS``."""
    torch.manual_seed(0)
    config = BulkFormerConfig.from_preset("base100m")
    model = BulkFormer(config).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    G = config.n_genes
    x = torch.randn(batch, G, device="cuda")
    masked = torch.rand(batch, G, device="cuda") < 0.15

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, masked=masked)
        loss = (out.pred - x)[masked].square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    for _ in range(2):
        step()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    n = 5
    for _ in range(n):
        step()
    s = (time.perf_counter() - t) / n
    benchmark.pedantic(step, rounds=3)
    tps = batch * G / s
    benchmark.extra_info.update(
        tokens_per_s=tps,
        mfu=model.estimate_mfu(tps, PEAK_FLOPS),
        peak_GiB=torch.cuda.max_memory_allocated() / 2**30,
        attn_backend=model.encoder.blocks[0].attn.last_backend,
        embed_backend=model.embedding.last_backend,
        n_params=model.num_parameters(),
    )
