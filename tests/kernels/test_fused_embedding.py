"""Fused input embedding: Triton kernel (interpreter on CPU) vs the PyTorch reference.

Tolerance rule (flash-attention): the fused error is at most 2x the error of the plain PyTorch
reference in the same precision, both measured against the float64 reference, plus a small atol.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bulkformer.model._kernels import import_kernel

fe = import_kernel("fused_embedding")
needs_triton = pytest.mark.skipif(
    not (fe.HAS_TRITON and (torch.cuda.is_available() or fe._interpreted())),
    reason="needs triton on CUDA or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, G, d, dtype, *, seed=0, hide_frac=0.2):
    """Random op inputs; x and e_mask stay fp32 (as under autocast), wesm/context in dtype."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(B, G, generator=g)
    hide = torch.rand(B, G, generator=g) < hide_frac
    hide[:, 0] = True  # a hidden and an observed gene in every sample, even at G small
    hide[:, -1] = False
    wesm = torch.randn(G, d, generator=g).to(dtype)
    context = torch.randn(B, d, generator=g).to(dtype)
    e_mask = torch.randn(d, generator=g)
    dout = torch.randn(B, G, d, generator=g).to(dtype)
    to = dict(device=DEVICE)
    return [t.to(**to) for t in (x, hide, wesm, context, e_mask, dout)]


def _run(fn, x, hide, wesm, context, e_mask, dout, **kw):
    """Forward and the gradients of wesm, context, e_mask for upstream gradient dout."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (wesm, context, e_mask)]
    out = fn(x, hide, *leaves, **kw)
    out.backward(dout.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def _fp64(ts):
    return [t.double() if torch.is_floating_point(t) else t for t in ts]


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


# --------------------------------------------------------------------------- REE
@pytest.mark.parametrize("d,scale", [(6, 4.0), (64, 4.0), (96, 2.5)])
def test_ree_matches_formula_loop(d, scale, rng):
    x = rng.normal(scale=3.0, size=(4, 7))
    want = np.empty(x.shape + (d,))
    for i in range(d // 2):
        f = 10.0 ** (scale * i / d)
        want[..., i] = np.cos(x / f)
        want[..., d // 2 + i] = np.sin(x / f)
    got = fe.ree(torch.from_numpy(x), d, scale).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_ree_frequencies_equal_bulkformer_theta():
    d = 128  # BulkFormer: theta_i = 100 ** (-2 i / d); ours with s = 4: 1 / f_i = 10 ** (-4 i / d)
    theta = 100.0 ** (-2 * np.arange(d // 2) / d)
    np.testing.assert_allclose(fe.ree_inv_frequencies(d, 4.0).numpy(), theta, rtol=1e-14)


def test_ree_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        fe.ree(torch.zeros(3), 5)


# --------------------------------------------------------------------------- kernel vs reference
SHAPES = [(1, 20010, 64), (3, 97, 96), (3, 97, 64), (1, 97, 96), (3, 20010, 96)]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]


@needs_triton
@pytest.mark.parametrize("dtype,atol", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,G,d", SHAPES, ids=[f"B{b}-G{g}-d{d}" for b, g, d in SHAPES])
def test_kernel_forward_and_grads_vs_reference(B, G, d, dtype, atol):
    ins = _inputs(B, G, d, dtype)
    ref64 = _run(fe.fused_embedding_ref, *_fp64(ins))
    ref = _run(fe.fused_embedding_ref, *ins)
    fused = _run(fe.fused_embedding, *ins, backend="triton")
    for name, f, r, o in zip(("out", "dwesm", "dcontext", "de_mask"), fused, ref, ref64):
        assert f.dtype == r.dtype and f.shape == r.shape, name
        scale = 1.0 + o.abs().max().item()
        err_f, err_r = _max_err(f, o), _max_err(r, o)
        assert err_f <= 2 * err_r + atol * scale, (name, err_f, err_r)


@needs_triton
def test_kernel_out_dtype_and_uint8_hide():
    x, hide, wesm, context, e_mask, _ = _inputs(2, 97, 64, torch.float32)
    got = fe.fused_embedding(
        x, hide.to(torch.uint8), wesm, context, e_mask, out_dtype=torch.bfloat16, backend="triton"
    )
    want = fe.fused_embedding_ref(x, hide, wesm, context, e_mask, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)  # bf16 defaults: rtol 1.6e-2 (1-ulp differences)


@needs_triton
def test_kernel_gives_no_gradient_to_x():
    x, hide, wesm, context, e_mask, _ = _inputs(2, 9, 8, torch.float32)
    x.requires_grad_(True)
    wesm.requires_grad_(True)
    fe.fused_embedding(x, hide, wesm, context, e_mask, backend="triton").sum().backward()
    assert x.grad is None and wesm.grad is not None


def test_gradcheck_reference():
    x, hide, wesm, context, e_mask, _ = _fp64(_inputs(2, 5, 6, torch.float32))
    args = [t.requires_grad_(True) for t in (x, wesm, context, e_mask)]
    assert torch.autograd.gradcheck(
        lambda x, w, c, m: fe.fused_embedding_ref(x, hide, w, c, m), args
    )


@needs_triton
def test_gradcheck_triton():
    x, hide, wesm, context, e_mask, _ = _fp64(_inputs(2, 5, 6, torch.float32))
    args = [t.requires_grad_(True) for t in (wesm, context, e_mask)]
    assert torch.autograd.gradcheck(
        lambda w, c, m: fe.fused_embedding(x, hide, w, c, m, backend="triton"), args
    )


# --------------------------------------------------------------------------- launcher checks
@needs_triton
@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.__setitem__(2, a[2][:, :5]), "contiguous"),
        (lambda a: a.__setitem__(2, torch.zeros(8, 5)), "even"),
        (lambda a: a.__setitem__(2, torch.zeros(7, 6)), r"G = 8 genes"),
        (lambda a: a.__setitem__(3, torch.zeros(3, 6)), r"context must be \(B, d\)"),
        (lambda a: a.__setitem__(4, torch.zeros(5)), r"e_mask must be \(6,\)"),
        (lambda a: a.__setitem__(1, torch.zeros(2, 8)), "hide must be bool"),
        (lambda a: a.__setitem__(0, torch.zeros(16)), r"x must be \(B, G\)"),
        (lambda a: a.__setitem__(2, torch.zeros(8, 6, dtype=torch.int32)), "floating"),
    ],
)
def test_launcher_rejects_bad_inputs(change, match):
    args = [torch.zeros(2, 8), torch.zeros(2, 8, dtype=torch.bool), torch.zeros(8, 6),
            torch.zeros(2, 6), torch.zeros(6)]  # fmt: skip
    change(args)
    with pytest.raises((ValueError, TypeError), match=match):
        fe.fused_embedding_fwd(*args)


def test_backend_resolution():
    assert fe.resolve_backend("auto", "cpu") == "torch"
    assert fe.resolve_backend("torch", "cuda") == "torch"
    if fe.HAS_TRITON:
        assert fe.resolve_backend("auto", "cuda") == "triton"
    assert fe.set_default_backend("triton") == "auto"
    try:
        assert fe.resolve_backend("auto", "cpu") == "triton"
        assert fe.resolve_backend("torch", "cpu") == "torch"  # explicit choices win
    finally:
        assert fe.set_default_backend("auto") == "triton"
    assert fe.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="must be one of"):
        fe.set_default_backend("cuda")
    with pytest.raises(ValueError, match="must be one of"):
        fe.resolve_backend("fast", "cpu")


def test_reference_values_by_hand():
    # B=1, G=2, d=2: REE(x) = [cos x, sin x]; gene 1 hidden → e_mask
    x = torch.tensor([[0.5, 9.0]], dtype=torch.float64)
    hide = torch.tensor([[False, True]])
    wesm = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    ctx = torch.tensor([[10.0, 20.0]], dtype=torch.float64)
    e_mask = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    out = fe.fused_embedding_ref(x, hide, wesm, ctx, e_mask)
    want = [[[11 + math.cos(0.5), 22 + math.sin(0.5)], [12.0, 22.0]]]
    torch.testing.assert_close(out, torch.tensor(want, dtype=torch.float64))


# --------------------------------------------------------------------------- GPU compile (no GPU)
_AOT = r"""
import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bulkformer.model._kernels import import_kernel

