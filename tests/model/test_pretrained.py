import numpy as np
import pytest
import torch

from bulkformer.data.corpus import CorpusStats
from bulkformer.data.genes import GeneReference, ReferenceMismatchError
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.pretrained import export_pretrained, load_pretrained


def _ref(n=37, tag=""):
    ids = np.array([f"ENSG{i:011d}{tag}" for i in range(n)], dtype=object)
    return GeneReference(ids, np.array([""] * n, dtype=object), np.full(n, 1000.0))


def _model(ref):
    cfg = BulkFormerConfig(
        n_genes=len(ref),
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_esm=8,
        context_hidden=8,
        reference_id=ref.id,
    )
    torch.manual_seed(0)
    return BulkFormer(cfg)


def test_round_trip(tmp_path):
    ref = _ref()
    r = np.random.default_rng(0)
    stats = CorpusStats(r.normal(size=37), r.uniform(0.5, 2, 37), np.full(37, 10.0), ref.id, 10)
    m = _model(ref).eval()
    out = export_pretrained(m, ref, stats, tmp_path / "ckpt", {"steps": 3})
    p = load_pretrained(out)
    assert p.reference.id == ref.id and p.metadata["steps"] == 3
    np.testing.assert_array_equal(p.stats.mean, stats.mean)
    x = torch.randn(2, 37)
    torch.testing.assert_close(p.model.eval()(x).pred, m(x).pred, rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_mismatches_refused(tmp_path):
    ref, other = _ref(), _ref(tag="X")
    stats = CorpusStats(np.zeros(37), np.ones(37), np.ones(37), other.id, 1)
    with pytest.raises(ReferenceMismatchError, match="statistics"):
        export_pretrained(_model(ref), ref, stats, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a pretrained BulkFormer"):
        load_pretrained(tmp_path)
