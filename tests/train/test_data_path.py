"""The training data path: block order, rank shards, prefetching loader, device masks."""

import numpy as np
import pytest
import torch

from bulkformer.train import BatchLoader, BlockOrder, Masker, PretrainOptions, lr_at


def test_block_order_is_a_seeded_block_shuffle():
    rows = np.arange(100, 197)  # 97 rows, blocks of 10 (the last one short)
    order = BlockOrder(rows[::-1], block_rows=10, seed=5)
    blocks, e0 = order.epoch(0)
    assert sorted(e0.tolist()) == rows.tolist()  # every row once
    assert sorted(blocks.tolist()) == list(range(10))
    # rows of one block stay together: consecutive 10-row stretches of the sorted rows
    pos = 0
    for b in blocks:
        n = len(rows[b * 10 : (b + 1) * 10])
        assert sorted(e0[pos : pos + n].tolist()) == rows[b * 10 : (b + 1) * 10].tolist()
        pos += n
    assert np.array_equal(BlockOrder(rows, block_rows=10, seed=5).epoch(0)[1], e0)
    assert not np.array_equal(order.epoch(1)[1], e0)
    assert not np.array_equal(BlockOrder(rows, block_rows=10, seed=6).epoch(0)[1], e0)


def _expr(n=50, g=7):
    return (np.arange(n * g, dtype=np.float32).reshape(n, g) / 100).astype(np.float16)


def test_rank_shards_make_the_single_process_batch():
    expr, src = _expr(), np.arange(50) % 3
    order = BlockOrder(np.arange(3, 50), block_rows=8, seed=1)
    one = BatchLoader(expr, src, order, 6, workers=2, prefetch=3)
    r0 = BatchLoader(expr, src, order, 3, rank=0, world=2)
    r1 = BatchLoader(expr, src, order, 3, rank=1, world=2)
    assert one.batches_per_epoch == r0.batches_per_epoch == 47 // 6
    for _ in range(2 * one.batches_per_epoch + 1):  # across two epoch boundaries
        a, b0, b1 = next(one), next(r0), next(r1)
        assert np.array_equal(a.rows, np.concatenate([b0.rows, b1.rows]))
        assert np.array_equal(a.x.numpy(), expr[a.rows])
        assert np.array_equal(a.source.numpy(), src[a.rows])
        assert not set(b0.rows) & set(b1.rows)
    assert a.epoch == 2 and a.index == 0
    for ld in (one, r0, r1):
        ld.close()


def test_loader_restarts_from_its_position():
    expr, src = _expr(), np.zeros(50, dtype=int)
    order = BlockOrder(np.arange(50), block_rows=16, seed=2)
    ld = BatchLoader(expr, src, order, 4)
    for _ in range(15):
        next(ld)
    pos = ld.position()
    assert pos["block_order"] == order.epoch(pos["epoch"])[0].tolist()
    want = [next(ld).rows for _ in range(5)]
    ld.close()
    again = BatchLoader(expr, src, order, 4, epoch=pos["epoch"], index=pos["index"])
    assert all(np.array_equal(w, next(again).rows) for w in want)
    again.close()


def test_corpus_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="one global batch needs 20"):
        BatchLoader(_expr(), np.zeros(50), BlockOrder(np.arange(15)), 10, world=2)


def test_masks_do_not_depend_on_the_rank_split():
    G = 301
    observed = torch.rand(8, G, generator=torch.Generator().manual_seed(0)) > 0.2
    full = Masker(0.15, 9, "cpu")(observed, 8, 0, views=2)  # (2, 8, G)
    m0, m1 = Masker(0.15, 9, "cpu"), Masker(0.15, 9, "cpu")
    half = torch.cat([m0(observed[:4], 8, 0, views=2), m1(observed[4:], 8, 4, views=2)], 1)
    assert torch.equal(full, half)
    assert not (full & ~observed).any()  # missing genes are never masked
    frac = full.sum() / observed.sum() / 2
    assert 0.12 < frac < 0.18
    assert not torch.equal(full[0], full[1])  # two different views


def test_lr_schedule_warmup_then_cosine():
    o = PretrainOptions(steps=100, warmup=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, o) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert PretrainOptions(steps=100, warmup=7).warmup_steps() == 7
