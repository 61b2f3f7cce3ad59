"""ESM2 protein embedding throughput: bulkformer's embedder vs a naive per-protein loop.

Run::

    python -m pytest benches/bench_esm.py --benchmark-enable

``test_cpu_embedder_vs_naive`` embeds the same 200 proteins (lengths 30–1,000, log-normal
around 350) with a small randomly initialised ESM2 on CPU, both ways, alternating the two twice
times (the machine may be shared) and keeping each one's best time. ``extra_info`` records
residues/s of both and the speed-up (target 3×); the benchmark table times the embedder.

``test_cuda_650m`` needs CUDA; it uses the esm2_t33_650M_UR50D weights when fair-esm can load
them (hub cache or ``BULKFORMER_ESM2_650M=/path/esm2_t33_650M_UR50D.pt``), else a random model
of the same architecture (speed does not depend on the weights; ``extra_info["weights"]`` says
which).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
esm = pytest.importorskip("esm")

from bulkformer.esm import ProteinEmbedder, load_esm2  # noqa: E402

logger = logging.getLogger(__name__)

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
ROUNDS = 2


def _proteins(n: int = 200, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(np.log(350), 0.6, n).astype(int), 30, 1000)
    return ["".join(rng.choice(AA, k)) for k in lens]


def _naive(model, alphabet, seqs, device) -> np.ndarray:
    """The baseline: one protein per forward pass, input order, fair-esm's own forward."""
    conv = alphabet.get_batch_converter()
    n = model.num_layers
    out = []
    with torch.inference_mode():
        for s in seqs:
            _, _, toks = conv([("p", s)])
            rep = model(toks.to(device), repr_layers=[n])["representations"][n]
            out.append(rep[0, 1 : len(s) + 1].float().mean(0).cpu().numpy())
    return np.stack(out)


def _compare(benchmark, model, alphabet, seqs, device, **kw) -> dict:
    model = model.eval().to(device)
    embedder = ProteinEmbedder(model, alphabet, device=device, progress=False, **kw)
    n_res = sum(map(len, seqs))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn):
        sync()
        t = time.perf_counter()
        r = fn()
        sync()
        return time.perf_counter() - t, r

    timed(lambda: embedder.embed(seqs[:8]))  # warm-up
    t_naive, t_fast = [], []
    for _ in range(ROUNDS):  # alternate, so load from other processes hits both alike
        dt, ref = timed(lambda: _naive(model, alphabet, seqs, device))
        t_naive.append(dt)
        dt, got = timed(lambda: embedder.embed(seqs))
        t_fast.append(dt)
    if embedder.precision == "fp32":
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    else:  # half-precision autocast vs the fp32 naive loop: same direction per protein
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.999, cos.min()
    benchmark.pedantic(embedder.embed, args=(seqs,), rounds=1, iterations=1)
    info = {
        "device": device,
        "proteins": len(seqs),
        "residues": n_res,
        "naive_residues_per_s": round(n_res / min(t_naive), 1),
        "embedder_residues_per_s": round(n_res / min(t_fast), 1),
        "embedder_proteins_per_s": round(len(seqs) / min(t_fast), 2),
        "speedup": round(min(t_naive) / min(t_fast), 2),
        "naive_s": [round(x, 3) for x in t_naive],
        "embedder_s": [round(x, 3) for x in t_fast],
        "precision": embedder.precision,
        "toks_per_batch": embedder.toks_per_batch,
        "torch_threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    logger.warning("ESM2 embedding throughput: %s", info)
    return info


def test_cpu_embedder_vs_naive(benchmark):
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    # small ESM2 (6 layers, d=128, 8 heads: 1.2M parameters), random weights
    model = esm.model.esm2.ESM2(num_layers=6, embed_dim=128, attention_heads=8, alphabet=alphabet)
    info = _compare(benchmark, model, alphabet, _proteins(), "cpu", toks_per_batch=4096)
    # Target 3×. On CPU the forward is compute-bound, so batching itself gains little; the gain
    # is the packed forward (no FLOPs on padding, fused QKV, one-op rotary, no attention-weight
    # averaging, no LM head). See RESULTS.md for why 3× is beyond this CPU's FLOP roofline.
    # Recorded, and only "not slower" is enforced, as shared machines swing by several ×.
    benchmark.extra_info["target_speedup"] = 3.0
    assert info["speedup"] >= 1.0, f"embedder slower than the naive loop: {info}"


@pytest.mark.cuda
def test_cuda_650m(benchmark):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    try:
        model, alphabet, _ = load_esm2(
            os.environ.get("BULKFORMER_ESM2_650M", "esm2_t33_650M_UR50D")
        )
        weights = "pretrained"
    except ValueError as e:
        logger.warning("650M weights not loadable (%s); timing a random model of that shape", e)
        torch.manual_seed(0)
        alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
        model = esm.model.esm2.ESM2(33, 1280, 20, alphabet=alphabet)
        weights = "random"
    benchmark.extra_info["weights"] = weights
    info = _compare(benchmark, model, alphabet, _proteins(), "cuda", toks_per_batch=16384)
    assert info["speedup"] > 1.0
