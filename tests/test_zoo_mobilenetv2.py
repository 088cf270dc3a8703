"""KernelWarehouse MobileNetV2 (1.0 and 0.5 wide, at 1/2x, 1x and 4x): registration, parameter
counts, the official layer choice and key layout, equality with timm's MobileNetV2 when KW is off,
a block against a functional re-statement, the official-name converter, features and input sizes."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo.kw_mobilenetv2  # noqa: F401  (registers the models until zoo/__init__ imports it)
from helpers import randomize_
from unifiedops import KWConv2d, KWLinear, set_temperature
from zoo.kw_mobilenetv2 import KW_CONFIGS, KWMobileNetV2, convert_official_mobilenetv2
from zoo.published import PUBLISHED, rounds_to

NAMES = [f"kw_mobilenetv2_{w}_{s}" for w in ("100", "050") for s in ("1d2x", "1x", "4x")]
OFFICIAL_COUNTS = {  # the official models' counts (OSVAI/KernelWarehouse, the JSON configs)
    "kw_mobilenetv2_100_1d2x": 2_654_396,
    "kw_mobilenetv2_100_1x": 5_168_146,
    "kw_mobilenetv2_100_4x": 11_379_382,
    "kw_mobilenetv2_050_1d2x": 1_466_888,
    "kw_mobilenetv2_050_1x": 2_854_522,
    "kw_mobilenetv2_050_4x": 4_648_587,
}


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_pretrained_cfg_and_published_params(name):
    model = meta_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and not cfg.get("url") and not cfg.get("hf_hub_id")
    assert cfg["first_conv"] == "conv_stem" and model.get_submodule(cfg["classifier"]) is model.get_classifier()
    count = sum(p.numel() for p in model.parameters())
    assert rounds_to(count, PUBLISHED[name].params), count
    assert count == OFFICIAL_COUNTS[name]


def test_converted_layers_and_warehouses():
    """1x/4x: every convolution is KW, the classifier plain; 1/2x: point-wise layers only in
    warehouse stage 6, and a KW classifier; warehouses in the official order."""
    for name in ("kw_mobilenetv2_100_1x", "kw_mobilenetv2_100_4x"):
        model = meta_model(name)
        assert not [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert isinstance(model.classifier, nn.Linear)
        assert sum(isinstance(m, KWConv2d) for m in model.modules()) == 1 + 1 * 2 + 16 * 3 + 1
    one = meta_model("kw_mobilenetv2_100_1x").state_dict()
    assert [tuple(one[f"warehouse_manager.weights.{i}"].shape) for i in range(3)] == [
        (9, 32, 3, 1, 1),
        (36, 32, 1, 1, 1),
        (34, 8, 16, 1, 1),
    ]
    assert len([k for k in one if k.startswith("warehouse_manager.")]) == 13
    four = meta_model("kw_mobilenetv2_100_4x").state_dict()
    assert len([k for k in four if k.startswith("warehouse_manager.")]) == 19
    assert tuple(four["warehouse_manager.weights.0"].shape) == (36, 32, 3, 1, 1)

    half = meta_model("kw_mobilenetv2_050_1d2x")
    plain = {n for n, m in half.named_modules() if isinstance(m, nn.Conv2d)}
    assert plain == {
        "blocks.0.0.conv_pw",
        *(f"blocks.{r}.{j}.conv_{c}" for r, j in _first_five_stages() for c in ("pw", "pwl")),
    }
    assert isinstance(half.classifier, KWLinear) and half.head_drop.p == 0.1
    keys = {k: tuple(v.shape) for k, v in half.state_dict().items()}
    assert keys["warehouse_manager.weights.9"] == (20, 1000, 32, 1)  # the classifier's: 0.5 / 0.025 / 1
    assert keys["warehouse_manager.weights.6"] == (6, 240, 40, 1, 1)
    assert "warehouse_manager.weights.10" not in keys
    assert keys["classifier.conv.attention.fc1.weight"] == (40, 1280)  # reduction 1/32
    assert keys["blocks.5.1.conv_pw.attention.norm1.running_mean"] == (16,)  # BatchNorm1d attention


def _first_five_stages():
    """(row, block) of the 0.5/1.0 MobileNetV2 blocks with expansion in warehouse stages 1-5: rows
    1-4, and row 5's first block (the handover)."""
    return [(r, j) for r, n in ((1, 2), (2, 3), (3, 4), (4, 3)) for j in range(n)] + [(5, 0)]


@pytest.mark.parametrize("width", [1.0, 0.5])
@torch.no_grad()
def test_timm_mobilenetv2_loads_and_matches(width):
    ref = timm.create_model("mobilenetv2_100" if width == 1.0 else "mobilenetv2_050").eval()
    torch.manual_seed(0)
    randomize_(ref, 0.2)
    ours = KWMobileNetV2(width_mult=width).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 200, 232)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    timm_maps = ref.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    torch.testing.assert_close(ours.forward_intermediates(x, intermediates_only=True), timm_maps)


