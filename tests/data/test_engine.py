"""C++ engine vs the numpy reference on random files with odd shapes and every filter layout."""

import h5py
import numpy as np
import pytest

from bulkformer import _C  # noqa: E402  (the engine must be built: a missing build fails)
from bulkformer.data import engine
from bulkformer.data.engine import EngineError, read_matrix
from bulkformer.data.oracle import log1p_tpm_ref, qc_ref

G, S = 1037, 301  # odd sizes: not multiples of any chunk extent below


@pytest.fixture(params=["default", "zlib"])
def inflate(request):
    """Run a test with the build's inflate library and again with zlib forced."""
    prev = engine.set_inflate_backend("zlib" if request.param == "zlib" else "auto")
    want = "zlib" if request.param == "zlib" or not _C.have_libdeflate else "libdeflate"
    assert _C.inflate_backend() == want
    yield want
    engine.set_inflate_backend(prev)


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(7)
    counts = (r.negative_binomial(2, 0.05, (G, S)) * (r.random((G, S)) < 0.6)).astype(np.uint32)
    counts[:, 5] = 0  # an all-zero sample
    counts[10, :] = 0  # a gene never expressed
    counts[11, 3] = 4_000_000_000  # a huge count
    lengths = r.uniform(200, 9000, G)
    lengths[[3, 50]] = np.nan  # unknown lengths: excluded from TPM
    lengths[7] = 0
    lengths[8] = -5
    gene_map = r.integers(-1, 480, G)  # drops, duplicates (summed), a subset of columns
    return counts, lengths, gene_map, 480


LAYOUTS = {
    "gzip": dict(chunks=(100, 7), compression="gzip"),
    "gzip+shuffle": dict(chunks=(64, 64), compression="gzip", shuffle=True),
    "shuffle-only": dict(chunks=(13, 300), shuffle=True),
    "no-filter": dict(chunks=(1037, 1)),
    "gzip-9-wide": dict(chunks=(5, 301), compression="gzip", compression_opts=9),
    "lzf (fallback)": dict(chunks=(100, 10), compression="lzf"),
    "fletcher32 (fallback)": dict(chunks=(100, 10), compression="gzip", fletcher32=True),
    "contiguous (fallback)": dict(),
}


def _write(path, counts, transposed=False, dtype=None, **kw):
    data = counts.T if transposed else counts
    if transposed and "chunks" in kw:
        kw = dict(kw, chunks=kw["chunks"][::-1])
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data.astype(dtype) if dtype else data, **kw)
    return path


def _ulp16_close(a16, ref, atol=1e-4):
    """float16 output within one float16 ulp of the float64 reference (plus a small atol for
    the float32 arithmetic before rounding, which matters only next to zero)."""
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    return bool(np.all(np.abs(a16.astype(np.float64) - ref) <= ulp + atol))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("transposed", [False, True])
def test_log1p_tpm_and_qc_match_reference(tmp_path, data, layout, transposed, inflate):
    counts, lengths, gene_map, n_out = data
    path = _write(tmp_path / "x.h5", counts, transposed, **LAYOUTS[layout])
    samples = np.random.default_rng(1).permutation(S)[:173]
    samples[:3] = samples[0]  # repeats allowed
    ref = log1p_tpm_ref(counts[:, samples].T, lengths, gene_map, n_out)
    nz_ref, tot_ref = qc_ref(counts[:, samples].T)
    with h5py.File(path) as f:
        if "fallback" not in layout:
            assert engine.fast_path_problem(f["x"]) is None
        else:
            assert engine.fast_path_problem(f["x"]) is not None
        out, nz, tot = read_matrix(
            f["x"], samples, transposed=transposed, gene_map=gene_map, lengths=lengths, n_out=n_out
        )
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(nz, nz_ref)
    np.testing.assert_array_equal(tot, tot_ref)
    assert np.isfinite(out).all()
    assert (out[samples == 5] == 0).all()  # all-zero sample: zeros, never NaN


