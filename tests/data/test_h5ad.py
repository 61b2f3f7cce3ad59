import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from corpus_data import make_source_data, pipeline_ref

from bulkformer.data.array import ArraySource
from bulkformer.data.corpus import assign_splits, build_corpus
from bulkformer.data.h5ad import H5ADSource
from bulkformer.data.oracle import log1p_tpm_ref, qc_ref
from bulkformer.data.source import align_genes


def _data(S=29, genes=range(1, 42)):
    c, g, s = make_source_data(S, list(genes), seed=9)
    g[7] = g[6].split(".")[0] + ".2"  # duplicate gene ID (summed)
    ln = np.random.default_rng(3).uniform(500, 6000, len(g))
    ln[::13] = np.nan
    return c, g, s, ln


def _write(path, X, g, s, ln, *, layers=None, var_ids=True):
    var = pd.DataFrame(
        {"length": ln, "ensembl": g},
        index=pd.Index(g if var_ids else [f"sym{i}" for i in range(len(g))]),
    )
    ad.AnnData(X=X, obs=s, var=var, layers=layers or {}).write_h5ad(path)
    return path


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_counts_match_reference(tmp_path, reference, fmt):
    c, g, s, ln = _data()
    X = {
        "dense": c.astype(np.float32),
        "csr": sp.csr_matrix(c.astype(np.float32)),
        "csc": sp.csc_matrix(c.astype(np.float32)),
    }[fmt]
    src = H5ADSource(_write(tmp_path / "x.h5ad", X, g, s, ln), length_column="length")
    assert src.n_samples == len(c) and src.samples.index.tolist() == s.index.tolist()
    al = src.align(reference)
    want_al = align_genes(g, reference, source_lengths=ln)
    np.testing.assert_array_equal(al.covered, want_al.covered)
    rows = np.array([5, 2, 17, 3, 4, 28])  # any order, gaps
    blk = src.read_block(rows, al)
    want = log1p_tpm_ref(c[rows], want_al.lengths, want_al.gene_map, len(reference))
    assert blk.values.dtype == np.float32 and blk.values.shape == (len(rows), len(reference))
    np.testing.assert_allclose(blk.values, want, rtol=1e-6, atol=1e-6)
    nz, tot = qc_ref(c[rows])
    np.testing.assert_array_equal(blk.nonzero, nz)
    np.testing.assert_array_equal(blk.total, tot)
    np.testing.assert_allclose(
        src.read_block(np.arange(4, 11), al).values,
        log1p_tpm_ref(c[4:11], want_al.lengths, want_al.gene_map, len(reference)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_tpm_and_log1p_tpm_taken_as_given(tmp_path, reference):
    c, g, s, ln = _data()
    tpm = c / c.sum(axis=1, keepdims=True) * 1e6
    path = _write(tmp_path / "t.h5ad", np.log1p(tpm), g, s, ln, layers={"tpm": tpm})
    t = H5ADSource(path, layer="tpm", values="tpm")
    lg = H5ADSource(path, values="log1p_tpm")
    al = t.align(reference)
    gm = al.gene_map
    assert al.covered.sum() == len(np.unique(gm[gm >= 0]))  # lengths irrelevant
    want = np.zeros((len(c), len(reference)))
    for j in np.flatnonzero(gm >= 0):
        want[:, gm[j]] += tpm[:, j]  # duplicates summed in TPM space, not renormalised
    want = np.log1p(want)
    rows = np.arange(len(c))
    np.testing.assert_allclose(t.read_block(rows, al).values, want, rtol=1e-6)
    np.testing.assert_allclose(lg.read_block(rows, lg.align(reference)).values, want, rtol=1e-5)


def test_gene_column_and_errors(tmp_path, reference):
    c, g, s, ln = _data()
    path = _write(
        tmp_path / "x.h5ad",
        c.astype(np.float32),
        g,
        s,
        ln,
        layers={"raw": c.astype(np.float32)},
        var_ids=False,
    )
    src = H5ADSource(path, gene_column="ensembl", layer="raw")
    assert src.gene_ids.tolist() == list(g)
    with pytest.raises(ValueError, match="no layer 'counts'.*raw"):
        H5ADSource(path, layer="counts")
    with pytest.raises(ValueError, match="no column 'gene_ids'.*length, ensembl"):
        H5ADSource(path, gene_column="gene_ids")
    with pytest.raises(ValueError, match="values="):
        H5ADSource(path, values="fpkm")
    with pytest.raises(FileNotFoundError):
        H5ADSource(tmp_path / "nope.h5ad")
    # var_names are symbols here: no overlap with the reference → clear error, nothing written
    with pytest.raises(ValueError, match="unknown gene ID scheme"):
        build_corpus(H5ADSource(path), tmp_path / "c", reference, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "bad, match",
    [("nan", "non-finite"), ("neg", "negative"), ("frac", "non-integer.*values='tpm'")],
)
def test_bad_counts_found_mid_build(tmp_path, reference, bad, match):
    c, g, s, ln = _data()
    X = c.astype(np.float32)
    X[20, 3] = {"nan": np.nan, "neg": -1.0, "frac": 2.5}[bad]
    path = _write(tmp_path / "x.h5ad", X, g, s, ln)
    src = H5ADSource(path, length_column="length")
    with pytest.raises(ValueError, match=match) as e:
        build_corpus(src, tmp_path / "c", reference, min_nonzero=0, block_size=8, progress=False)
    assert "S9_20" in str(e.value)  # names the sample
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_corpus_from_h5ad_equals_numpy_reference_and_array_source(tmp_path, reference):
    c, g, s, ln = _data(S=53)
    path = _write(tmp_path / "x.h5ad", sp.csr_matrix(c.astype(np.float32)), g, s, ln)
    kw = dict(label="tissue", min_nonzero=31, block_size=6, progress=False)
    a = build_corpus(H5ADSource(path, length_column="length"), tmp_path / "a", reference, **kw)
    b = build_corpus(ArraySource(c, g, s, lengths=ln), tmp_path / "b", reference, **kw)
    assert (a.path / "expression.npy").read_bytes() == (b.path / "expression.npy").read_bytes()
    split = assign_splits(len(c), seed=0, labels=s["tissue"].to_numpy())
    want = pipeline_ref([(c, g, ln)], reference, min_nonzero=31, split=split)
    assert len(a) == want["keep"].sum() < len(c)
    np.testing.assert_allclose(a.expression, want["z"].astype(np.float16), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(a.missing[0], want["missing"][0])


def test_symbol_indexed_h5ad_matched_by_symbol(tmp_path, reference, caplog):
    """Many .h5ad files index genes by symbol: with no Ensembl ID match, symbols are used."""
    c, g, s, ln = _data()
    al_ids = align_genes(g, reference)
    pos = al_ids.gene_map
    sym = np.array(
        [reference.symbols[p] if p >= 0 else f"NOTAGENE{i}" for i, p in enumerate(pos)], object
    )
    uniq = ~pd.Series(sym).duplicated(keep=False).to_numpy()
    path = tmp_path / "sym.h5ad"
    var = pd.DataFrame(index=pd.Index(np.where(uniq, sym, [f"DUP{i}" for i in range(len(sym))])))
    ad.AnnData(X=c.astype(np.float32), obs=s, var=var).write_h5ad(path)
    src = H5ADSource(path)
    with caplog.at_level("WARNING"):
        al = src.align(reference)
    assert "matched by gene symbol" in caplog.text
    want = np.where(uniq & (pos >= 0), pos, -1)
    ref_sym = pd.Series(reference.symbols)
    ambiguous = ref_sym.duplicated(keep=False).to_numpy() | (ref_sym == "").to_numpy()
    want = np.where((want >= 0) & ~ambiguous[np.maximum(want, 0)], want, -1)
    np.testing.assert_array_equal(al.gene_map, want)
    assert al.n_matched > 0
