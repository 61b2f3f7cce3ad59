import json
import logging

import numpy as np
import pytest
import torch

from bulkformer.data.corpus import CorpusStats
from bulkformer.data.genes import GeneReference, ReferenceMismatchError
from bulkformer.model import BulkFormer, BulkFormerConfig
from bulkformer.model.pretrained import CorruptFileError, export_pretrained, load_pretrained


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


def _export(tmp_path):
    ref = _ref()
    r = np.random.default_rng(0)
    stats = CorpusStats(r.normal(size=37), r.uniform(0.5, 2, 37), np.full(37, 10.0), ref.id, 10)
    return export_pretrained(_model(ref).eval(), ref, stats, tmp_path / "ckpt", {"loss": np.nan})


def test_flipped_weight_bytes_are_refused_naming_the_file_and_digests(tmp_path):
    """200 flipped bytes in the tensor data of model.safetensors (a file that still parses and
    embeds) are refused with both digests; so is a changed genes.tsv."""
    out = _export(tmp_path)
    meta = json.loads((out / "bulkformer.json").read_text())  # strict JSON: NaN became null
    assert meta["loss"] is None and set(meta["files"]) == {
        "config.json",
        "model.safetensors",
        "genes.tsv",
        "stats.npz",
    }
    w = out / "model.safetensors"
    b = bytearray(w.read_bytes())
    pos = np.random.default_rng(1).choice(np.arange(len(b) - 2000, len(b)), 200, replace=False)
    for i in pos:
        b[i] ^= 0x5A
    w.write_bytes(bytes(b))
    BulkFormer.from_pretrained(out)  # still a valid safetensors file: only a digest sees it
    with pytest.raises(CorruptFileError, match=r"model\.safetensors: corrupt.*expected") as e:
        load_pretrained(out)
    assert meta["files"]["model.safetensors"] in str(e.value)


def test_truncated_weights_and_exports_without_checksums(tmp_path, caplog):
    out = _export(tmp_path)
    meta_path = out / "bulkformer.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]  # as an older bulkformer exported it
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        load_pretrained(out)
    assert "no file checksums" in caplog.text
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match=r"model\.safetensors: not a readable safetensors"):
        load_pretrained(out)
