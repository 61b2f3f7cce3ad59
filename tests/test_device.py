"""bulkformer._device.resolve_device: the one device picker of model, train, eval and esm."""

import pytest
import torch

from bulkformer._device import resolve_device


def test_auto_and_none_follow_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")  # torch's current CUDA device
    assert resolve_device(None, local_rank=3) == torch.device("cuda", 1)  # rank modulo count
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)


def test_explicit_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    d = torch.device("meta")
    assert resolve_device(d) is d


def test_every_layer_uses_the_one_function():
    import importlib

    mod = importlib.import_module  # (the packages re-export functions of the same names)
    _embed, embed, distributed = (
        mod(m)
        for m in ("bulkformer.esm._embed", "bulkformer.eval.embed", "bulkformer.train.distributed")
    )
    finetune, impute = mod("bulkformer.eval.finetune"), mod("bulkformer.eval.impute")
    assert distributed.resolve_device is embed.resolve_device is resolve_device
    assert _embed.resolve_device is resolve_device
    for mod in (finetune, impute):
        assert "from .._device import resolve_device" in open(mod.__file__).read()