fe = import_kernel("fused_embedding")
const = dict(ACC=tl.float32, BLOCK_G=32, BLOCK_D=64)
i32 = dict(G="i32", D="i32")
fwd = dict(x_ptr="*fp32", hide_ptr="*u8", wesm_ptr="*bf16", ctx_ptr="*bf16", emask_ptr="*fp32",
           invf_ptr="*fp32", out_ptr="*bf16", **i32, HALF="i32")
bwd = dict(dout_ptr="*bf16", hide_ptr="*u8", dwesm_ptr="*bf16", dctx_part_ptr="*fp32",
           dmask_part_ptr="*fp32", B="i32", **i32, NGB="i32")
for kernel, sig in ((fe._embed_fwd_kernel, fwd), (fe._embed_bwd_kernel, bwd)):
    sig = {**sig, **{k: "constexpr" for k in const}}
    out = triton.compile(ASTSource(kernel, sig, constexprs=const), target=GPUTarget("cuda", 90, 32))
    assert out.asm["cubin"], kernel
print("ok")
"""


@pytest.mark.skipif(not fe.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_cuda_sm90():
    """Compile both kernels to an sm_90 cubin without a GPU: catches what the interpreter does
    not (types, constexpr use, loop-carried pointers) on machines without CUDA."""
    pytest.importorskip("triton.backends.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True)
    if r.returncode and "ptxas" in r.stderr and "not found" in r.stderr:
        pytest.skip("ptxas not available")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
