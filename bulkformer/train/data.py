"""The training data path: corpus rows → (pinned) batches → masks drawn on the device.

Order. The rows of a split (ascending row indices of ``expression.npy``) are cut into blocks of
``block_rows`` consecutive rows. Each epoch visits the blocks in a seeded random order and the
rows of each block in a seeded random order (``numpy.random.default_rng([seed, epoch])``), so
reads stay within one or two contiguous stretches of the memmap per batch while every epoch
sees a fresh shuffle. The epoch's order is cut into *global* batches of
``batch_size × world_size`` rows (the incomplete tail is dropped); rank ``r`` reads rows
``[r·b, (r+1)·b)`` of each global batch — its own shard, disjoint from the other ranks'. One
process with batch ``2b`` therefore sees exactly the samples two ranks with batch ``b`` see.

Reading. :class:`BatchLoader` reads each rank batch with one ``np.take`` from the float16
memmap into a (pinned, on CUDA) tensor, on a small thread pool running ``prefetch`` batches
ahead (numpy releases the GIL while copying). The position (epoch, batch) of the next batch to
*consume* is what a checkpoint stores; prefetched batches are simply read again after a resume.

Masking. :class:`Masker` draws ``u ~ U(0, 1)`` for the whole global batch on the device from a
seeded ``torch.Generator`` and keeps this rank's rows: ``masked = (u < fraction) & observed``.
Every rank draws the same numbers, so masks do not depend on how a batch is split over ranks.
"""

from __future__ import annotations

import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BlockOrder", "Batch", "BatchLoader", "Masker"]

log = logging.getLogger(__name__)


class BlockOrder:
    """Seeded per-epoch visiting order of a set of corpus rows (block-shuffled, then within).

    Parameters
    ----------
    rows : (n,) int
        Row indices into the corpus matrix (sorted ascending here).
    block_rows : int
        Rows per block (consecutive entries of the sorted ``rows``).
    seed : int
    """

    def __init__(self, rows, *, block_rows: int = 1024, seed: int = 0) -> None:
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.block_rows = int(block_rows)
        self.seed = int(seed)
        self.n_blocks = -(-len(self.rows) // self.block_rows)
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """``(block_order, rows)`` of epoch ``e``: the permutation of block numbers and the
        (n,) row indices in visiting order."""
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, int(e)])
        blocks = rng.permutation(self.n_blocks)
        parts = []
        for b in blocks:
            part = self.rows[b * self.block_rows : (b + 1) * self.block_rows]
            parts.append(part[rng.permutation(len(part))])
        order = np.concatenate(parts) if parts else self.rows[:0]
        self._cache = (e, blocks, order)
        return blocks, order


@dataclass
class Batch:
    """One rank's share of a global batch."""

    x: torch.Tensor  # (b, G) float16 z-scores (pinned when the loader pins)
    source: torch.Tensor  # (b,) int64: source index of each row (row of Corpus.missing)
    rows: np.ndarray  # (b,) int64 corpus rows
    epoch: int  # epoch of this batch
    index: int  # batch number within the epoch


class BatchLoader:
    """Iterate over one rank's batches from a position onward, reading ahead on threads.

    Parameters
    ----------
    expression : (N, G) float16 array (the corpus memmap)
    source_index : (N,) int source index of each row
    order : BlockOrder
    batch_size : rows per rank batch (b)
    rank, world : this rank and the number of ranks; global batch = b × world
    epoch, index : position of the first batch to yield
    workers : reader threads
    prefetch : batches read ahead
    pin : read into pinned memory (for fast, asynchronous host→device copies)

    Raises
    ------
    ValueError
        When the rows cannot fill one global batch.
    """

    def __init__(
        self,
        expression,
        source_index,
        order: BlockOrder,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        index: int = 0,
        workers: int = 2,
        prefetch: int = 4,
        pin: bool = False,
    ) -> None:
        self.expression = expression
        self.source_index = np.asarray(source_index, dtype=np.int64)
        self.order = order
        self.batch_size = int(batch_size)
        self.rank, self.world = int(rank), int(world)
        self.global_batch = self.batch_size * self.world
        self.batches_per_epoch = len(order) // self.global_batch
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the split has {len(order)} rows but one global batch needs "
                f"{self.global_batch} (batch size {self.batch_size} × {self.world} rank(s)): "
                "lower --batch-size or use a larger corpus"
            )
        self.epoch, self.index = int(epoch), int(index)
        self.pin = bool(pin)
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="bf-loader")
        self._pending: collections.deque = collections.deque()
        self._next = (self.epoch, self.index)  # next position to submit
        self.last: Batch | None = None  # the batch most recently returned

    # ------------------------------------------------------------------ positions
    def _advance(self, e: int, i: int) -> tuple[int, int]:
        i += 1
        return (e + 1, 0) if i >= self.batches_per_epoch else (e, i)

    def rows_of(self, e: int, i: int) -> np.ndarray:
        """This rank's rows of batch ``i`` of epoch ``e``."""
        _, order = self.order.epoch(e)
        a = i * self.global_batch + self.rank * self.batch_size
        return order[a : a + self.batch_size]

    def position(self) -> dict:
        """Where the next batch to be consumed is: ``{"epoch", "index", "block_order"}``."""
        blocks, _ = self.order.epoch(self.epoch)
        return {"epoch": self.epoch, "index": self.index, "block_order": blocks.tolist()}

    # ------------------------------------------------------------------ reading
    def _read(self, e: int, i: int) -> Batch:
        rows = self.rows_of(e, i)
        x = torch.empty((len(rows), self.expression.shape[1]), dtype=torch.float16)
        if self.pin:
            x = x.pin_memory()
        np.take(self.expression, rows, axis=0, out=x.numpy())
        src = torch.from_numpy(self.source_index[rows])
        return Batch(x=x, source=src, rows=rows, epoch=e, index=i)

    def _fill(self) -> None:
        while len(self._pending) < self.prefetch:
            e, i = self._next
            self._pending.append(self._pool.submit(self._read, e, i))
            self._next = self._advance(e, i)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        self._fill()
        batch = self._pending.popleft().result()
        self.last = batch
        self.epoch, self.index = self._advance(batch.epoch, batch.index)
        self._fill()
        return batch

    def close(self) -> None:
        """Stop the reader threads (pending reads are dropped)."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


class Masker:
    """Draw masks of observed genes on the device from a seeded generator.

    Parameters
    ----------
    fraction : probability that an observed gene is masked (0 < fraction < 1)
    seed : generator seed
    device : where the generator lives and masks are made
    """

    def __init__(self, fraction: float, seed: int, device) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"mask fraction must be in (0, 1), got {fraction}")
        self.fraction = float(fraction)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __call__(
        self, observed: torch.Tensor, global_batch: int, offset: int, views: int = 1
    ) -> torch.Tensor:
        """Masks (views, b, G) bool for this rank's rows ``offset … offset+b`` of the global batch;
        ``observed`` (b, G) bool (False at missing genes, which are never masked)."""
        b, G = observed.shape
        u = torch.rand(
            (views, global_batch, G), generator=self.generator, device=self.device
        )  # (V, GB, G)
        return (u[:, offset : offset + b] < self.fraction) & observed  # (V, b, G)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
