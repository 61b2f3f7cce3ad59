"""Engine fast paths chosen by the gene map: injective maps (every output column gets at most
one gene: assigned, not summed) and the identity map (values normalized in place), on both
accumulation paths, against the numpy reference and against a map with duplicates."""

import h5py
import numpy as np
import pytest

from bulkformer.data.engine import read_matrix
from bulkformer.data.oracle import log1p_tpm_ref

G, S = 523, 67


@pytest.fixture(scope="module")
def counts():
    r = np.random.default_rng(21)
    return (r.negative_binomial(2, 0.05, (G, S)) * (r.random((G, S)) < 0.6)).astype(np.uint32)


@pytest.mark.parametrize("chunks", [(100, 1), (64, 67)])  # transposing / gene-major path
@pytest.mark.parametrize("kind", ["identity", "identity, unknown lengths", "permutation", "subset"])
def test_injective_and_identity_maps_match_reference(tmp_path, counts, chunks, kind):
    r = np.random.default_rng(len(kind))
    L = r.uniform(200, 9000, G)
    gm, n_out = None, G
    if kind == "identity, unknown lengths":
        L[[0, 7, 300]] = np.nan  # not mapped: columns 0, 7, 300 are uncovered (0)
    elif kind == "permutation":
        gm = r.permutation(G)
    elif kind == "subset":
        n_out = 211
        gm = np.full(G, -1)
        gm[r.choice(G, 200, replace=False)] = r.permutation(n_out)[:200]  # 11 columns unreached
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=counts, chunks=chunks, compression="gzip")
    samples = np.r_[np.arange(S), [3, 3, 60]]
    ref = log1p_tpm_ref(counts[:, samples].T, L, gm, n_out)
    with h5py.File(path) as f:
        got = read_matrix(f["x"], samples, gene_map=gm, lengths=L, n_out=n_out, engine="cpp")[0]
        got16 = read_matrix(
            f["x"], samples, gene_map=gm, lengths=L, n_out=n_out, dtype=np.float16, engine="cpp"
        )[0]
        # the same map with one duplicated gene takes the summing path: all other columns
        # must come out bit-identical
        dup = np.arange(G) if gm is None else gm.copy()
        src = np.flatnonzero(dup >= 0)
        dup[src[0]] = dup[src[1]]
        got_dup = read_matrix(f["x"], samples, gene_map=dup, lengths=L, n_out=n_out, engine="cpp")[
            0
        ]
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)
    m = np.arange(G) if gm is None else gm
    covered = np.zeros(n_out, bool)
    covered[m[(m >= 0) & np.isfinite(L) & (L > 0)]] = True
    # columns no gene reaches are 0 (the injective path leaves them to log1p_row)
    assert (got[:, ~covered] == 0).all()
    np.testing.assert_array_equal(got16, got.astype(np.float16))
    keep = np.setdiff1d(
        np.arange(n_out), [dup[src[0]], (np.arange(G) if gm is None else gm)[src[0]]]
    )
    np.testing.assert_array_equal(got_dup[:, keep] == 0, got[:, keep] == 0)
    uncovered = np.setdiff1d(np.arange(n_out), dup[dup >= 0])
    assert (
        got_dup[:, uncovered[uncovered != (np.arange(G) if gm is None else gm)[src[0]]]] == 0
    ).all()
