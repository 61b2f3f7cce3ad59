"""The chunk index: the C++ B-tree reader vs h5py's chunk_iter, lazy (partial) vs full indexes,
and the per-file cache."""

import os

import h5py
import numpy as np
import pytest

from bulkformer import _C
from bulkformer.data import engine
from bulkformer.data.engine import ChunkIndex, read_matrix
from bulkformer.data.oracle import log1p_tpm_ref


def _same(a: ChunkIndex, b: ChunkIndex, cols=None):
    """a (full or partial) holds exactly b's entries for chunk columns `cols` (default all)."""
    cols = np.arange(b.offsets.shape[1]) if cols is None else np.asarray(cols)
    ka = cols if a.cols is None else np.searchsorted(a.cols, cols)
    np.testing.assert_array_equal(a.offsets[:, ka], b.offsets[:, cols])
    np.testing.assert_array_equal(a.sizes[:, ka], b.sizes[:, cols])
    np.testing.assert_array_equal(a.masks[:, ka], b.masks[:, cols])


def _write_random_order(path, shape, chunks, rng, transposed=False, skip=0.0, **kw):
    """A dataset written chunk by chunk in random order (so the B-tree splits and gains
    levels in a scrambled way), leaving a fraction `skip` of the chunks unwritten."""
    counts = rng.integers(0, 1000, shape).astype(np.uint32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=shape, dtype="<u4", chunks=chunks, **kw)
        grid = [range(0, shape[i], chunks[i]) for i in range(2)]
        cells = [(a, b) for a in grid[0] for b in grid[1]]
        for j in rng.permutation(len(cells)):
            if rng.random() < skip:
                counts[
                    cells[j][0] : cells[j][0] + chunks[0], cells[j][1] : cells[j][1] + chunks[1]
                ] = 0
                continue
            a, b = cells[j]
            ds[a : a + chunks[0], b : b + chunks[1]] = counts[a : a + chunks[0], b : b + chunks[1]]
    return counts.T if transposed else counts


