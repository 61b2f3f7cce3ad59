"""derive_corpus / select_genes: a gene subset of a corpus is an ordinary corpus."""

import numpy as np
import pytest

from bulkformer.data.archs4 import ARCHS4Source
from bulkformer.data.corpus import Corpus, build_corpus
from bulkformer.data.demo import demo_path
from bulkformer.data.derive import derive_corpus, select_genes
from bulkformer.data.genes import GeneReference


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("derive") / "demo"
    return build_corpus(ARCHS4Source(demo_path()), out, min_nonzero=9000, progress=False)


def test_select_genes_by_variance_mean_first(demo):
    st, obs = demo.stats, ~demo.missing.all(0)
    ref = select_genes(demo, 50)
    cols = demo.reference.index_of(ref.gene_ids)
    assert np.all(np.diff(cols) > 0)  # parent order
    assert obs[cols].all()
    # the 50 largest σ among observed genes
    assert st.std[cols].min() >= np.sort(st.std[obs])[-50]
    top_mean = demo.reference.index_of(select_genes(demo, 50, by="mean").gene_ids)
    assert st.mean[top_mean].min() >= np.sort(st.mean[obs & (st.std > 0)])[-50]
    first = demo.reference.index_of(select_genes(demo, 5, by="first").gene_ids)
    assert first.tolist() == np.flatnonzero(obs & (st.std > 0))[:5].tolist()
    assert "selected by variance" in ref.provenance["subset"]
    with pytest.raises(ValueError, match="observed genes"):
        select_genes(demo, demo.n_genes)
    with pytest.raises(ValueError, match="by must be"):
        select_genes(demo, 5, by="random")


def test_derived_corpus_is_the_parent_restricted(demo, tmp_path):
    d = derive_corpus(demo, tmp_path / "d", n_genes=40)
    d = Corpus.open(d.path)  # a normal corpus on disk
    cols = demo.reference.index_of(d.reference.gene_ids)
    assert d.n_genes == 40 and d.reference.id != demo.reference.id
    assert np.array_equal(d.expression, demo.expression[:, cols])
    assert np.array_equal(d.missing, demo.missing[:, cols])
    assert np.array_equal(d.stats.mean, demo.stats.mean[cols])
    assert d.stats.reference_id == d.reference.id
    assert all(np.array_equal(d.splits[k], demo.splits[k]) for k in d.splits)
    assert d.samples.equals(demo.samples)
    src = d.manifest["derived_from"]
    assert src["reference_id"] == demo.reference.id and src["n_genes_kept"] == 40
    with pytest.raises(FileExistsError):
        derive_corpus(demo, tmp_path / "d", n_genes=40)
    # explicit genes, given out of order, are kept in the parent's order
    r = demo.reference
    pick = np.array([cols[5], cols[1], cols[3]])
    sub = GeneReference(r.gene_ids[pick], r.symbols[pick], r.lengths[pick])
    e = derive_corpus(demo, tmp_path / "e", genes=sub)
    assert e.reference.gene_ids.tolist() == r.gene_ids[np.sort(pick)].tolist()
    bogus = GeneReference(np.array(["ENSG99999999999"], dtype=object), ["x"], [1.0])
    with pytest.raises(ValueError, match="not in the reference"):
        derive_corpus(demo, tmp_path / "f", genes=bogus)
