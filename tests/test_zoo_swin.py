"""Swin and ACmix-Swin from the builder: timm's Swin weights, the official ACmix layout, sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo  # noqa: F401  (registers the models with timm)
from unifiedops import ACmixWindowAttention, WindowAttention

SWIN = ("swin_tiny", "swin_small", "swin_base")
ACMIX = ("acmix_swin_tiny", "acmix_swin_small")
TIMM_NAME = {n: f"{n}_patch4_window7_224" for n in SWIN}
# Published: Swin 28M/50M/88M. ACmix-Swin is published as 30M/51M, but the official ACmix code builds
# 28,649,908 and 50,345,080 parameters (checked against LeapLabTHU/ACmix@81dddb6); ours equal those.
PUBLISHED_M = {"swin_tiny": 28, "swin_small": 50, "swin_base": 88}
OFFICIAL_CODE = {"acmix_swin_tiny": 28_649_908, "acmix_swin_small": 50_345_080}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_registered_under_free_names_with_pretrained_cfg():
    for name in SWIN + ACMIX:
        assert timm.models.model_entrypoint(name).__module__ == "zoo.swin_family"
        cfg = _meta(name).pretrained_cfg
        assert cfg["architecture"] == name and not cfg.get("url") and not cfg.get("hf_hub_id")
    # timm's own Swin entries are untouched.
    assert timm.models.model_entrypoint("swin_tiny_patch4_window7_224").__module__.startswith("timm.")


@pytest.mark.parametrize("name", SWIN + ACMIX)
def test_parameter_count(name):
    count = sum(p.numel() for p in _meta(name).parameters())
    if name in PUBLISHED_M:
        assert round(count / 1e6) == PUBLISHED_M[name]
    else:
        assert count == OFFICIAL_CODE[name]


@pytest.mark.parametrize("name", SWIN)
def test_state_dict_layout_equals_timm(name):
    ours, theirs = _meta(name), _meta(TIMM_NAME[name])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_timm_swin_tiny_weights_load_and_outputs_match():
    torch.manual_seed(0)
    theirs = timm.create_model("swin_tiny_patch4_window7_224").eval()
    with torch.no_grad():
        for p in theirs.parameters():  # timm's init leaves biases at zero and tables tiny
            p.add_(torch.randn_like(p) * 0.02)
    ours = timm.create_model("swin_tiny").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
        for a, b in zip(
            ours.forward_intermediates(x, intermediates_only=True),
            theirs.forward_intermediates(x, intermediates_only=True),
            strict=True,
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_window_and_shift_per_block_as_timm():
    ours = _meta("swin_tiny")
    theirs = _meta(TIMM_NAME["swin_tiny"])
    for stage_ours, stage_theirs in zip(ours.layers, theirs.layers, strict=True):
        for a, b in zip(stage_ours.blocks, stage_theirs.blocks, strict=True):
            assert isinstance(a.attn, WindowAttention)
            assert (a.attn.neighbourhood.size, a.attn.neighbourhood.shift) == (b.window_size[0], b.shift_size[0])


ACMIX_BLOCK_KEYS = {  # leaf -> shape, for width c and h heads
    "attn.relative_position_bias_table": lambda c, h: (169, h),
    "attn.relative_position_index": lambda c, h: (49, 49),
    "attn.rate1": lambda c, h: (1,),
    "attn.rate2": lambda c, h: (1,),
    "attn.qkv.weight": lambda c, h: (3 * c, c),
    "attn.qkv.bias": lambda c, h: (3 * c,),
    "attn.proj.weight": lambda c, h: (c, c),
    "attn.proj.bias": lambda c, h: (c,),
    "attn.fc.weight": lambda c, h: (9, 3 * h, 1, 1),
    "attn.fc.bias": lambda c, h: (9,),
    "attn.dep_conv.weight": lambda c, h: (c, 9, 3, 3),
    "norm1.weight": lambda c, h: (c,),
    "norm1.bias": lambda c, h: (c,),
    "norm2.weight": lambda c, h: (c,),
    "norm2.bias": lambda c, h: (c,),
    "mlp.fc1.weight": lambda c, h: (4 * c, c),
    "mlp.fc1.bias": lambda c, h: (4 * c,),
    "mlp.fc2.weight": lambda c, h: (c, 4 * c),
    "mlp.fc2.bias": lambda c, h: (c,),
}


@pytest.mark.parametrize("name", ACMIX)
def test_acmix_official_key_names_and_shapes(name):
    state = _meta(name).state_dict()
    depths = (2, 2, 6, 2) if name == "acmix_swin_tiny" else (2, 2, 18, 2)
    expected = {
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.proj.bias": (96,),
        "patch_embed.norm.weight": (96,),
        "patch_embed.norm.bias": (96,),
        "norm.weight": (768,),
        "norm.bias": (768,),
        "head.weight": (1000, 768),
        "head.bias": (1000,),
    }
    for i, depth in enumerate(depths):
        c, h = 96 * 2**i, 3 * 2**i
        if i < 3:  # official Swin: patch merging at the end of stages 1-3
            expected |= {
                f"layers.{i}.downsample.norm.weight": (4 * c,),
                f"layers.{i}.downsample.norm.bias": (4 * c,),
                f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
            }
        for j in range(depth):
            expected |= {f"layers.{i}.blocks.{j}.{leaf}": shape(c, h) for leaf, shape in ACMIX_BLOCK_KEYS.items()}
    assert {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")} == expected


def test_acmix_uses_the_preset_in_every_block_and_drops_official_masks():
    model = timm.create_model("acmix_swin_tiny", depths=(2, 2, 2, 2)).eval()
    assert all(isinstance(b.attn, ACmixWindowAttention) for s in model.layers for b in s.blocks)
    state = model.state_dict()
    # The official blocks keep Swin's additive mask as a persistent buffer where they shift.
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", ["swin_tiny", "acmix_swin_tiny"])
def test_features_only(name):
    model = _meta(name, features_only=True)
    assert model.feature_info.channels() == [96, 192, 384, 768]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["swin_tiny", "acmix_swin_tiny"])
@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_forward_sizes(name, size):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    h, w = size[0] // 4, size[1] // 4
    expected = []
    for _ in range(4):
        expected.append((h, w))
        h, w = -(-h // 2), -(-w // 2)  # odd maps are padded before patch merging
    assert [tuple(m.shape[2:]) for m in maps] == expected


def test_reduced_depth_kwargs_match_timm():
    theirs = timm.create_model("swin_small_patch4_window7_224", depths=(1, 2, 1, 1)).eval()
    ours = timm.create_model("swin_small", depths=(1, 2, 1, 1), num_classes=1000).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
