import numpy as np
import pandas as pd

from bulkformer.data.genes import GeneReference
from bulkformer.data.source import align_genes


def _ref():
    ids = np.array(["ENSG01", "ENSG02", "ENSG03", "ENSG04"], dtype=object)
    return GeneReference(
        ids, np.array(["A", "B", "C", "D"], dtype=object), np.array([100.0, np.nan, 300.0, np.nan])
    )


def test_lengths_lookup_order_and_fallback():
    ref = _ref()
    src = ["ENSG03.7", "ENSG02.1", "ENSG99.1", "ENSG01", "ENSG03"]
    table = pd.Series({"ENSG01": 111.0, "ENSG99": 999.0})
    al = align_genes(src, ref, default_lengths=table)
    assert al.gene_map.tolist() == [2, 1, -1, 0, 2]
    # table first, then the reference, then the 1 kb fallback (reference genes only)
    np.testing.assert_array_equal(al.lengths, [300.0, 1000.0, 999.0, 111.0, 300.0])
    assert al.n_fallback_length == 1 and al.n_duplicates == 1
    assert al.covered.tolist() == [True, True, True, False]
    strict = align_genes(src, ref, default_lengths=table, fallback_length=None)
    assert np.isnan(strict.lengths[1]) and strict.n_unknown_length == 1
    assert strict.covered.tolist() == [True, False, True, False]
    assert "matched 2 / 4 reference genes" in strict.report()


def test_symbol_fallback_only_when_asked():
    ref = _ref()
    al = align_genes(["X1", "ENSG04"], ref, source_symbols=["B", "D"], by_symbol=True)
    assert al.gene_map.tolist() == [1, 3]
    assert align_genes(["X1", "ENSG04"], ref).gene_map.tolist() == [-1, 3]
