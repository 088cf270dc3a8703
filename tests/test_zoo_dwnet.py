"""DWNet from the builder: official layout, parameter counts, layer order, forward passes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401  (registers the models with timm)
from helpers import batch_norm_eval, randomize_
from unifiedops import DWConv, DynamicDWConv, InhomogeneousDWConv
from zoo.builder import SpecBackbone
from zoo.dwnet import DWNET_TINY

NAMES = (
    "dwnet_tiny",
    "dwnet_base",
    "dynamic_dwnet_tiny",
    "dynamic_dwnet_base",
    "i_dynamic_dwnet_tiny",
    "i_dynamic_dwnet_base",
)
# README figures; the I-dynamic models have none, so their counts are the official code's
# (Atten4Vis/DemystifyLocalViT, INHOMO_HEADS as configured: 32 kernel groups per stage).
PUBLISHED_M = {"dwnet_tiny": 24, "dwnet_base": 74, "dynamic_dwnet_tiny": 51, "dynamic_dwnet_base": 162}
OFFICIAL_CODE = {"i_dynamic_dwnet_tiny": 26_244_280, "i_dynamic_dwnet_base": 80_253_608}
MIXER = {"dwnet": DWConv, "dynamic_dwnet": DynamicDWConv, "i_dynamic_dwnet": InhomogeneousDWConv}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_registered_with_pretrained_cfg():
    for name in NAMES:
        assert timm.models.model_entrypoint(name).__module__ == "zoo.dwnet"
        model = _meta(name)
        cfg = model.pretrained_cfg
        assert cfg["paper_ids"] == "arXiv:2106.04263" and not cfg.get("url") and not cfg.get("hf_hub_id")
        assert model.get_submodule(cfg["classifier"]) is model.head and isinstance(model.head, nn.Linear)
        assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_mixer(name):
    model = _meta(name)
    count = sum(p.numel() for p in model.parameters())
    if name in PUBLISHED_M:
        assert round(count / 1e6) == PUBLISHED_M[name]
    else:
        assert count == OFFICIAL_CODE[name]
    kind = MIXER[name.rsplit("_", 1)[0]]
    assert all(type(b.attn2conv.conv) is kind for s in model.layers for b in s.blocks)


def _block_keys(c: int, conv: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    bn = lambda name: {f"{name}.{leaf}": (c,) for leaf in ("weight", "bias", "running_mean", "running_var")}  # noqa: E731
    return {
        "attn2conv.conv0.weight": (c, c, 1, 1),
        **bn("attn2conv.bn0"),
        **{f"attn2conv.conv.{k}": v for k, v in conv.items()},
        **bn("attn2conv.bn"),
        "attn2conv.conv2.weight": (c, c, 1, 1),
        **bn("attn2conv.bn2"),
        **bn("bn"),
        "mlp.fc1.weight": (4 * c, c),
        "mlp.fc1.bias": (4 * c,),
        "mlp.fc2.weight": (c, 4 * c),
        "mlp.fc2.bias": (c,),
    }


CONV_KEYS = {
    "dwnet": lambda c: {"weight": (c, 1, 7, 7), "bias": (c,)},
    "dynamic_dwnet": lambda c: {
        "conv1.weight": (c // 4, c, 1, 1),
        **{f"bn.{leaf}": (c // 4,) for leaf in ("weight", "bias", "running_mean", "running_var")},
        "conv2.weight": (49 * c, c // 4, 1, 1),
        "conv2.bias": (49 * c,),
        "bias": (c,),
    },
    "i_dynamic_dwnet": lambda c: {
        "conv1.0.weight": (c // 4, c, 1, 1),
        "conv1.0.bias": (c // 4,),
        **{f"conv1.1.{leaf}": (c // 4,) for leaf in ("weight", "bias", "running_mean", "running_var")},
        "conv2.0.weight": (49 * 32, c // 4, 1, 1),
        "conv2.0.bias": (49 * 32,),
    },
}


@pytest.mark.parametrize("name", ["dwnet_tiny", "dynamic_dwnet_tiny", "i_dynamic_dwnet_tiny", "dwnet_base"])
def test_official_key_names_and_shapes(name):
    state = _meta(name).state_dict()
    dim, depths = (96, (2, 2, 6, 2)) if name.endswith("tiny") else (128, (2, 2, 18, 2))
    conv = CONV_KEYS[name.rsplit("_", 1)[0]]
    expected = {
        "patch_embed.proj.weight": (dim, 3, 4, 4),
        "patch_embed.proj.bias": (dim,),
        "patch_embed.norm.weight": (dim,),
        "patch_embed.norm.bias": (dim,),
        "norm.weight": (8 * dim,),
        "norm.bias": (8 * dim,),
        "head.weight": (1000, 8 * dim),
        "head.bias": (1000,),
    }
    for i, depth in enumerate(depths):
        c = dim * 2**i
        if i < 3:  # Swin's official layout: patch merging ends stages 1-3
            expected |= {
                f"layers.{i}.downsample.norm.weight": (4 * c,),
                f"layers.{i}.downsample.norm.bias": (4 * c,),
                f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
            }
        for j in range(depth):
            expected |= {f"layers.{i}.blocks.{j}.{k}": v for k, v in _block_keys(c, conv(c)).items()}
    assert {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")} == expected


def test_block_matches_functional_restatement():
    """DWNet's order: no pre-norm on the conv branch, 1x1-BN-ReLU-DW-BN-ReLU-1x1-BN, then BN before the MLP."""
    model = randomize_(SpecBackbone(DWNET_TINY.with_stages(dims=(16, 32, 64, 128)), depths=(1, 1, 1, 1)), 0.3)
    block = model.layers[1].blocks[0].eval()
    a = block.attn2conv
    x = torch.randn(2, 9, 11, 32)  # (B, H, W, C), the stream's layout
    y = x.permute(0, 3, 1, 2)
    y = F.relu(batch_norm_eval(F.conv2d(y, a.conv0.weight), a.bn0))
    y = F.relu(batch_norm_eval(F.conv2d(y, a.conv.weight, a.conv.bias, padding=3, groups=32), a.bn))
    y = batch_norm_eval(F.conv2d(y, a.conv2.weight), a.bn2)
    x1 = x + y.permute(0, 2, 3, 1)
    z = batch_norm_eval(x1.permute(0, 3, 1, 2), block.bn).permute(0, 2, 3, 1)
    z = F.linear(
        F.gelu(F.linear(z, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias
    )
    with torch.no_grad():
        torch.testing.assert_close(block(x), x1 + z, rtol=1e-5, atol=1e-5)


def test_features_only():
    model = _meta("dwnet_tiny", features_only=True)
    assert model.feature_info.channels() == [96, 192, 384, 768]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert _meta("dwnet_base", features_only=True).feature_info.channels() == [128, 256, 512, 1024]


@pytest.mark.parametrize("name", ["dwnet_tiny", "dynamic_dwnet_tiny", "i_dynamic_dwnet_tiny"])
@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_forward_sizes(name, size):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out, maps = model.forward_intermediates(x)
        logits = model.forward_head(out)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    expected = [(56, 56), (28, 28), (14, 14), (7, 7)] if size == (224, 224) else [(50, 58), (25, 29), (13, 15), (7, 8)]
    assert [tuple(m.shape[2:]) for m in maps] == expected