@pytest.mark.parametrize("layout", ["gzip", "gzip+shuffle", "shuffle-only"])
def test_fast_path_and_h5py_path_are_bit_identical(tmp_path, data, layout):
    counts, lengths, gene_map, n_out = data
    path = _write(tmp_path / "x.h5", counts, **LAYOUTS[layout])
    samples = np.arange(S)[::-2]
    with h5py.File(path) as f:
        for mode, dtype in [
            ("log1p_tpm", np.float32),
            ("log1p_tpm", np.float16),
            ("counts", np.uint32),
        ]:
            a = read_matrix(
                f["x"],
                samples,
                gene_map=gene_map,
                lengths=lengths,
                n_out=n_out,
                mode=mode,
                dtype=dtype,
                engine="cpp",
            )[0]
            b = read_matrix(
                f["x"],
                samples,
                gene_map=gene_map,
                lengths=lengths,
                n_out=n_out,
                mode=mode,
                dtype=dtype,
                engine="h5py",
            )[0]
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_counts_mode_sums_duplicates_exactly(tmp_path, data):
    counts, lengths, gene_map, n_out = data
    path = _write(tmp_path / "x.h5", counts, **LAYOUTS["gzip"])
    samples = np.arange(0, S, 3)
    want = np.zeros((len(samples), n_out), np.uint64)
    for j in np.flatnonzero(gene_map >= 0):
        want[:, gene_map[j]] += counts[j, samples]
    with h5py.File(path) as f:
        out = read_matrix(f["x"], samples, mode="counts", gene_map=gene_map, n_out=n_out)[0]
        ident = read_matrix(f["x"], samples, mode="counts")[0]
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, want.astype(np.uint32))
    np.testing.assert_array_equal(ident, counts[:, samples].T)


def test_unwritten_chunks_and_skipped_filters(tmp_path):
    r = np.random.default_rng(4)
    counts = r.integers(0, 50, (40, 30)).astype(np.uint32)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(40, 30), dtype="<u4", chunks=(10, 7), compression="gzip")
        ds[10:20, :] = counts[10:20]  # other chunk rows never written: fill value 0
        # a chunk stored with its deflate filter skipped (filter_mask bit 0 set)
        raw = np.ascontiguousarray(counts[20:30, 7:14]).tobytes()
        ds.id.write_direct_chunk((20, 7), raw, filter_mask=1)
    want = np.zeros_like(counts)
    want[10:20] = counts[10:20]
    want[20:30, 7:14] = counts[20:30, 7:14]
    with h5py.File(path) as f:
        got = read_matrix(f["x"], np.arange(30), mode="counts", engine="cpp")[0]
        via_h5py = read_matrix(f["x"], np.arange(30), mode="counts", engine="h5py")[0]
    np.testing.assert_array_equal(got, want.T)
    np.testing.assert_array_equal(via_h5py, want.T)
    # values modes too: genes of unwritten chunks must read as 0 in every sample, even though
    # the per-thread buffers are reused across samples and tasks
    L = np.random.default_rng(5).uniform(100, 900, 40)
    ref = log1p_tpm_ref(want.T, L)
    with h5py.File(path) as f:
        for threads in (1, 2):
            for scratch in (256 << 20, 1):
                v = read_matrix(
                    f["x"],
                    np.arange(30),
                    lengths=L,
                    engine="cpp",
                    threads=threads,
                    max_scratch_bytes=scratch,
                )[0]
                np.testing.assert_allclose(v, ref, rtol=2e-6, atol=2e-6)


def test_big_endian_and_float_counts_use_fallback(tmp_path, data):
    counts, lengths, gene_map, n_out = data
    ref = log1p_tpm_ref(counts.T, lengths, gene_map, n_out)
    for dtype in (">u4", "<f4", "<i8"):
        path = _write(tmp_path / "x.h5", counts, dtype=dtype, chunks=(100, 7), compression="gzip")
        with h5py.File(path) as f:
            assert "dtype" in engine.fast_path_problem(f["x"])
            with pytest.raises(ValueError, match="cannot read"):
                read_matrix(
                    f["x"],
                    np.arange(S),
                    gene_map=gene_map,
                    lengths=lengths,
                    n_out=n_out,
                    engine="cpp",
                )
            out = read_matrix(
                f["x"], np.arange(S), gene_map=gene_map, lengths=lengths, n_out=n_out
            )[0]
        tol = 1e-3 if dtype == "<f4" else 2e-6  # 4e9 is not exact in float32
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)


