"""Checkpoints: ``zoo.checkpoint_io.save`` / ``load`` round trips, refusal of code-carrying pickles, errors.

Models are reduced to one block per stage: the round trip is per tensor, so what matters is that
every kind of tensor appears (parameters, BatchNorm buffers including ``num_batches_tracked``,
KernelWarehouse cells shared across layers, relative-position tables), not how many there are.
"""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from torch import nn

import zoo  # noqa: F401  (registers the models)
from unifiedops.testing import randomize_
from unifiedops.warehouse import Warehouse
from zoo.checkpoint_io import load, read_metadata, save

SUFFIXES = (".safetensors", ".pth")
MODELS = {
    "kw_resnet18_1x": {"layers": (1, 1, 1, 1)},
    "van_b0": {"depths": (1, 1, 1, 1)},  # BatchNorm in every block
    "dwnet_tiny": {"depths": (1, 1, 1, 1)},
    "swin_tiny": {"depths": (1, 1, 1, 1)},
}


def _randomized(name: str) -> nn.Module:
    """The model with every parameter, BN statistic and ``num_batches_tracked`` off its initial value."""
    torch.manual_seed(0)
    model = randomize_(timm.create_model(name, **MODELS[name]))
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                value.fill_(1234)
    return model


def _assert_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_exact(tmp_path, name, suffix):
    model = _randomized(name)
    path = tmp_path / f"model{suffix}"
    save(model, path, metadata={"epoch": "7"})
    loaded = load(name, path, **MODELS[name])
    _assert_identical(loaded, model)
    fresh = timm.create_model(name, **MODELS[name])
    assert load(fresh, path) is fresh
    _assert_identical(fresh, model)
    assert read_metadata(path)["epoch"] == "7"
    assert read_metadata(path)["zoo.architecture"] == name
    keys = model.state_dict()
    assert any(k.endswith("running_var") for k in keys) or name == "swin_tiny"
    assert all("temp_bias" not in k for k in keys)  # non-persistent buffers are not written


def _warehouse_layers(model: nn.Module) -> dict[int, list[nn.Module]]:
    layers: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        if hasattr(m, "warehouse_id") and hasattr(m, "warehouse_manager"):
            layers.setdefault(m.warehouse_id, []).append(m)
    return layers


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_loaded_kernel_warehouse_cells_stay_shared(tmp_path, suffix):
    """After loading, the layers of a warehouse still read one tensor (not copies), and a training step
    on the loaded model equals one on the original, bit for bit."""
    name = "kw_resnet18_1x"
    model = _randomized(name)
    path = tmp_path / f"kw{suffix}"
    save(model, path)
    loaded = load(name, path, **MODELS[name])
    manager = loaded.warehouse_manager
    assert isinstance(manager, Warehouse)
    shared = {idx: layers for idx, layers in _warehouse_layers(loaded).items() if len(layers) > 1}
    assert shared, "the test needs a warehouse shared by several layers"
    for idx, layers in shared.items():
        cells = manager.weights[idx]
        for layer in layers:
            assert layer.warehouse_manager[0] is manager
            assert layer.warehouse_manager[0].take_cell(idx).data_ptr() == cells.data_ptr()

    x = torch.randn(2, 3, 32, 32)
    for m in (model, loaded):
        torch.manual_seed(1)
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        m(x).square().mean().backward()
        optimizer.step()
    _assert_identical(loaded, model)
    before = load(name, path, **MODELS[name]).warehouse_manager.weights[0]
    assert not torch.equal(manager.weights[0], before)  # the step moved the shared cells


def test_tied_weights_are_written_once_and_stay_tied(tmp_path):
    """safetensors refuses tensors that share memory; tied names are written once and restored."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    path = tmp_path / "tied.safetensors"
    save(model, path)
    copy = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    copy[1].weight = copy[0].weight
    load(copy, path)
    _assert_identical(copy, model)
    assert copy[1].weight is copy[0].weight
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == 3  # one weight, two biases


def test_a_pickle_carrying_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"import pathlib; pathlib.Path({str(marker)!r}).touch()",)

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "extra": Payload()}, path)
    model = nn.Linear(2, 1)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        load(model, path)
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_timm_style_checkpoints_load(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    randomize_(model)
    state = model.state_dict()
    for i, checkpoint in enumerate(
        (
            {"state_dict": state, "epoch": 3, "arch": "x"},
            {"model": state},
            {f"module.{k}": v for k, v in state.items()},
        )
    ):
        torch.save(checkpoint, tmp_path / f"c{i}.pth")
        copy = load(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), tmp_path / f"c{i}.pth")
        _assert_identical(copy, model)


def test_errors(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="path must end in"):
        save(model, tmp_path / "model.ckpt")
    with pytest.raises(TypeError, match="path"):
        save(model, 3)
    with pytest.raises(TypeError, match="model"):
        save("resnet", tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        save(model, tmp_path / "m.safetensors", metadata={"format": "x"})
    with pytest.raises(TypeError, match="metadata"):
        save(model, tmp_path / "m.safetensors", metadata={"epoch": 3})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load(model, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="path must end in"):
        load(model, tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="name_or_model must be a timm model name"):
        load("no_such_model", tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="name_or_model"):
        load(3, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="create_kwargs"):
        load(model, tmp_path / "m.safetensors", depths=(1,))

    path = tmp_path / "m.safetensors"
    save(model, path)
    assert not list(tmp_path.glob("*.partial"))
    before = model[0].weight.detach().clone()
    wider = nn.Sequential(nn.Linear(4, 5))
    with pytest.raises(ValueError, match=r"shapes differ.*0\.weight: checkpoint \(3, 4\), model \(5, 4\)"):
        load(wider, path)
    extra = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: 1\.bias, 1\.weight"):
        load(extra, path)
    load(extra, path, strict=False)
    torch.testing.assert_close(extra[0].weight, before, rtol=0, atol=0)
    fewer = nn.Sequential(nn.Identity())
    with pytest.raises(ValueError, match=r"not in the model: 0\.bias, 0\.weight"):
        load(fewer, path)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="must hold a state dict"):
        load(model, tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(ValueError, match="'state_dict' or 'model'"):
        load(model, tmp_path / "nostate.pth")


def test_a_failed_load_changes_nothing(tmp_path):
    path = tmp_path / "m.pth"
    save(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 9)), path)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shapes differ"):
        load(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
