"""subset_corpus: a column slice of a corpus is a valid corpus with its own reference."""

import numpy as np
import pytest

from bulkformer.data.corpus import Corpus, CorpusStats
from bulkformer.eval._subset import most_variable_genes, subset_corpus


def test_subset_is_column_slice(corpus, tmp_path):
    full = Corpus.open(corpus.manifest["subset_of"]["corpus"])
    cols = full.reference.index_of(corpus.reference.gene_ids)
    assert (cols >= 0).all() and (np.diff(cols) > 0).all()
    np.testing.assert_array_equal(corpus.expression[:], full.expression[:, cols])
    np.testing.assert_array_equal(corpus.stats.std, full.stats.std[cols])
    np.testing.assert_array_equal(corpus.missing, full.missing[:, cols])
    assert corpus.stats.reference_id == corpus.reference.id != full.reference.id
    assert (corpus.samples == full.samples).all().all() and len(corpus) == 85
    # the 64 kept genes are the most variable expressed ones
    st = full.stats
    ok = (st.count > 0) & (st.mean >= 1.0)
    assert st.std[cols].min() >= np.sort(st.std[ok])[-64]
    # by ID, and bad requests
    sub = subset_corpus(full, tmp_path / "ids", genes=full.reference.gene_ids[[5, 2]])
    assert sub.reference.gene_ids.tolist() == full.reference.gene_ids[[2, 5]].tolist()
    with pytest.raises(FileExistsError):
        subset_corpus(full, tmp_path / "ids", n_genes=3)
    with pytest.raises(ValueError, match="exactly one"):
        subset_corpus(full, tmp_path / "x", n_genes=3, genes=[1])
    with pytest.raises(ValueError, match="not in the corpus"):
        subset_corpus(full, tmp_path / "x", genes=["ENSG_NOPE"])


def test_most_variable_genes():
    st = CorpusStats(
        mean=np.array([5.0, 0.1, 5.0, 5.0]),
        std=np.array([1.0, 9.0, 3.0, 0.0]),
        count=np.ones(4),
        reference_id="r",
        n=1,
    )
    assert most_variable_genes(st, 2).tolist() == [0, 2]  # gene 1 too low, gene 3 constant
    assert most_variable_genes(st, 3).tolist() == [0, 1, 2]  # threshold dropped
    with pytest.raises(ValueError, match="fewer"):
        most_variable_genes(st, 4)