CASES = {
    # (shape, chunks, transposed, skip, kw)
    "deep tree (4,800 chunks, 3 levels)": ((60, 80), (1, 1), False, 0.0, {}),
    "unwritten chunks": ((97, 53), (10, 3), False, 0.3, dict(compression="gzip")),
    "transposed storage": ((41, 230), (5, 2), True, 0.1, dict(compression="gzip", shuffle=True)),
    "one chunk": ((7, 5), (7, 5), False, 0.0, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_btree_reader_matches_chunk_iter_full_and_lazy(tmp_path, case):
    shape, chunks, transposed, skip, kw = CASES[case]
    rng = np.random.default_rng(len(case))
    path = tmp_path / "x.h5"
    _write_random_order(path, shape, chunks, rng, skip=skip, **kw)
    with h5py.File(path) as f:
        ds = f["x"]
        ref = ChunkIndex.from_dataset(ds, transposed)
        full = ChunkIndex.from_btree(ds, transposed)
        assert full is not None and full.cols is None
        _same(full, ref)
        n_cols = ref.offsets.shape[1]
        for k in sorted({1, min(2, n_cols), max(1, n_cols // 3), n_cols}):
            cols = np.sort(rng.choice(n_cols, k, replace=False))
            part = ChunkIndex.from_btree(ds, transposed, cols)
            assert part.offsets.shape == (ref.offsets.shape[0], k)
            _same(part, ref, cols)
        # the lazy walk visits fewer nodes than the full one when the tree has levels
        addr = engine._header_addr(ds)
        n_full = _C.chunk_btree(str(path), addr, list(ds.shape), list(ds.chunks), 4)[4]
        if n_full > 2:
            want = np.array([0], dtype=np.int64)
            n_one = _C.chunk_btree(str(path), addr, list(ds.shape), list(ds.chunks), 4, want)[4]
            assert n_one < n_full


def test_btree_reader_reads_filter_masks_and_empty_datasets(tmp_path):
    r = np.random.default_rng(3)
    counts = r.integers(0, 50, (40, 30)).astype(np.uint32)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(40, 30), dtype="<u4", chunks=(10, 7), compression="gzip")
        ds[10:20, :] = counts[10:20]
        ds.id.write_direct_chunk((20, 7), counts[20:30, 7:14].tobytes(), filter_mask=1)
        f.create_dataset("empty", shape=(40, 30), dtype="<u4", chunks=(10, 7))
    with h5py.File(path) as f:
        ref = ChunkIndex.from_dataset(f["x"])
        got = ChunkIndex.from_btree(f["x"])
        _same(got, ref)
        assert got.masks[2, 1] == 1 and (got.offsets[0] == -1).all()
        empty = ChunkIndex.from_btree(f["empty"])
        assert (empty.offsets == -1).all()


def test_other_chunk_index_types_fall_back_to_chunk_iter(tmp_path):
    """libver="latest" writes a newer layout message (fixed-array chunk index): the reader declines
    and the engine uses h5py's index, with the same results."""
    r = np.random.default_rng(5)
    counts = r.integers(0, 500, (90, 40)).astype(np.uint32)
    path = tmp_path / "latest.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("x", data=counts, chunks=(30, 3), compression="gzip")
    L = r.uniform(100, 900, 90)
    with h5py.File(path) as f:
        ds = f["x"]
        reason = _C.chunk_btree(
            str(path), engine._header_addr(ds), list(ds.shape), list(ds.chunks), 4
        )
        assert isinstance(reason, str) and "data layout message version" in reason
        assert ChunkIndex.from_btree(ds) is None
        engine.clear_index_cache()
        _same(engine.chunk_index(ds, [1, 2]), ChunkIndex.from_dataset(ds))
        got = read_matrix(ds, [39, 0, 7], lengths=L, engine="cpp")[0]
    np.testing.assert_allclose(got, log1p_tpm_ref(counts[:, [39, 0, 7]].T, L), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("transposed", [False, True])
def test_lazy_and_full_index_give_identical_reads(tmp_path, transposed):
    rng = np.random.default_rng(11)
    counts = _write_random_order(
        tmp_path / "x.h5",
        (301, 211) if not transposed else (211, 301),
        (37, 2) if not transposed else (2, 37),
        rng,
        transposed=transposed,
        skip=0.1,
        compression="gzip",
    )  # logical genes × samples = (301, 211)
    G, S = counts.shape
    L = rng.uniform(100, 900, G)
    gm = rng.integers(-1, 150, G)
    samples = np.array([200, 3, 3, 4, 101, 17])  # 5 of 106 chunk columns: a lazy request
    engine.clear_index_cache()
    with h5py.File(tmp_path / "x.h5") as f:
        ds = f["x"]
        lazy = engine.chunk_index(ds, samples, transposed)
        assert lazy.cols is not None and len(lazy.cols) == 5
        full = ChunkIndex.from_dataset(ds, transposed)
        outs = []
        for idx in (lazy, full):
            out, nz, tot = read_matrix(
                ds,
                samples,
                transposed=transposed,
                mode="log1p_tpm",
                gene_map=gm,
                lengths=L,
                n_out=150,
                dtype=np.float16,
                index=idx,
                engine="cpp",
            )
            outs.append((out, nz, tot))
        # and without an index argument (the cached lazy index)
        outs.append(read_matrix(ds, samples, transposed=transposed, mode="counts", engine="cpp"))
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outs[2][0], counts[:, samples].T)


def test_partial_index_missing_a_column_is_refused(tmp_path):
    counts = np.arange(60 * 20, dtype=np.uint32).reshape(60, 20)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=counts, chunks=(10, 4))
    with h5py.File(tmp_path / "x.h5") as f:
        part = ChunkIndex.from_btree(f["x"], cols=np.array([0, 2]))
        np.testing.assert_array_equal(
            read_matrix(f["x"], [9, 1], mode="counts", index=part)[0], counts[:, [9, 1]].T
        )
        with pytest.raises(ValueError, match="does not hold chunk column 1"):
            read_matrix(f["x"], [5], mode="counts", index=part)


def test_cache_hits_grow_and_are_invalidated_when_the_file_changes(tmp_path):
    path = tmp_path / "x.h5"
    r = np.random.default_rng(2)
    a = r.integers(0, 100, (50, 400)).astype(np.uint32)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=a, chunks=(25, 4))  # 100 chunk columns
    engine.clear_index_cache()
    with h5py.File(path) as f:
        i1 = engine.chunk_index(f["x"], [0, 1, 2])  # one column: lazy
        assert list(i1.cols) == [0]
        assert engine.chunk_index(f["x"], [3]) is i1  # held: the cached object itself
        i2 = engine.chunk_index(f["x"], [399, 5])  # two more columns merged in
        assert list(i2.cols) == [0, 1, 99]
        i3 = engine.chunk_index(f["x"])  # everything: the full index replaces it
        assert i3.cols is None and engine.chunk_index(f["x"], [7]) is i3
        np.testing.assert_array_equal(
            read_matrix(f["x"], [399, 5], mode="counts")[0], a[:, [399, 5]].T
        )
    # rewrite the file under the same name with other data and another chunk layout
    b = r.integers(0, 100, (50, 400)).astype(np.uint32)
    tmp = tmp_path / "y.h5"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("x", data=b, chunks=(10, 8), compression="gzip")
    os.replace(tmp, path)
    with h5py.File(path) as f:
        i4 = engine.chunk_index(f["x"], [399, 5])
        assert i4 is not i3 and i4.chunk_samples == 8
        np.testing.assert_array_equal(
            read_matrix(f["x"], [399, 5], mode="counts")[0], b[:, [399, 5]].T
        )
