"""Every registered zoo model: timm registration, pretrained config, features and input sizes.

Shapes are checked on the ``meta`` device, so every model (up to 162M parameters) is built and run
in well under a second; numerical checks of each family live in its own test file.
"""

from __future__ import annotations

import pytest
import timm
import torch

import zoo

MODELS = zoo.list_models()


def test_every_family_registers_models():
    assert len(MODELS) >= 40
    for name in MODELS:
        assert timm.is_model(name)
        assert timm.models.model_entrypoint(name).__module__.startswith("zoo.")


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_without_download(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    assert not cfg.get("url") and not cfg.get("hf_hub_id"), "nothing may be downloaded"
    assert isinstance(model.get_submodule(cfg["first_conv"] + ""), torch.nn.Module)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert model.get_classifier().out_features == 1000


@pytest.mark.parametrize("name", MODELS)
def test_features_only_returns_four_stage_maps(name):
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True).eval()
        channels = model.feature_info.channels()
        assert model.feature_info.reduction() == [4, 8, 16, 32]
        feats = model(torch.empty(1, 3, 224, 224))
    assert [f.shape[1] for f in feats] == channels
    assert [tuple(f.shape[2:]) for f in feats] == [(224 // r, 224 // r) for r in (4, 8, 16, 32)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_forward_sizes(name, size):
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, 3, *size)
        refuses = getattr(model, "min_input_multiple", None)
        if refuses and (size[0] % refuses or size[1] % refuses):
            with pytest.raises(ValueError, match="multiple"):
                model(x)
        else:
            assert model(x).shape == (1, 1000)