def test_negative_or_nan_counts_rejected(tmp_path):
    c = np.ones((20, 6), np.float32)
    c[3, 2] = -1
    path = _write(tmp_path / "x.h5", c, chunks=(5, 2))
    with h5py.File(path) as f, pytest.raises(ValueError, match=r"x\.h5.*invalid count -1"):
        read_matrix(f["x"], np.arange(6), lengths=np.ones(20))
    c[3, 2] = np.nan
    path = _write(tmp_path / "y.h5", c, chunks=(5, 2))
    with h5py.File(path) as f, pytest.raises(ValueError, match=r"y\.h5.*invalid count nan"):
        read_matrix(f["x"], np.arange(6), lengths=np.ones(20))


def test_bad_arguments_have_clear_errors(tmp_path, data):
    counts, lengths, gene_map, n_out = data
    path = _write(tmp_path / "x.h5", counts, **LAYOUTS["gzip"])
    with h5py.File(path) as f:
        ds = f["x"]
        with pytest.raises(ValueError, match=r"lengths has 10 entries .* 1037 genes"):
            read_matrix(ds, [0], lengths=np.ones(10))
        with pytest.raises(ValueError, match=r"gene_map has 3 entries"):
            read_matrix(ds, [0], lengths=lengths, gene_map=[0, 1, 2])
        with pytest.raises(IndexError, match="out of range"):
            read_matrix(ds, [S], lengths=lengths)
        with pytest.raises(ValueError, match="mode must be"):
            read_matrix(ds, [0], lengths=lengths, mode="z")
        with pytest.raises(ValueError, match="lengths .* required"):
            read_matrix(ds, [0])
        with pytest.raises(ValueError, match="mode must be"):
            read_matrix(ds, [0], lengths=lengths, mode="tpm")
        with pytest.raises(ValueError, match="gene_map values"):
            read_matrix(ds, [0], lengths=lengths, gene_map=np.full(G, 5), n_out=3)
        with pytest.raises(ValueError, match="float32, float16 or uint32"):
            read_matrix(ds, [0], lengths=lengths, dtype=np.float64)


