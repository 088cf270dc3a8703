"""ConvNeXt from the DWConv preset (``uo_convnext_tiny``) and the KernelWarehouse ConvNeXt-T
(``kw_convnext_tiny_1x``): registration, parameter counts, the official key layout, equality with
timm's ConvNeXt, the block against a functional re-statement, the official-name converter, features
and input sizes."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt as TimmConvNeXt

import zoo  # noqa: F401  (registers the models with timm)
from helpers import randomize_
from unifiedops import DWConv, KWConv2d, set_temperature
from zoo.convnext_family import ConvNeXt, convert_official_convnext
from zoo.published import PUBLISHED, rounds_to

NAMES = ["uo_convnext_tiny", "kw_convnext_tiny_1x"]
SMALL = dict(depths=(1, 2, 1, 1), dims=(16, 24, 32, 40))
KW_1X = dict(cell_num_ratio=1, sharing_range=("layer", "pwconv"))


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def timm_random_state(model):
    torch.manual_seed(0)
    randomize_(model, 0.2)
    return model.state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_pretrained_cfg_and_published_params(name):
    assert name in timm.list_models("*convnext*") and not timm.models.model_entrypoint(name).__module__.startswith(
        "timm."
    )
    model = meta_model(name)
    cfg = model.pretrained_cfg
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    assert cfg["first_conv"] == "stem.0" and cfg["classifier"] == "head.fc"
    count = sum(p.numel() for p in model.parameters())
    assert rounds_to(count, PUBLISHED[name].params), count
    assert count == {"uo_convnext_tiny": 28_589_128, "kw_convnext_tiny_1x": 39_370_674}[name]  # the official codes'


def test_official_key_layout():
    """timm's names and shapes for the plain model; the official KW names (warehouses in the official
    order: stem, three downsamplings, then per stage depth-wise and point-wise) for the KW model."""
    plain = {k: tuple(v.shape) for k, v in meta_model("uo_convnext_tiny").state_dict().items()}
    assert plain["stem.0.weight"] == (96, 3, 4, 4) and plain["stem.1.weight"] == (96,)
    assert plain["stages.1.downsample.0.weight"] == (96,) and plain["stages.1.downsample.1.weight"] == (192, 96, 2, 2)
    assert plain["stages.2.blocks.8.conv_dw.weight"] == (384, 1, 7, 7)
    assert plain["stages.3.blocks.2.mlp.fc1.weight"] == (3072, 768) and plain["stages.3.blocks.2.gamma"] == (768,)
    assert plain["head.norm.weight"] == (768,) and plain["head.fc.weight"] == (1000, 768)
    assert not any(k.startswith("stages.0.downsample") for k in plain)

    kw = {k: tuple(v.shape) for k, v in meta_model("kw_convnext_tiny_1x").state_dict().items()}
    warehouses = [kw[f"warehouse_manager.weights.{i}"] for i in range(12)]
    assert warehouses == [
        (16, 96, 3, 1, 1),
        (4, 192, 96, 1, 1),
        (4, 384, 192, 1, 1),
        (4, 768, 384, 1, 1),
        (147, 96, 1, 1, 1),
        (24, 96, 96, 1, 1),
        (147, 192, 1, 1, 1),
        (24, 192, 192, 1, 1),
        (441, 384, 1, 1, 1),
        (72, 384, 384, 1, 1),
        (147, 768, 1, 1, 1),
        (24, 768, 768, 1, 1),
    ]
    assert "warehouse_manager.weights.12" not in kw
    # The attention norm is a LayerNorm (fc1 then has a bias); layers keep only bias and attention.
    assert kw["stem.0.attention.fc1.bias"] == (16,) and "stem.0.attention.norm1.running_mean" not in kw
    assert kw["stem.0.attention.fc2.weight"] == (17 * 16, 16)
    assert kw["stages.0.blocks.0.conv_dw.attention.fc2.weight"] == (148 * 49, 16)
    assert kw["stages.0.blocks.0.mlp.fc2.attention.fc1.weight"] == (24, 384)
    pattern = re.compile(r"^stages\.\d\.(blocks\.\d\.(conv_dw|mlp\.fc[12])|downsample\.1)\.|^stem\.0\.")
    assert not [k for k in kw if pattern.match(k) and k.endswith(".weight") and ".attention." not in k]
    assert kw["head.fc.weight"] == (1000, 768) and kw["stages.0.blocks.2.gamma"] == (96,)


def test_layers_and_presets():
    model = ConvNeXt(**SMALL)
    assert isinstance(model.stages[0].blocks[0].conv_dw, DWConv)
    kw = ConvNeXt(**SMALL, kw=KW_1X)
    layers = [m for m in kw.modules() if isinstance(m, KWConv2d)]
    assert len(layers) == 1 + 3 + 3 * sum(SMALL["depths"])
    assert kw.stem[0].kernel_size == (4, 4) and kw.stem[0].padding == (0, 0)
    assert kw.stages[1].downsample[1].stride == 2 and kw.stages[1].downsample[1].kernel_size == (2, 2)
    assert set_temperature(kw, 0.5) == len(layers)


@torch.no_grad()
def test_timm_convnext_loads_and_matches_small():
    """A reduced ConvNeXt: timm's state dict loads unchanged and the outputs agree."""
    ref = TimmConvNeXt(**SMALL, num_classes=10).eval()
    ours = ConvNeXt(**SMALL, num_classes=10).eval()
    ours.load_state_dict(timm_random_state(ref), strict=True)
    x = torch.randn(2, 3, 70, 90)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pair():
    """timm's convnext_tiny with random weights, and uo_convnext_tiny loaded from its state dict."""
    ref = timm.create_model("convnext_tiny").eval()
    ours = timm.create_model("uo_convnext_tiny").eval()
    ours.load_state_dict(timm_random_state(ref), strict=True)
    return ref, ours


