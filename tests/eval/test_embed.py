"""embed(): numpy / AnnData / corpus in, the same embeddings out; scanpy-style AnnData results."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from eval_data import demo_counts

from bulkformer.data.genes import ReferenceMismatchError
from bulkformer.data.memory import align_values
from bulkformer.data.normalize import log1p_tpm_ref, zscore_ref
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
    with pytest.raises(ValueError, match="no layer 'tpm'.*layers present"):
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
        prep = prepare_input(x[:, keep], pretrained, gene_ids=genes[keep])
    assert prep.n_matched == 20 and abs(prep.coverage - 20 / 64) < 1e-9
    assert "only 20 of 64 genes" in caplog.text
    assert prep.missing(np.arange(3)).sum(1).tolist() == [44, 44, 44]
    assert (prep.rows(np.arange(3))[prep.missing(np.arange(3))] == 0).all()