def _corrupt(path, offset, nbytes, rng):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("seed", range(12))
def test_corrupt_chunks_raise_clean_errors(tmp_path, data, seed, inflate):
    counts = data[0]
    path = _write(
        tmp_path / "bad.h5", counts, chunks=(100, 7), compression="gzip", shuffle=bool(seed % 2)
    )
    rng = np.random.default_rng(seed)
    with h5py.File(path) as f:
        idx = engine.ChunkIndex.from_dataset(f["x"])
    r, c = rng.integers(0, idx.offsets.shape[0]), rng.integers(0, idx.offsets.shape[1])
    off, size = int(idx.offsets[r, c]), int(idx.sizes[r, c])
    n = int(rng.integers(1, max(2, size // 2)))
    _corrupt(path, off + int(rng.integers(0, max(1, size - n))), n, rng)
    with h5py.File(path) as f:
        try:
            out = read_matrix(f["x"], np.arange(S), lengths=np.ones(G), engine="cpp", threads=2)[0]
        except EngineError as e:
            msg = str(e)
            assert "bad.h5" in msg and "chunk (" in msg, msg
        else:  # bytes that happen to stay a valid stream still give finite output
            assert np.isfinite(out).all()


def test_truncated_file_raises(tmp_path, data):
    counts = data[0]
    path = _write(tmp_path / "t.h5", counts, chunks=(100, 7), compression="gzip")
    with h5py.File(path) as f:  # h5py refuses to open a truncated file: truncate under it
        idx = engine.ChunkIndex.from_dataset(f["x"])
        last = int((idx.offsets + idx.sizes).max())
        with open(path, "r+b") as fh:
            fh.truncate(last - 10)
        with pytest.raises(EngineError, match=r"t\.h5.*past the end"):
            read_matrix(f["x"], np.arange(S), lengths=np.ones(G), engine="cpp", index=idx)


def test_float_to_half_matches_numpy():
    r = np.random.default_rng(0)
    bits = r.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    special = np.array(
        [
            0.0,
            -0.0,
            65504.0,
            65520.0,
            65519.99,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            2.9802322e-08,
            1.0 + 2**-11,
            1.0 + 3 * 2**-11,
            1e-10,
            -3.4e38,
        ],
        dtype=np.float32,
    )
    x = np.concatenate([x, special, r.normal(0, 3, 200_000).astype(np.float32)])
    with np.errstate(over="ignore"):  # overflow to inf is part of what is compared
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_C.float_to_half(x), want)


def test_log1p_within_1_5_ulp_of_float64():
    """The engine's float32 log1p, fed TPM as given (scale 1), against float64 log1p.

    Arguments: log-uniform over 1e-12 … 3e7, every float32 around the range-reduction
    boundaries (1 + x = 1.5 · 2^K) and the small-x region, 0 and subnormals; a row length
    that is not a multiple of the SIMD width, so the scalar tail runs too."""
    r = np.random.default_rng(3)
    x = [np.exp(r.uniform(np.log(1e-12), np.log(3e7), 1_500_000))]
    for k in range(0, 22):  # 1 + x = 1.5 * 2^k, where K steps
        b = np.float32(1.5 * 2.0**k - 1)
        x.append(b + np.arange(-300, 300, dtype=np.float32) * np.spacing(b))
    x.append(np.float32(2.0**-24) * np.arange(0, 3000, dtype=np.float32))
    x.append(np.array([0.0, 1e-45, 1e-40, 1.2e-38, 2.0**-23, 1.0, 3e7], np.float32))
    x = np.concatenate([np.asarray(a, np.float32) for a in x])
    x = x[x >= 0]
    J = 1_001  # odd row length
    n = len(x) // J * J
    rows = x[:n].reshape(-1, J).astype(np.float64)
    got, _, _ = engine.normalize_dense(rows, np.arange(J), None, J, values="tpm", qc=False)
    want = np.log1p(rows)
    assert got.dtype == np.float32
    assert np.all(got[rows == 0] == 0)  # log1p(0) is exactly 0
    ulp = np.spacing(np.abs(want.astype(np.float32)))
    err = np.abs(got.astype(np.float64) - want) / ulp
    i = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= 1.5, f"{err.max():.3f} ulp at x = {rows[i]!r}"
    small = rows < 2.0**-12  # relative accuracy holds for tiny arguments as well
    assert np.all(np.abs(got[small] - want[small]) <= 1.5 * ulp[small])


def test_inflate_only_counts_bytes(tmp_path, data):
    counts = data[0]
    path = _write(tmp_path / "x.h5", counts, chunks=(100, 7), compression="gzip")
    with h5py.File(path) as f:
        n = engine.inflate_only(f["x"], [0, 1, 8])  # two chunk columns
    assert n == 2 * 11 * 100 * 7 * 4


def test_block_moments_match_numpy_and_row_mask_equals_copy():
    r = np.random.default_rng(5)
    x = (r.normal(3, 2, (53, 97))).astype(np.float32)
    m = r.random(53) < 0.6
    mean, m2, bad = _C.block_moments(x, m.astype(np.uint8))
    assert bad == -1
    sub = x[m].astype(np.float64)
    np.testing.assert_allclose(mean, sub.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((sub - sub.mean(0)) ** 2).sum(0), rtol=1e-9)
    copy_mean, copy_m2, _ = _C.block_moments(np.ascontiguousarray(x[m]))
    np.testing.assert_array_equal(mean, copy_mean)  # bit-identical: merges of shards rely on it
    np.testing.assert_array_equal(m2, copy_m2)
    z_mean, z_m2, _ = _C.block_moments(x, np.zeros(53, np.uint8))
    assert not z_mean.any() and not z_m2.any()


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_block_moments_report_first_nonfinite_row_selected_or_not(bad_value):
    r = np.random.default_rng(6)
    x = r.normal(0, 1, (41, 1031)).astype(np.float32)
    rows = (r.random(41) < 0.5).astype(np.uint8)
    rows[17] = 0  # a row outside the selection is checked too
    x[17, 1030] = bad_value  # last column: the vector loop's scalar tail
    x[30, 3] = bad_value
    assert _C.block_moments(x, rows)[2] == 17
    assert _C.block_moments(x, np.zeros(41, np.uint8))[2] == 17
    x[17, 1030] = np.finfo(np.float32).max  # finite extremes are fine
    x[30, 3] = np.finfo(np.float32).tiny / 4  # subnormal
    assert _C.block_moments(x, rows)[2] == -1


def _z_numpy(v, shift, scale, src):
    z = (v - shift[src]) * scale[src]
    return np.clip(z, -65504, 65504).astype(np.float16)


@pytest.mark.parametrize("threads", [1, 3])
def test_standardize_bit_identical_to_numpy(threads):
    r = np.random.default_rng(7)
    n, g, s = 37, 1029, 3  # odd sizes: scalar tails of the vector loops
    v = (r.gamma(1.0, 3.0, (n, g)) * (r.random((n, g)) < 0.8)).astype(np.float32)
    v[0, :6] = [0.0, 1e-8, 7e4, 6.5519e4, 65520.0, 3.4e38]  # rounding / clipping edges
    shift = r.normal(2, 1, (s, g)).astype(np.float32)
    scale = (1 / r.uniform(0.01, 3, (s, g))).astype(np.float32)
    scale[1, ::7] = 0.0  # missing genes of source 1: ±0 like numpy
    shift[0, :6] = 0.0
    scale[0, :6] = 1.0
    src = r.integers(0, s, n)
    out = np.empty((n, g), np.float16)
    _C.standardize(v, shift, scale, out, src, threads=threads)
    want = _z_numpy(v, shift, scale, src)
    np.testing.assert_array_equal(out.view(np.uint16), want.view(np.uint16))
    one = np.empty((n, g), np.float16)  # a single source needs no index
    _C.standardize(v, shift[:1], scale[:1], one, threads=threads)
    np.testing.assert_array_equal(one.view(np.uint16), _z_numpy(v, shift, scale, 0).view(np.uint16))
    f32 = np.empty((n, g), np.float32)  # float32 out (embed): the same expression, unrounded
    _C.standardize(v, shift, scale, f32, src, threads=threads)
    want32 = np.clip((v - shift[src]) * scale[src], -65504, 65504).astype(np.float32)
    np.testing.assert_array_equal(f32.view(np.uint32), want32.view(np.uint32))


def test_standardize_rejects_bad_arguments():
    v = np.zeros((4, 5), np.float32)
    sh = np.zeros((2, 5), np.float32)
    out = np.empty((4, 5), np.float16)
    with pytest.raises(ValueError, match="src is required"):
        _C.standardize(v, sh, sh, out)
    with pytest.raises(ValueError, match="out of range"):
        _C.standardize(v, sh, sh, out, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="float16 or float32"):
        _C.standardize(v, sh, sh, np.empty((4, 5), np.float64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="must not be values"):
        _C.standardize(v, sh, sh, v, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="shape"):
        _C.standardize(v, sh, sh, np.empty((4, 6), np.float16), np.zeros(4, np.int64))


def _simd_run():
    r = np.random.default_rng(11)
    c = (r.negative_binomial(1, 0.001, (29, 1037)) * (r.random((29, 1037)) < 0.7)).astype(np.uint32)
    c[0, :5] = [4_294_967_295, 16_777_217, 16_777_219, 2**31 + 1, 3]  # float rounding edges
    L = r.uniform(100, 9000, 1037)
    gm = r.integers(-1, 300, 1037)
    out = np.empty((29, 300), np.float32)
    nz = np.empty(29, np.int64)
    tot = np.empty(29)
    _C.normalize_dense(c, gene_map=gm, lengths=L, n_out=300, mode=1, out=out, nonzero=nz, total=tot)
    return {"out": out, "nz": nz, "tot": tot}


def _paths_run(path):
    r = np.random.default_rng(3)
    G, S = 3001, 130
    lengths = r.uniform(200, 9000, G)
    lengths[::17] = np.nan
    gm = np.full(G, -1, np.int64)
    gm[r.choice(G, 1000, replace=False)] = np.arange(1000)
    gm[5] = gm[6]  # a duplicate: summed
    res = {}
    kw = dict(gene_map=gm, lengths=lengths, n_out=1000, engine="cpp")
    with h5py.File(path) as f:
        ds = f["x"]
        for name, rows in (
            ("all", np.arange(S)),
            ("run", np.arange(37, 101)),
            ("scattered", r.permutation(S)[:50]),
        ):
            o, nz, tot = read_matrix(ds, rows, **kw)
            h, _, _ = read_matrix(ds, rows, dtype=np.float16, **kw)
            q = read_matrix(ds, rows, out=False, **kw)
            res.update(
                {
                    f"{name}_out": o,
                    f"{name}_nz": nz,
                    f"{name}_tot": tot,
                    f"{name}_f16": h,
                    f"{name}_qnz": q[1],
                    f"{name}_qtot": q[2],
                }
            )
    return res


def test_gene_major_and_transposing_paths_are_bit_identical(tmp_path):
    """Wide chunks are accumulated gene-major (across samples, no transposition) when the
    requested samples of a chunk column form one run; set_gene_major(False) forces the
    transposing path, set_simd(False) the portable loops. All must agree bit for bit (QC,
    float32 and float16 values), on counts whose float conversion and TPM sums round."""
    r = np.random.default_rng(2)
    c = (r.negative_binomial(1, 0.0005, (3001, 130)) * (r.random((3001, 130)) < 0.7)).astype(
        np.uint32
    )
    c[:7, :5] = [[4_294_967_295], [16_777_217], [16_777_219], [2**31 + 1], [3], [0], [99]]
    h5 = tmp_path / "wide.h5"
    _write(h5, c, chunks=(512, 64), compression="gzip", shuffle=True)  # partial edge chunks
    runs = {}
    for name, kw in (
        ("gene-major", {}),
        ("transposing", {"gene_major": False}),
        ("portable", {"simd": False}),
    ):
        with engine.switches(**kw):
            runs[name] = _paths_run(h5)
    ref = runs["transposing"]
    for name in ("gene-major", "portable"):
        for key in ref:
            np.testing.assert_array_equal(runs[name][key], ref[key], err_msg=f"{name} {key}")


def test_simd_and_portable_loops_are_bit_identical():
    fast = _simd_run()
    with engine.switches(simd=False):
        portable = _simd_run()
    for key in ("out", "nz", "tot"):
        np.testing.assert_array_equal(fast[key], portable[key])


def test_switch_setters_return_the_previous_setting_and_restore():
    assert engine.set_simd(False) is True
    assert engine.set_simd(True) is False
    assert engine.set_gene_major(False) is True
    assert engine.set_gene_major(True) is False
    assert engine.set_inflate_backend("zlib") == "auto"
    assert _C.inflate_backend() == "zlib"
    assert engine.set_inflate_backend("auto") == "zlib"
    with pytest.raises(ValueError, match="'auto' or 'zlib'"):
        engine.set_inflate_backend("gzip")
    with engine.switches(simd=False, gene_major=False):
        assert engine.set_simd(False) is False and engine.set_gene_major(False) is False
    assert engine.set_simd(True) is True and engine.set_gene_major(True) is True
    assert engine.set_default_threads(3) == 0
    assert engine.set_default_threads(None) == 3


@pytest.mark.parametrize("chunks", [(1, 64), (3, 50), (16, 301), (5, 7)])
@pytest.mark.parametrize("transposed", [False, True])
def test_short_chunk_rows_batched_bit_identical(tmp_path, chunks, transposed):
    """Chunk rows of a few genes are normalized in batches of consecutive chunk rows (gathered
    into one block). Batches must not change a bit: against the dense path (one piece per
    sample, engine="h5py"), on odd sizes with partial edge chunks, unwritten chunk rows inside
    and at the end of a batch, contiguous and scattered requests, every output kind, both
    accumulation paths and 1 or 2 threads."""
    r = np.random.default_rng(13)
    G, S = 1037, 301
    c = (r.negative_binomial(1, 0.002, (G, S)) * (r.random((G, S)) < 0.7)).astype(np.uint32)
    c[:5, :3] = [[4_294_967_295], [16_777_217], [16_777_219], [2**31 + 1], [3]]
    # genes never written (fill value 0): a stretch inside the file and the last genes
    # (multiples of every chunk-gene extent above, so whole chunk rows stay unwritten)
    c[240:480] = 0
    c[1035:] = 0
    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as f:
        shape, ck = ((S, G), chunks[::-1]) if transposed else ((G, S), chunks)
        ds = f.create_dataset("x", shape=shape, dtype="<u4", chunks=ck, compression="gzip")
        for lo, hi in ((0, 240), (480, 1035)):
            if transposed:
                ds[:, lo:hi] = c[lo:hi].T
            else:
                ds[lo:hi] = c[lo:hi]
    lengths = r.uniform(200, 9000, G)
    lengths[::17] = np.nan
    gm = np.full(G, -1, np.int64)
    gm[r.choice(G, 700, replace=False)] = np.arange(700)
    gm[5] = gm[6]  # a duplicate: summed
    full = np.arange(G, dtype=np.int64)  # identity map: normalized in the value rows
    requests = {
        "all": np.arange(S),
        "run": np.arange(37, 262),
        "scattered": r.permutation(S)[:90],
        # one chunk column for most layouts: a single task, inflated on both threads
        "one column": r.permutation(50)[:30],
    }
    with h5py.File(path) as f:
        ds = f["x"]
        for name, rows in requests.items():
            for gmap, n_out in ((gm, 700), (full, G)):
                kw = dict(gene_map=gmap, lengths=lengths, n_out=n_out, transposed=transposed)
                for mode, dtype, out in (
                    ("log1p_tpm", np.float32, None),
                    ("log1p_tpm", np.float16, None),
                    ("log1p_tpm", np.float32, False),
                    ("counts", np.uint32, None),
                ):
                    more = dict(kw, mode=mode, dtype=dtype)
                    if out is False:
                        more["out"] = False
                    want = read_matrix(ds, rows, engine="h5py", **more)
                    for threads in (1, 2):
                        for gene_major in (True, False):
                            with engine.switches(gene_major=gene_major):
                                got = read_matrix(ds, rows, engine="cpp", threads=threads, **more)
                            what = f"{name} {mode} {dtype} out={out} t={threads} gm={gene_major}"
                            for a, b in zip(got, want):
                                if a is not None or b is not None:
                                    np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("chunks", [(16, 301), (512, 64), (100, 136), (5, 7), (64, 1000)])
def test_fully_mapped_rows_fused_pass_bit_identical(tmp_path, chunks):
    """When every gene of a chunk row (or batch of short rows) is mapped, as at full width
    with every length known, the gene-major path takes QC, denominators and value rows in one
    pass (value rows streamed when 64-byte aligned: batches starting at a multiple of 16
    genes). Bit for bit against the dense path and the transposing path, with partial edge
    chunks, tails of genes (not a multiple of 8 or 16) and of samples, several 128-sample
    tiles, a map that leaves one gene out (not fused) and float rounding edges."""
    r = np.random.default_rng(17)
    G, S = 1037, 1000 if chunks[1] == 1000 else 301
    c = (r.negative_binomial(1, 0.002, (G, S)) * (r.random((G, S)) < 0.7)).astype(np.uint32)
    c[:5, :3] = [[4_294_967_295], [16_777_217], [16_777_219], [2**31 + 1], [3]]
    path = _write(tmp_path / "full.h5", c, chunks=chunks, compression="gzip")
    lengths = r.uniform(200, 9000, G)  # every length known: every gene mapped
    full = np.arange(G, dtype=np.int64)
    reversed_map = full[::-1].copy()  # injective, not the identity: values scattered
    one_out = full.copy()
    one_out[700] = -1  # the chunk rows holding gene 700 are not fully mapped
    with h5py.File(path) as f:
        ds = f["x"]
        for name, rows in (("all", np.arange(S)), ("run", np.arange(13, 290))):
            for gmap in (full, reversed_map, one_out):
                for dtype in (np.float32, np.float16):
                    kw = dict(gene_map=gmap, lengths=lengths, n_out=G, dtype=dtype)
                    want = read_matrix(ds, rows, engine="h5py", **kw)
                    for gene_major in (True, False):
                        with engine.switches(gene_major=gene_major):
                            got = read_matrix(ds, rows, engine="cpp", threads=2, **kw)
                        for a, b in zip(got, want):
                            np.testing.assert_array_equal(
                                a, b, err_msg=f"{name} {dtype.__name__} gm={gene_major}"
                            )


def test_value_buffers_pooled_per_thread_and_released(tmp_path):
    """The per-sample value buffers of a call stay pooled for the next one, one per worker
    thread that did work (a 2-thread read of two chunk columns: one or two, as the workers
    raced), the next call takes them back without losing any and gives the same bits, and
    release_scratch() frees them."""
    r = np.random.default_rng(23)
    G, S = 301, 400
    c = r.integers(0, 50, (G, S)).astype(np.uint32)
    path = _write(tmp_path / "pool.h5", c, chunks=(64, 200), compression="gzip")
    kw = dict(gene_map=np.arange(G), lengths=np.full(G, 1000.0), n_out=G, engine="cpp")
    buf = 4 * 200 * ((G + 15) // 16 * 16)  # 200 samples' value rows, padded to 64 bytes
    with h5py.File(path) as f:
        ds = f["x"]
        _C.release_scratch()
        assert _C.scratch_pool_bytes() == 0
        first = read_matrix(ds, np.arange(S), threads=2, **kw)
        held = _C.scratch_pool_bytes()
        assert buf <= held <= 2 * (buf + 256), held  # one or two buffers (+ alignment slack)
        again = read_matrix(ds, np.arange(S), threads=2, **kw)
        assert _C.scratch_pool_bytes() >= held
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
        _C.release_scratch()
        assert _C.scratch_pool_bytes() == 0


@pytest.mark.parametrize(
    "chunks,transposed",
    [((64, 301), False), ((1, 301), False), ((7, 301), True), ((100, 150), False)],
)
def test_spare_threads_decode_rows_for_few_tasks_bit_identical(tmp_path, data, chunks, transposed):
    """Fewer tasks than threads (one or two chunk columns): the spare workers decode chunk rows
    ahead of each task's owner, which still accumulates them in gene order. Every thread count
    gives the bits of one thread and of the h5py path, with unwritten chunk rows in between
    (read as zeros), for whole columns, runs and random subsets, at float32 and float16."""
    counts, lengths, gene_map, n_out = data
    counts = counts.copy()
    path = tmp_path / "few.h5"
    shape = (S, G) if transposed else (G, S)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "x",
            shape=shape,
            dtype="<u4",
            chunks=chunks[::-1] if transposed else chunks,
            compression="gzip",
        )
        cg = chunks[0]
        unwritten = set(range(G // cg)[3::5])  # every fifth chunk row stays unwritten
        for r0 in range(0, G, cg):
            if r0 // cg in unwritten:
                counts[r0 : r0 + cg] = 0
                continue
            block = counts[r0 : r0 + cg]
            if transposed:
                ds[:, r0 : r0 + cg] = block.T
            else:
                ds[r0 : r0 + cg] = block
    rng = np.random.default_rng(31)
    picks = {"all": np.arange(S), "run": np.arange(17, 268), "random": rng.permutation(S)[:41]}
    with h5py.File(path) as f:
        ds = f["x"]
        for name, rows in picks.items():
            for dtype in (np.float32, np.float16):
                kw = dict(
                    gene_map=gene_map,
                    lengths=lengths,
                    n_out=n_out,
                    dtype=dtype,
                    transposed=transposed,
                )
                want = read_matrix(ds, rows, engine="h5py", **kw)
                for threads in (1, 2, 3, 6):
                    got = read_matrix(ds, rows, engine="cpp", threads=threads, **kw)
                    for a, b in zip(got, want):
                        np.testing.assert_array_equal(a, b, err_msg=f"{name} t={threads}")
    ref = log1p_tpm_ref(counts[:, picks["random"]].T, lengths, gene_map, n_out)
    np.testing.assert_allclose(want[0], ref.astype(np.float16), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("seed", range(6))
def test_spare_thread_decode_errors_reach_the_caller(tmp_path, data, seed):
    """A corrupt chunk decoded by a helper thread (one chunk column, 4 threads) raises the
    same clean error as on one thread, and the call returns (no helper left waiting)."""
    counts = data[0]
    path = _write(tmp_path / "bad1.h5", counts, chunks=(16, S), compression="gzip")
    with h5py.File(path) as f:
        idx = engine.ChunkIndex.from_dataset(f["x"])
    rng = np.random.default_rng(seed)
    r = int(rng.integers(2, idx.offsets.shape[0]))  # not the first row: a helper's, likely
    off, size = int(idx.offsets[r, 0]), int(idx.sizes[r, 0])
    _corrupt(path, off, size, rng)  # the whole stream: no valid deflate left
    msgs = []
    with h5py.File(path) as f:
        for threads in (1, 4):
            with pytest.raises(EngineError) as e:
                read_matrix(f["x"], np.arange(S), lengths=np.ones(G), engine="cpp", threads=threads)
            msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "bad1.h5" in msgs[0] and f"chunk ({r * 16}, 0)" in msgs[0], msgs