@torch.no_grad()
def test_timm_convnext_tiny_loads_and_matches(tiny_pair):
    ref, ours = tiny_pair
    x = torch.randn(1, 3, 96, 128)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def _functional_block(block, x):
    """ConvNeXt's block, restated: ``x + gamma * fc2(gelu(fc1(LN(dwconv(x)))))``, channels-first,
    with each KW layer as its per-sample kernel (assembled from its attention of the layer input)."""

    def conv(layer, x, groups=1):
        if isinstance(layer, KWConv2d):
            kernels = layer.source.assemble(layer, layer.attention(x), x.shape[0])
            return torch.cat(
                [
                    F.conv2d(x[i : i + 1], kernels[i], layer.bias, 1, layer.padding, groups=layer.groups)
                    for i in range(x.shape[0])
                ]
            )
        if isinstance(layer, torch.nn.Linear):
            return F.conv2d(x, layer.weight[:, :, None, None], layer.bias)
        return F.conv2d(x, layer.weight, layer.bias, padding=layer.weight.shape[-1] // 2, groups=groups)

    dim = x.shape[1]
    y = conv(block.conv_dw, x, groups=dim)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (dim,), block.norm.weight, block.norm.bias, 1e-6).permute(0, 3, 1, 2)
    y = conv(block.mlp.fc2, F.gelu(conv(block.mlp.fc1, y)))
    return x + block.gamma.view(1, -1, 1, 1) * y


@pytest.mark.parametrize("kw", [None, KW_1X], ids=["plain", "kw"])
@torch.no_grad()
def test_block_against_functional_restatement(kw):
    torch.manual_seed(1)
    model = randomize_(ConvNeXt(**SMALL, kw=kw).double(), 0.3).eval()
    set_temperature(model, 0.3)
    block = model.stages[1].blocks[1]
    x = torch.randn(2, 24, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(block(x), _functional_block(block, x), rtol=1e-10, atol=1e-10)


def _to_official(key):
    """The official ConvNeXt / KW ConvNeXt name of one of our keys (the converter's inverse, by hand)."""
    rules = [
        (r"^stem\.", "downsample_layers.0."),
        (r"^stages\.(\d)\.downsample\.", r"downsample_layers.\1."),
        (r"^stages\.(\d)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
        (r"^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"stages.\1.\2.pwconv\3."),
        (r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


@pytest.mark.parametrize("kw", [None, KW_1X], ids=["plain", "kw"])
@torch.no_grad()
def test_converter_from_official_names(kw):
    model = randomize_(ConvNeXt(**SMALL, kw=kw)).eval()
    state = model.state_dict()
    official = {_to_official(k): v.reshape(1, -1, 1, 1) if k.endswith("gamma") else v for k, v in state.items()}
    assert "downsample_layers.2.1.bias" in official and "stages.1.0.pwconv2.bias" in official
    assert official["stages.0.0.gamma"].shape == (1, 16, 1, 1) and "norm.weight" in official
    converted = convert_official_convnext(official)
    assert converted.keys() == state.keys()
    fresh = ConvNeXt(**SMALL, kw=kw).eval()
    fresh.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(x), model(x))


@torch.no_grad()
def test_features_and_input_sizes(tiny_pair):
    _, model = tiny_pair
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    maps = model.forward_intermediates(torch.randn(1, 3, 200, 232), intermediates_only=True)
    expected = [(96, 50, 58), (192, 25, 29), (384, 12, 14), (768, 6, 7)]
    assert [tuple(m.shape[1:]) for m in maps] == expected
    feats = meta_model("uo_convnext_tiny", features_only=True)
    assert feats.feature_info.channels() == [96, 192, 384, 768]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    with torch.device("meta"):
        assert [tuple(m.shape[1:]) for m in feats(torch.empty(1, 3, 200, 232))] == expected


@torch.no_grad()
def test_kw_features_and_input_sizes():
    """The KW model (reduced depth) at both sizes, and its features (odd maps are floored by the
    2x2 stride-2 downsampling, as nn.Conv2d does)."""
    model = ConvNeXt(**SMALL, kw=KW_1X).eval()
    for size in [(224, 224), (200, 232)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)
    maps = model.forward_intermediates(torch.randn(2, 3, 200, 232), intermediates_only=True)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 50, 58), (24, 25, 29), (32, 12, 14), (40, 6, 7)]
    feats = meta_model("kw_convnext_tiny_1x", features_only=True)
    assert feats.feature_info.channels() == [96, 192, 384, 768]


def test_errors():
    with pytest.raises(ValueError, match="depths"):
        ConvNeXt(depths=(1, 1, 1), dims=(8, 16, 24))
    with pytest.raises(TypeError, match="kw"):
        ConvNeXt(**SMALL, kw=1)
