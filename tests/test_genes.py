import numpy as np
import pytest

from bulkformer.data.genes import GeneReference, ReferenceMismatchError, strip_version


def _ref():
    return GeneReference(
        np.array(["ENSG00000000003", "ENSG00000000005", "ENSG00000000419"], dtype=object),
        np.array(["TSPAN6", "TNMD", "DPM1"], dtype=object),
        np.array([4536.0, np.nan, 2374.0]),
        {"source": "test"},
    )


def test_strip_version_keeps_par_y():
    out = strip_version(["ENSG00000141510.17", "ENSG00000002586.20_PAR_Y", "FOO.1"])
    assert out.tolist() == ["ENSG00000141510", "ENSG00000002586_PAR_Y", "FOO.1"]


def test_index_of_with_versions():
    ref = _ref()
    idx = ref.index_of(["ENSG00000000419.12", "ENSG99999999999", "ENSG00000000003"])
    assert idx.tolist() == [2, -1, 0]


def test_tsv_round_trip(tmp_path):
    ref = _ref()
    for name in ("ref.tsv", "ref.tsv.gz"):
        ref.to_tsv(tmp_path / name)
        back = GeneReference.from_tsv(tmp_path / name)
        assert back.id == ref.id
        assert back.symbols.tolist() == ref.symbols.tolist()
        np.testing.assert_array_equal(back.lengths, ref.lengths)
        assert back.provenance["source"] == "test"


def test_id_depends_on_order_and_mismatch_is_error():
    ref = _ref()
    rev = GeneReference(ref.gene_ids[::-1], ref.symbols[::-1], ref.lengths[::-1])
    assert rev.id != ref.id
    with pytest.raises(ReferenceMismatchError, match="gene reference"):
        ref.check_same(rev.id, "corpus X")


def test_duplicates_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        GeneReference(
            np.array(["A", "A"], dtype=object),
            np.array(["a", "b"], dtype=object),
            np.array([1.0, 2.0]),
        )
