"""embed(): numpy / AnnData / corpus in, the same embeddings out; scanpy-style AnnData results."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from eval_data import demo_counts

from bulkformer.data.genes import ReferenceMismatchError
from bulkformer.data.matrix import align_values
from bulkformer.data.oracle import log1p_tpm_ref, zscore_ref
from bulkformer.eval import embed, prepare_input


@pytest.fixture(scope="module")
def counts():
    return demo_counts()


def _adata(counts):
    x, genes, sex, gsm = counts
    obs = pd.DataFrame({"sex": sex}, index=pd.Index(gsm))
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


def test_numpy_matches_reference_pipeline(counts, pretrained):
    """counts → TPM → log1p → z (numpy references) → model.embed_samples, by hand."""
    x, genes, _, _ = counts
    emb = embed(x, pretrained, gene_ids=genes, progress=False)
    assert isinstance(emb, np.ndarray) and emb.shape == (85, 16) and emb.dtype == np.float32
    ref, st = pretrained.reference, pretrained.stats
    al = align_values(genes, ref, "counts")
    v = log1p_tpm_ref(x, al.lengths, al.gene_map, len(ref))
    z = zscore_ref(v, st.mean, st.std, al.covered)
    zt, miss = torch.from_numpy(z.astype(np.float32)), torch.from_numpy(~al.covered)
    with torch.no_grad():
        want = pretrained.model.embed_samples(zt, miss, "sample")  # the default: sample vector
        mean = pretrained.model.embed_samples(zt, miss, "mean")
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(want.numpy(), mean.numpy(), atol=1e-3)
    emb_mean = embed(x, pretrained, gene_ids=genes, how="mean", progress=False)
    np.testing.assert_allclose(emb_mean, mean.numpy(), rtol=1e-4, atol=1e-5)
    # batch size does not change the result
    emb3 = embed(x, pretrained, gene_ids=genes, batch_size=3, progress=False)
    np.testing.assert_allclose(emb3, emb, rtol=1e-4, atol=1e-5)


def test_corpus_equals_numpy_up_to_float16(counts, corpus, pretrained):
    x, genes, _, _ = counts
    a = embed(corpus, pretrained, progress=False)
    b = embed(x, pretrained, gene_ids=genes, progress=False)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=0.05)  # corpus stores z in float16


def test_anndata_inplace_sets_only_obsm_and_uns(counts, ckpt):
    adata = _adata(counts)
    X0, obs0, var0 = adata.X.copy(), adata.obs.copy(), adata.var.copy()
    out = embed(adata, ckpt, progress=False)
    assert out is None
    assert list(adata.obsm.keys()) == ["X_bulkformer"]
    assert adata.obsm["X_bulkformer"].shape == (85, 16)
    u = adata.uns["bulkformer"]
    assert u["model"] == str(ckpt) and u["pooling"] == "sample" and u["coverage"] == 1.0
    assert u["reference_id"] == pretrained_ref_id(ckpt)
    np.testing.assert_array_equal(adata.X, X0)
    pd.testing.assert_frame_equal(adata.obs, obs0)
    pd.testing.assert_frame_equal(adata.var, var0)
    assert not adata.layers.keys() and not adata.varm.keys()


def pretrained_ref_id(ckpt):
    from bulkformer.model.pretrained import load_pretrained

    return load_pretrained(ckpt).reference.id


def test_anndata_copy_leaves_input_alone(counts, pretrained):
    adata = _adata(counts)
    new = embed(adata, pretrained, copy=True, key_added="X_bf", how="max", progress=False)
    assert "X_bf" in new.obsm and "X_bf" not in adata.obsm and "bulkformer" not in adata.uns
    assert new.uns["bulkformer"]["pooling"] == "max"
    np.testing.assert_allclose(
        new.obsm["X_bf"],
        embed(counts[0], pretrained, gene_ids=counts[1], how="max", progress=False),
        rtol=1e-5,
        atol=1e-6,
    )


def test_anndata_layer_gene_column_and_z(counts, corpus, pretrained):
    x, genes, sex, gsm = counts
    adata = ad.AnnData(
        X=np.zeros_like(x, dtype=np.float32),
        obs=pd.DataFrame(index=pd.Index(gsm)),
        var=pd.DataFrame({"ensembl": genes}, index=[f"g{i}" for i in range(len(genes))]),
        layers={"counts": x.astype(np.float32)},
    )
    embed(adata, pretrained, layer="counts", gene_column="ensembl", progress=False)
    np.testing.assert_allclose(
        adata.obsm["X_bulkformer"],
        embed(x, pretrained, gene_ids=genes, progress=False),
        rtol=1e-5,
        atol=1e-6,
    )
    zad = corpus.to_anndata()  # X = z-scores of the checkpoint's own corpus
    embed(zad, pretrained, values="z", progress=False)
    np.testing.assert_allclose(
        zad.obsm["X_bulkformer"], embed(corpus, pretrained, progress=False), atol=1e-5
    )


def test_gene_level_pools_to_sample_embedding(counts, pretrained):
    x, genes, _, _ = counts
    emb, g = embed(x[:5], pretrained, gene_ids=genes, how="mean", gene_level=True, progress=False)
    assert g.shape == (5, 64, 16)
    np.testing.assert_allclose(g.mean(1), emb, rtol=1e-5, atol=1e-5)  # all 64 genes covered


def test_bad_inputs(counts, corpus, pretrained, tmp_path):
    x, genes, _, _ = counts
    adata = _adata(counts)
    with pytest.raises(ValueError, match="AnnData: no layer 'tpm'; available layers"):
        embed(adata, pretrained, layer="tpm", progress=False)
    with pytest.raises(ValueError, match="var has no column 'gene'"):
        embed(adata, pretrained, gene_column="gene", progress=False)
    with pytest.raises(ValueError, match="gene_ids"):
        embed(x, pretrained, progress=False)
    with pytest.raises(ValueError, match="values="):
        embed(x, pretrained, gene_ids=genes, values="fpkm", progress=False)
    with pytest.raises(ValueError, match="non-integer"):
        embed(x + 0.5, pretrained, gene_ids=genes, progress=False)
    with pytest.raises(ValueError, match="shape"):
        embed(x[:, :-1], pretrained, gene_ids=genes, progress=False)
    # the 64-gene checkpoint cannot read the full 19,944-gene corpus it was cut from
    full = corpus.manifest["derived_from"]["path"]
    with pytest.raises(ReferenceMismatchError, match="rebuild the corpus"):
        embed(full, pretrained, progress=False)


def test_low_coverage_warns(counts, pretrained, caplog):
    x, genes, _, _ = counts
    keep = np.isin(genes, pretrained.reference.gene_ids[:20]) | ~np.isin(
        genes, pretrained.reference.gene_ids
    )
    with caplog.at_level(logging.WARNING, logger="bulkformer.eval.embed"):
        prep = prepare_input(x[:, keep], pretrained, gene_ids=genes[keep], min_gene_overlap=0.2)
    assert prep.n_matched == 20 and abs(prep.coverage - 20 / 64) < 1e-9
    assert "only 20 of 64 genes" in caplog.text
    assert prep.missing(np.arange(3)).sum(1).tolist() == [44, 44, 44]
    assert (prep.rows(np.arange(3))[prep.missing(np.arange(3))] == 0).all()


# ---------------------------------------------------------------- input refusals (issue 12)
def _tpm(counts):
    x, genes, _, _ = counts
    tpm = x / x.sum(1, keepdims=True) * 1e6
    return tpm, genes


def test_gene_symbols_are_matched_like_the_h5ad_reader(counts, pretrained):
    """A matrix indexed by gene symbol gives the embeddings of the same matrix indexed by
    Ensembl ID (TPM: no lengths involved), not all-zero ones."""
    tpm, genes = _tpm(counts)
    ref = pretrained.reference
    pos = pd.Index(ref.gene_ids).get_indexer(genes)
    symbols = np.where(
        pos >= 0, ref.symbols[np.maximum(pos, 0)], [f"nope{i}" for i in range(len(genes))]
    )
    by_id = embed(tpm, pretrained, gene_ids=genes, values="tpm", progress=False)
    by_sym = embed(tpm, pretrained, gene_ids=symbols, values="tpm", progress=False)
    assert prepare_input(tpm, pretrained, gene_ids=symbols, values="tpm").n_matched == 64
    np.testing.assert_array_equal(by_sym, by_id)
    assert np.abs(by_sym).max() > 0


def test_no_overlap_is_refused_naming_input_count_and_examples(counts, pretrained):
    x, genes, _, _ = counts
    junk = np.array([f"XYZ{i}" for i in range(len(genes))], dtype=object)
    with pytest.raises(ValueError, match=r"input matrix: only 0 of 64 genes.*'XYZ0', 'XYZ1'"):
        embed(x, pretrained, gene_ids=junk, progress=False)
    with pytest.raises(ValueError, match=r"only 0 of 64"):
        embed(x, pretrained, gene_ids=junk, min_gene_overlap=0, progress=False)  # never empty


def test_overlap_below_the_floor_is_refused(counts, pretrained):
    x, genes, _, _ = counts
    keep = np.isin(genes, pretrained.reference.gene_ids[:20]) | ~np.isin(
        genes, pretrained.reference.gene_ids
    )
    with pytest.raises(ValueError, match=r"only 20 of 64 .* below min_gene_overlap=0.5"):
        embed(x[:, keep], pretrained, gene_ids=genes[keep], progress=False)
    emb = embed(x[:, keep], pretrained, gene_ids=genes[keep], min_gene_overlap=0.3, progress=False)
    assert np.isfinite(emb).all()
    with pytest.raises(ValueError, match=r"only 20 of 64"):
        embed(x[:, keep], pretrained, gene_ids=genes[keep], min_gene_overlap=0.32, progress=False)
    with pytest.raises(ValueError, match="min_gene_overlap=1.5"):
        embed(x, pretrained, gene_ids=genes, min_gene_overlap=1.5, progress=False)


@pytest.mark.parametrize(
    "values, bad, match",
    [
        ("counts", -3.0, "negative"),
        ("counts", np.inf, "non-finite"),
        ("tpm", np.nan, "non-finite"),
        ("tpm", 2e6, r"above 1e6"),
        ("log1p_tpm", 14.0, r"above ln\(1e6 \+ 1\)"),
        ("log1p_tpm", -0.5, "negative"),
        ("z", 1e30, r"beyond ±65504"),
        ("z", -np.inf, "non-finite"),
    ],
)
def test_non_physical_values_are_refused(counts, pretrained, values, bad, match):
    tpm, genes = _tpm(counts)
    x = {"counts": counts[0].astype(np.float64), "tpm": tpm, "log1p_tpm": np.log1p(tpm)}.get(
        values, np.zeros_like(tpm)
    )
    x = np.array(x, dtype=np.float64)
    x[3, np.flatnonzero(np.isin(genes, pretrained.reference.gene_ids))[5]] = bad
    with pytest.raises(ValueError, match=match):
        embed(x, pretrained, gene_ids=genes, values=values, progress=False)


def test_largest_physical_values_are_accepted(counts, pretrained):
    tpm, genes = _tpm(counts)
    top = np.zeros_like(tpm)
    top[:, np.flatnonzero(np.isin(genes, pretrained.reference.gene_ids))[0]] = 1e6
    assert np.isfinite(embed(top, pretrained, gene_ids=genes, values="tpm", progress=False)).all()
    z = np.full(tpm.shape, 65504.0)
    assert np.isfinite(embed(z, pretrained, gene_ids=genes, values="z", progress=False)).all()
    lg = np.log1p(top).astype(np.float32)  # float32 rounding of ln(1e6 + 1) is not refused
    assert np.isfinite(
        embed(lg, pretrained, gene_ids=genes, values="log1p_tpm", progress=False)
    ).all()


@pytest.mark.parametrize("bs", [0, -2, 1.5])
def test_batch_size_below_one_is_a_clear_error(counts, pretrained, bs):
    x, genes, _, _ = counts
    with pytest.raises(ValueError, match=rf"batch_size={bs!r}: expected a whole number"):
        embed(x[:4], pretrained, gene_ids=genes, batch_size=bs, progress=False)


def test_cli_batch_size_zero_is_a_clear_error(corpus, ckpt, tmp_path, capsys):
    from bulkformer.cli import main

    argv = [
        "embed",
        "--checkpoint",
        str(ckpt),
        "--corpus",
        str(corpus.path),
        "--out",
        str(tmp_path / "e.npy"),
        "--batch-size",
        "0",
    ]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "--batch-size: '0': expected a whole number ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_expression_sources_embed_like_their_matrices(counts, pretrained, tmp_path):
    """An ExpressionSource (an .h5ad file read block by block, an ArraySource) gives the
    embeddings of the same numbers passed as AnnData / numpy."""
    from bulkformer.data.array import ArraySource
    from bulkformer.data.h5ad import H5ADSource

    x, genes, _, _ = counts
    adata = _adata(counts)
    adata.write_h5ad(tmp_path / "x.h5ad")
    kw = dict(batch_size=7, progress=False)  # same batches: same model arithmetic
    want = embed(adata, pretrained, copy=True, **kw).obsm["X_bulkformer"]
    np.testing.assert_array_equal(embed(H5ADSource(tmp_path / "x.h5ad"), pretrained, **kw), want)
    np.testing.assert_array_equal(embed(ArraySource(x, genes), pretrained, **kw), want)
