import json

import pytest
import torch

from bulkformer.model import PRESETS, BulkFormer, BulkFormerConfig


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(d_model=63, n_heads=1), "even"),
        (dict(d_model=64, n_heads=6), "not divisible by n_heads = 6"),
        (dict(n_genes=0), "n_genes"),
        (dict(n_layers=2.0), "n_layers"),
        (dict(n_heads=True), "n_heads"),
        (dict(dropout=1.0), "dropout"),
        (dict(ree_scale=0), "ree_scale"),
        (dict(mlp_ratio=-1), "mlp_ratio"),
        (dict(context_hidden=-4), "context_hidden"),
        (dict(pooling="sum"), "pooling"),
        (dict(attn_backend="xformers"), "attn_backend"),
        (dict(embed_backend="cuda"), "embed_backend"),
        (dict(reference_id=3), "reference_id"),
    ],
)
def test_bad_values_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        BulkFormerConfig(**kw)


def test_frozen_and_derived():
    c = BulkFormerConfig(d_model=64, n_heads=4)
    with pytest.raises(AttributeError):
        c.d_model = 32
    assert c.head_dim == 16 and c.context_width == 256 and c.mlp_width == 256
    assert c.replace(context_hidden=10).context_width == 10


def test_json_round_trip(tmp_path):
    c = BulkFormerConfig.from_preset("small", reference_id="gr-0123456789ab", dropout=0.1)
    assert BulkFormerConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "config.json")
    assert BulkFormerConfig.from_json(tmp_path / "config.json") == c
    assert json.loads(c.to_json())["d_model"] == 128


def test_json_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_modle'\]"):
        BulkFormerConfig.from_json('{"d_modle": 64}')
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BulkFormerConfig.from_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BulkFormerConfig.from_json(tmp_path / "bad.json")


def test_unknown_preset():
    with pytest.raises(ValueError, match="base100m"):
        BulkFormerConfig.from_preset("huge")


@pytest.mark.parametrize(
    "name,lo,hi", [("tiny", 4.5e6, 5.5e6), ("small", 12e6, 15e6), ("base100m", 105e6, 125e6)]
)
def test_preset_sizes(name, lo, hi):
    c = BulkFormerConfig.from_preset(name)
    with torch.device("meta"):  # count without allocating
        n = BulkFormer(c, esm=torch.empty(c.n_genes, c.d_esm)).num_parameters()
    assert lo <= n <= hi, n
    assert set(PRESETS) >= {"tiny", "base100m"}
