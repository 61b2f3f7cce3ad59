"""Data-parallel, resumable embedding: 2 gloo ranks under torchrun give the one-process output;
an interrupted run resumes from its committed chunks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bulkformer.eval import embed_dist
from bulkformer.eval.embed import embed
from bulkformer.eval.embed_dist import chunk_ranges, embed_distributed, rank_chunks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_ranks_take_contiguous_balanced_shards():
    chunks = chunk_ranges(85, 16)
    assert chunks[0] == (0, 16) and chunks[-1] == (80, 85) and len(chunks) == 6
    for world in (1, 2, 3, 4, 7, 8):
        got = [i for r in range(world) for i in rank_chunks(len(chunks), r, world)]
        assert got == list(range(len(chunks)))  # in order, each chunk once
        sizes = [len(rank_chunks(len(chunks), r, world)) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(corpus, ckpt, tmp_path, one_thread):
    out = tmp_path / "emb.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bulkformer.cli", "embed", "--checkpoint", str(ckpt), "--corpus",
           str(corpus.path), "--out", str(out), "--batch-size", "8", "--chunk-rows", "12",
           "--device", "cpu", "--no-progress"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote 85 × 16 embeddings") == 1  # rank 0 alone writes
    want = embed(corpus, ckpt, batch_size=8, progress=False)
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "emb.npy.parts").exists()  # assembled, then the parts removed


def test_interrupted_run_resumes_from_committed_chunks(
    corpus, ckpt, tmp_path, monkeypatch, one_thread
):
    want = embed(corpus, ckpt, batch_size=8, progress=False)
    out, parts = tmp_path / "e.npy", tmp_path / "parts"
    calls = []
    real = embed_dist.run_model

    def flaky(prep, model, *, rows, **kw):
        calls.append((int(rows[0]), int(rows[-1]) + 1))
        if len(calls) == 3 and fail:
            raise KeyboardInterrupt  # killed while embedding the third chunk
        return real(prep, model, rows=rows, **kw)

    monkeypatch.setattr(embed_dist, "run_model", flaky)
    fail = True
    with pytest.raises(KeyboardInterrupt):
        embed_distributed(corpus, ckpt, out, parts=parts, batch_size=8, chunk_rows=20,
                          progress=False)  # fmt: skip
    assert not out.exists()
    assert sorted(p.name for p in parts.glob("chunk-*.npy")) == ["chunk-000000.npy",
                                                                 "chunk-000001.npy"]  # fmt: skip
    # chunk_rows 20 is rounded up to 24, a multiple of the batch size
    assert calls == [(0, 24), (24, 48), (48, 72)]
    fail, calls[:] = False, []
    got = embed_distributed(corpus, ckpt, out, parts=parts, batch_size=8, chunk_rows=20,
                            progress=False)  # fmt: skip
    assert calls == [(48, 72), (72, 85)]  # only what was not committed
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.load(out), want)
    assert not parts.exists()


def test_parts_of_another_run_are_refused(corpus, ckpt, tmp_path, one_thread):
    out, parts = tmp_path / "e.npy", tmp_path / "parts"
    embed_distributed(corpus, ckpt, out, parts=parts, batch_size=8, chunk_rows=16,
                      progress=False, keep_parts=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"parts: holds embedding chunks of another run .*how"):
        embed_distributed(corpus, ckpt, out, parts=parts, batch_size=8, chunk_rows=16,
                          how="max", progress=False)  # fmt: skip


def test_cli_parts_writes_h5ad_like_the_plain_path(corpus, ckpt, tmp_path, one_thread):
    import anndata as ad

    from bulkformer.cli import main

    out = tmp_path / "e.h5ad"
    args = ["embed", "--checkpoint", str(ckpt), "--corpus", str(corpus.path), "--out", str(out),
            "--batch-size", "8", "--parts", str(tmp_path / "p"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    back = ad.read_h5ad(out)
    want = embed(corpus, ckpt, batch_size=8, progress=False)
    np.testing.assert_array_equal(back.obsm["X_bulkformer"], want)
    assert list(back.obs_names) == list(corpus.samples["sample_id"].astype(str))
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob("*.tmp*"))