def _functional_inverted_residual(block, x):
    """An inverted residual, restated: 1x1 -> BN -> ReLU6 -> dw 3x3 -> BN -> ReLU6 -> 1x1 -> BN, plus
    the input, with each KW layer as its per-sample kernel."""

    def conv(layer, x):
        if isinstance(layer, KWConv2d):
            k = layer.source.assemble(layer, layer.attention(x), x.shape[0])
            return torch.cat(
                [
                    F.conv2d(x[i : i + 1], k[i], None, layer.stride, layer.padding, 1, layer.groups)
                    for i in range(len(x))
                ]
            )
        return F.conv2d(x, layer.weight, None, layer.stride, layer.padding, 1, layer.groups)

    def bn(norm, x):
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)

    y = F.relu6(bn(block.bn1, conv(block.conv_pw, x)))
    y = F.relu6(bn(block.bn2, conv(block.conv_dw, y)))
    return x + bn(block.bn3, conv(block.conv_pwl, y))


@pytest.mark.parametrize("kw", [None, KW_CONFIGS["4x"]], ids=["plain", "kw"])
@torch.no_grad()
def test_block_against_functional_restatement(kw):
    torch.manual_seed(1)
    model = randomize_(KWMobileNetV2(width_mult=0.5, kw=kw).double(), 0.3).eval()
    set_temperature(model, 0.3)
    block = model.blocks[2][1]
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(block(x), _functional_inverted_residual(block, x), rtol=1e-10, atol=1e-10)


def test_converter_from_official_names():
    """torchvision's / the official layout (``features.<i>.conv.<j>``) to timm's."""
    official = [
        "warehouse_manager.weights.0",
        "features.0.0.attention.fc1.weight",
        "features.0.1.running_var",
        "features.1.conv.0.0.bias",
        "features.1.conv.0.1.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.bias",
        "features.2.conv.0.0.weight",
        "features.2.conv.0.1.bias",
        "features.3.conv.1.0.attention.fc2.bias",
        "features.3.conv.1.1.running_mean",
        "features.4.conv.2.attention.fc1.weight",
        "features.17.conv.3.num_batches_tracked",
        "features.18.0.attention.norm1.weight",
        "features.18.1.weight",
        "classifier.1.conv.attention.fc2.weight",
        "classifier.weight",
    ]
    ours = [
        "warehouse_manager.weights.0",
        "conv_stem.attention.fc1.weight",
        "bn1.running_var",
        "blocks.0.0.conv_dw.bias",
        "blocks.0.0.bn1.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.0.0.bn2.bias",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.0.bn1.bias",
        "blocks.1.1.conv_dw.attention.fc2.bias",
        "blocks.1.1.bn2.running_mean",
        "blocks.2.0.conv_pwl.attention.fc1.weight",
        "blocks.6.0.bn3.num_batches_tracked",
        "conv_head.attention.norm1.weight",
        "bn2.weight",
        "classifier.conv.attention.fc2.weight",
        "classifier.weight",
    ]
    converted = convert_official_mobilenetv2({k: torch.zeros(1) for k in official})
    assert list(converted) == ours


@torch.no_grad()
def test_features_and_input_sizes():
    model = timm.create_model("kw_mobilenetv2_050_1d2x").eval()
    for size in [(224, 224), (200, 232)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)
    maps = model.forward_intermediates(torch.randn(1, 3, 200, 232), intermediates_only=True)
    expected = [(16, 50, 58), (16, 25, 29), (48, 13, 15), (160, 7, 8)]
    assert [tuple(m.shape[1:]) for m in maps] == expected
    for name, channels in (
        ("kw_mobilenetv2_050_1d2x", [16, 16, 48, 160]),
        ("kw_mobilenetv2_100_4x", [24, 32, 96, 320]),
    ):
        feats = meta_model(name, features_only=True).eval()
        assert feats.feature_info.channels() == channels and feats.feature_info.reduction() == [4, 8, 16, 32]
        with torch.device("meta"):
            shapes = [tuple(m.shape[2:]) for m in feats(torch.empty(1, 3, 200, 232))]
        assert shapes == [s[1:] for s in expected]
        assert not hasattr(feats, "conv_head") or isinstance(feats.conv_head, nn.Identity)


def test_errors():
    with pytest.raises(ValueError, match="width_mult"):
        KWMobileNetV2(width_mult=0)
    with pytest.raises(TypeError, match="kw"):
        KWMobileNetV2(kw={"cell_num_ratio": 1})
    with pytest.raises(ValueError, match="unknown"):
        KWMobileNetV2(kw={"warehouse": {}, "pointwise": ()})
