"""Every registered zoo model: timm registration, pretrained config, features and input sizes.

Configurations and features are checked on the ``meta`` device, where even the 162M-parameter
models build at once; each model then runs once for real at two input sizes. Numerical checks
against timm and the official code live in each family's test file.
"""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from helpers import shallow_kwargs

MODELS = zoo.list_models()


def test_every_family_registers_models():
    assert len(MODELS) >= 40
    for name in MODELS:
        assert timm.is_model(name)
        assert timm.models.model_entrypoint(name).__module__.startswith("zoo.")


def test_user_backbones_are_not_listed_as_zoo_models():
    from zoo.builder import BackboneSpec, register_backbone

    register_backbone("uo_test_user_backbone", BackboneSpec.pyramid(16, (1, 1, 1, 1), stage=dict(mixer="dwconv")))
    assert timm.is_model("uo_test_user_backbone")
    assert "uo_test_user_backbone" not in zoo.list_models()
    assert zoo.list_models() == MODELS


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
def test_forward_at_224_and_at_a_size_not_a_multiple_of_32(name):
    """A real forward (batch 1, eval) at 224 x 224 and at 200 x 232, or a clear error where the
    architecture cannot take the second size (``min_input_multiple``)."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        x = torch.randn(1, 3, 200, 232)
        multiple = getattr(model, "min_input_multiple", None)
        if multiple:
            with pytest.raises(ValueError, match=f"multiples of {multiple}"):
                model(x)
        else:
            out = model(x)
            assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_layer_wise_lr_decay_groups_stem_stages_and_head(name):
    # timm's optimizer factory calls group_matcher for `layer_decay`; every capture must be a number.
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    with torch.device("meta"):
        model = timm.create_model(name)
    stages = group_parameters(model, model.group_matcher(coarse=True))
    assert len(stages) >= 6  # stem, four stages, and the rest (final norm, head, shared cells)
    assert set(stages[0]) == set(group_parameters(model, {"stem": model.group_matcher()["stem"]})[0])
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({group["lr_scale"] for group in groups})
    assert len(scales) >= 6 and scales[-1] == 1.0 and scales[0] < 0.75**4
    classifier = model.pretrained_cfg["classifier"] + "."
    head = {id(p) for n, p in model.named_parameters() if n.startswith(classifier)}
    assert head and {g["lr_scale"] for g in groups for p in g["params"] if id(p) in head} == {1.0}


@pytest.mark.parametrize("name", ["dwnet_tiny", "swin_tiny", "kw_resnet18_1x", "van_b0"])
def test_frozen_batch_norm_keeps_the_output(name):
    # Detection fine-tuning freezes BatchNorm with timm's helper; DWNet's channels-last BatchNorm
    # must still be run in its layout afterwards.
    from timm.utils.model import freeze_batch_norm_2d

    torch.manual_seed(0)
    model = (
        timm.create_model(name, depths=(1, 1, 1, 1)) if "net_" in name or "swin" in name else timm.create_model(name)
    )
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        frozen = freeze_batch_norm_2d(model)
        torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_depths_can_be_overridden_for_a_shallow_model(name):
    # Tests, export and compile checks build one-block-per-stage versions of every family this way.
    with torch.device("meta"):
        full = sum(p.numel() for p in timm.create_model(name).parameters())
        shallow = timm.create_model(name, **shallow_kwargs(name))
    assert sum(p.numel() for p in shallow.parameters()) < full
    assert len(shallow.feature_info) == 4
