"""Memory planner: estimates vs memory measured on CPU (PyTorch allocator events).

The per-block activation formula is checked exactly against the tensors autograd saves; the
whole-step estimate within 15 % of the measured peak of a real training step."""

import pytest
import torch

from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.encoder import Block
from bulkformer.train.plan import (
    GPU_MEMORY,
    fit_gpu,
    live_tensor_bytes,
    measure_peak_memory,
    measure_train_step,
    parse_memory,
    plan_memory,
    usable_memory,
)

SMALL = dict(n_genes=512, d_model=64, n_layers=2, n_heads=4, d_esm=32, context_hidden=32)


def _saved_bytes(module, *args, amp=False):
    """Bytes of the distinct storages autograd saves for backward during ``module(*args)``."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = (st.nbytes(), isinstance(t, torch.nn.Parameter) or t.is_leaf)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            module(*args)
    return seen


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_block_activation_formula_is_exact(amp):
    cfg = BulkFormerConfig(**{**SMALL, "d_model": 48, "n_heads": 6, "n_genes": 97})
    B = 3
    blk = Block(cfg)
    S = cfg.n_genes + 1  # the encoder runs the [SAMPLE] token and the G gene tokens
    x = torch.randn(B, S, cfg.d_model, dtype=torch.bfloat16 if amp else torch.float32)
    seen = _saved_bytes(blk, x.requires_grad_(True), amp=amp)
    weights = {p.untyped_storage().data_ptr() for p in blk.parameters()}
    acts = sum(n for k, (n, _) in seen.items() if k not in weights)
    if amp:  # bf16 weight copies made by autocast are accounted separately (weights16)
        d, m = cfg.d_model, cfg.mlp_width
        acts -= 2 * (3 * d * d + d * d + 2 * d * m)
    plan = plan_memory(cfg, micro_batch=B, precision="bf16" if amp else "fp32")
    per_block = plan.activations[f"encoder blocks × {cfg.n_layers}"] // cfg.n_layers
    assert acts == per_block


@pytest.mark.parametrize(
    "over,B,ckpt,precision",
    [
        ({}, 4, False, "fp32"),
        ({}, 4, True, "fp32"),
        ({"n_genes": 389, "d_model": 96, "n_heads": 6, "n_layers": 3}, 3, False, "fp32"),
        ({}, 3, False, "bf16"),
        # parameters (a wide context MLP) rather than activations dominate
        ({"n_genes": 2000, "d_model": 32, "n_heads": 2, "n_layers": 1, "context_hidden": 256},
         1, False, "fp32"),
        ({"n_genes": 2000, "d_model": 32, "n_heads": 2, "n_layers": 1, "context_hidden": 256},
         1, False, "bf16"),
        # the ablations: learned identity table, no context MLP, no [SAMPLE] token, no decoder
        ({"esm_identity": False, "context_mlp": False, "sample_token": False,
          "sample_weight": 0.0, "pooling": "mean"}, 4, False, "fp32"),
        ({"esm_identity": False, "context_mlp": False}, 3, True, "bf16"),
        ({"sample_decoder": "gene", "residual_head": False, "n_genes": 389}, 3, False, "bf16"),
    ],
    ids=["fp32", "fp32-ckpt", "fp32-odd", "bf16", "params-heavy", "params-heavy-bf16",
         "switches-off", "no-esm-no-ctx-ckpt-bf16", "gene-decoder-bf16"],
)  # fmt: skip
def test_plan_within_15_percent_of_measured_cpu_peak(over, B, ckpt, precision):
    cfg = BulkFormerConfig(**{**SMALL, **over})
    m = measure_train_step(cfg, micro_batch=B, precision=precision, checkpointing=ckpt)
    p = plan_memory(
        cfg, micro_batch=B, precision=precision, checkpointing=ckpt, adamw="single",
        embed_backend="torch",
    )  # fmt: skip
    err = p.peak / m["peak"] - 1
    # the requirement is 15 %; the estimate is within ~4 % today, so a drift past 7 % means a
    # term of the formula (transients, weight copies, ...) no longer matches the code
    assert abs(err) < 0.07, (p.summary(), m["peak"], err)
    assert m["n_params"] == p.n_params


def test_measure_peak_memory_cpu_counts_allocations():
    def fn():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)  # 8 MiB alive
        c = a + b  # 12 MiB alive: the peak
        del a, b, c
        return torch.ones(1 << 19)  # 2 MiB

    out, peak = measure_peak_memory(fn, "cpu")
    assert out.numel() == 1 << 19
    assert peak == 12 << 20


def test_checkpointing_and_fsdp_shrink_the_plan():
    base = dict(micro_batch=2, precision="bf16")
    off = plan_memory("base100m", **base)
    on = plan_memory("base100m", checkpointing=True, **base)
    fsdp = plan_memory("base100m", fsdp_world=4, **base)
    assert on.peak < off.peak / 3
    assert fsdp.params == pytest.approx(off.params / 4, rel=1e-6)
    assert fsdp.optimizer < off.optimizer and fsdp.peak < off.peak
    assert on.flops_hw > on.flops_model == off.flops_model


def test_plan_counts_and_flops_match_the_model():
    for cfg in (
        BulkFormerConfig.from_preset("tiny", n_genes=300),
        BulkFormerConfig(**{**SMALL, "bias": False, "mlp_ratio": 3.0}),
        BulkFormerConfig(**{**SMALL, "esm_identity": False, "context_mlp": False}),
        BulkFormerConfig(**{**SMALL, "sample_token": False, "sample_weight": 0.0}),
        BulkFormerConfig(**{**SMALL, "sample_decoder": "gene"}),
    ):
        model = BulkFormer(cfg)
        p = plan_memory(cfg, micro_batch=3, precision="fp32")
        assert p.n_params == model.num_parameters()
        assert p.params == 4 * model.num_parameters()
        assert p.flops_model == pytest.approx(model.flops_per_token() * 3 * cfg.n_genes, rel=1e-9)


def test_fit_gpu_gives_the_largest_micro_batch_that_fits():
    res = fit_gpu("base100m", "24GB")
    usable = usable_memory(24 << 30)
    assert res.usable == usable
    for o in res.options:
        if o["micro_batch"]:
            kw = dict(precision="bf16", checkpointing=o["checkpointing"])
            assert plan_memory("base100m", micro_batch=o["micro_batch"], **kw).peak <= usable
            assert plan_memory("base100m", micro_batch=o["micro_batch"] + 1, **kw).peak > usable
    big = fit_gpu("base100m", "141GB")
    assert big.best["micro_batch"] > res.best["micro_batch"] >= 1
    assert "recommended" in res.summary()


def test_fit_gpu_falls_back_to_fsdp_when_nothing_fits():
    cfg = BulkFormerConfig.from_preset(
        "base100m", n_layers=40
    )  # ~250M: weights, grads, AdamW ~4 GiB
    res = fit_gpu(cfg, "4GB")
    worlds = {o["fsdp_world"] for o in res.options}
    assert worlds != {1}
    assert res.best is None or res.best["fsdp_world"] > 1


def test_parse_memory():
    assert parse_memory("16GB") == GPU_MEMORY["16GB"] == 16 << 30
    assert parse_memory("141 GiB") == 141 << 30
    assert parse_memory("512MB") == 512 << 20
    assert parse_memory("24") == 24 << 30
    for bad in ("lots", "-3GB", "0GB"):
        with pytest.raises(ValueError, match="gpu-memory"):
            parse_memory(bad)


def test_live_tensor_bytes_counts_shared_storage_once():
    t = torch.zeros(1000)
    lin = torch.nn.Linear(10, 10)
    assert live_tensor_bytes(t, t[:10], [t]) == 4000
    assert live_tensor_bytes(lin) == 4 * 110


def test_pretrain_plan_cli(capsys, corpus64):
    from bulkformer.cli import main

    assert main(["pretrain", "--config", "base100m", "--plan", "--gpu-memory", "24GB",
                 "--batch-size", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    want = plan_memory("base100m", micro_batch=2).peak
    assert "PEAK per GPU" in out and f"{want / 2**30:.2f} GiB" in out
    best = fit_gpu("base100m", "24GB").best
    assert f"recommended: --bf16 --batch-size {best['micro_batch']}" in out
    # the gene count comes from the corpus
    assert main(["pretrain", "--corpus", str(corpus64.path), "--config", "tiny", "--plan",
                 "--batch-size", "3", "--precision", "fp32", "--checkpointing"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"{corpus64.n_genes:,} genes, micro-batch 3, fp32, checkpointing on" in out
    assert main(["pretrain", "--config", "tiny"]) == 1
    assert "--corpus and --out are required" in capsys.readouterr().err
