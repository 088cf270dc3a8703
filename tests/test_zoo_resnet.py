"""The ResNet skeleton and its two families: ACmix-ResNet and the KernelWarehouse ResNets."""

from __future__ import annotations

import functools
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo.acmix_resnet
import zoo.kw_resnet
from helpers import batch_norm_eval, randomize_
from unifiedops import ACmix, KWConv2d
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv

torch.manual_seed(0)

ACMIX = ("acmix_resnet26", "acmix_resnet38", "acmix_resnet50")
KW18 = ("kw_resnet18_1d4x", "kw_resnet18_1d2x", "kw_resnet18_1x", "kw_resnet18_2x", "kw_resnet18_4x")
KW50 = ("kw_resnet50_1d2x", "kw_resnet50_1x", "kw_resnet50_4x")
ALL = ACMIX + KW18 + KW50

# Parameters of the official code (LeapLabTHU/ACmix ResNet_ImageNet.py; OSVAI/KernelWarehouse
# models/kw_resnet.py with its JSON configs), counted by building it; and the published figure.
PARAMS = {
    "acmix_resnet26": (10_487_816, "10.6M"),
    "acmix_resnet38": (14_410_896, "14.6M"),
    "acmix_resnet50": (18_333_976, "18.6M"),
    "kw_resnet18_1d4x": (4_031_768, "4.08M"),
    "kw_resnet18_1d2x": (7_431_044, "7.43M"),
    "kw_resnet18_1x": (11_932_148, "11.93M"),
    "kw_resnet18_2x": (23_242_127, "23.24M"),
    "kw_resnet18_4x": (45_862_085, "45.86M"),
    "kw_resnet50_1d2x": (17_638_264, "17.64M"),
    "kw_resnet50_1x": (28_052_310, "28.05M"),
    "kw_resnet50_4x": (102_015_144, "102.02M"),
}
# Where the official code itself disagrees with the paper (see docs/zoo/*.md).
OFFICIAL_DIFFERS = {"acmix_resnet26", "acmix_resnet38", "acmix_resnet50", "kw_resnet18_1d4x"}

# Warehouse cells per stage, and the cells' channels (out = in), from the official store() rules.
WAREHOUSES = {
    "kw_resnet18_1d4x": ((56, 47, 47, 27), (32, 64, 128, 256)),
    "kw_resnet18_1d2x": ((112, 94, 94, 54), (32, 64, 128, 256)),
    "kw_resnet18_1x": ((56, 47, 47, 27), (64, 128, 256, 512)),
    "kw_resnet18_2x": ((112, 94, 94, 54), (64, 128, 256, 512)),
    "kw_resnet18_4x": ((224, 188, 188, 108), (64, 128, 256, 512)),
    "kw_resnet50_1d2x": ((174, 208, 276, 94), (32, 64, 128, 256)),
    "kw_resnet50_1x": ((87, 104, 138, 47), (64, 128, 256, 512)),
    "kw_resnet50_4x": ((348, 416, 552, 188), (64, 128, 256, 512)),
}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@functools.cache
def _shared_meta(name: str) -> nn.Module:
    """A meta-device model the read-only tests share (building the big ones takes seconds)."""
    return _meta(name)


def _randomize(module: nn.Module) -> nn.Module:
    return randomize_(module, scale=0.2).eval()


def _published(count: int, figure: str) -> bool:
    decimals = len(figure.rstrip("M").partition(".")[2])
    return f"{count / 1e6:.{decimals}f}M" == figure


# -- registration, parameters, key layout ---------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_registered_with_pretrained_cfg(name):
    assert name in timm.list_models()
    cfg = _shared_meta(name).pretrained_cfg
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"


@pytest.mark.parametrize("name", ALL)
def test_parameter_count(name):
    official, published = PARAMS[name]
    count = sum(p.numel() for p in _shared_meta(name).parameters())
    assert count == official
    assert _published(count, published) == (name not in OFFICIAL_DIFFERS)


def test_acmix_keys_and_shapes():
    sd = _shared_meta("acmix_resnet26").state_dict()
    width, heads = 128, 4
    expected = {
        "rate1": (1,),
        "rate2": (1,),
        "conv1.weight": (width, width, 1, 1),
        "conv1.bias": (width,),
        "conv2.weight": (width, width, 1, 1),
        "conv2.bias": (width,),
        "conv3.weight": (width, width, 1, 1),
        "conv3.bias": (width,),
        "conv_p.weight": (width // heads, 2, 1, 1),
        "conv_p.bias": (width // heads,),
        "fc.weight": (9, 3 * heads, 1, 1),
        "dep_conv.weight": (width, 9, 3, 3),
    }
    got = {k[len("layer2.0.conv2.") :]: tuple(v.shape) for k, v in sd.items() if k.startswith("layer2.0.conv2.")}
    assert got == expected
    assert tuple(sd["layer2.0.conv1.weight"].shape) == (width, 256, 1, 1)
    assert tuple(sd["layer2.0.conv3.weight"].shape) == (512, width, 1, 1)
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (512, 256, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    blocks = {m.group(0) for k in sd if (m := re.match(r"layer\d\.\d+", k))}
    assert len(blocks) == 1 + 2 + 4 + 1


def test_kw_resnet18_keys_and_shapes():
    sd = _shared_meta("kw_resnet18_1x").state_dict()
    cells, _ = WAREHOUSES["kw_resnet18_1x"]
    # Official names; KW layers have no weight of their own.
    assert "layer1.0.conv1.weight" not in sd and "conv1.weight" in sd and "fc.weight" in sd
    attention = {
        k[len("layer2.0.conv1.attention.") :]: tuple(v.shape)
        for k, v in sd.items()
        if ".0.conv1.attention." in k and k.startswith("layer2")
    }
    # layer2.0.conv1 (64 -> 128, 3x3) draws on stage 0's warehouse of 64x64 cells: 2 * 1 * 9 mixtures.
    assert attention == {
        "fc1.weight": (16, 64),
        "norm1.weight": (16,),
        "norm1.bias": (16,),
        "norm1.running_mean": (16,),
        "norm1.running_var": (16,),
        "norm1.num_batches_tracked": (),
        "fc2.weight": ((cells[0] + 1) * 18, 16),
        "fc2.bias": ((cells[0] + 1) * 18,),
    }
    assert tuple(sd["layer2.0.downsample.0.attention.fc2.weight"].shape) == ((cells[0] + 1) * 2, 16)
    assert tuple(sd["layer2.0.conv2.attention.fc2.weight"].shape) == ((cells[1] + 1) * 9, 16)
    assert tuple(sd["layer4.1.conv2.attention.fc1.weight"].shape) == (32, 512)


def test_kw_resnet50_half_nonlocal_basis_keys():
    sd = _shared_meta("kw_resnet50_1d2x").state_dict()
    # layer1.0.conv2: 64 -> 64 3x3 in 32x32 cells, m = 2 * 2 * 9 = 36, n = 174: it owns 18 cells and
    # maps the other 156 to 16 basis logits.
    prefix = "layer1.0.conv2.attention."
    assert tuple(sd[prefix + "fc2.weight"].shape) == ((18 + 16 + 1) * 36, 16)
    assert prefix + "fc2.bias" not in sd
    assert tuple(sd[prefix + "fc3.weight"].shape) == (156, 16)
    assert tuple(sd[prefix + "basis_bias"].shape) == (175 * 36,)
    # The stride-1 shortcut of layer1 and the first conv1 stay plain.
    assert tuple(sd["layer1.0.conv1.weight"].shape) == (64, 64, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert "layer2.0.downsample.0.weight" not in sd


@pytest.mark.parametrize("name", KW18 + KW50)
def test_warehouse_sizes(name):
    model = _shared_meta(name)
    cells, channels = WAREHOUSES[name]
    shapes = [tuple(w.shape) for w in model.warehouse_manager.weights]
    assert shapes == [(n, c, c, 1, 1) for n, c in zip(cells, channels, strict=True)]


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_kw_layers_and_warehouse_handover(block):
    name = "kw_resnet18_1x" if block == "basic" else "kw_resnet50_1x"
    model = _shared_meta(name)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    for s in range(1, 5):
        stage = getattr(model, f"layer{s}")
        for b, blk in enumerate(stage):
            convs = [getattr(blk, c) for c in ("conv1", "conv2", "conv3") if hasattr(blk, c)]
            if s == 1 and b == 0 and block == "bottleneck":
                assert type(convs[0]) is nn.Conv2d
                convs = convs[1:]
            else:
                # The first block's conv1 uses the previous stage's warehouse.
                first = convs.pop(0)
                assert isinstance(first, KWConv2d)
                assert first.warehouse_id == (max(s - 2, 0) if b == 0 else s - 1)
            assert all(isinstance(c, KWConv2d) and c.warehouse_id == s - 1 for c in convs)
            if hasattr(blk, "downsample"):
                ds = blk.downsample[0]
                if s == 1:
                    assert type(ds) is nn.Conv2d
                else:
                    assert isinstance(ds, KWConv2d) and ds.warehouse_id == s - 2


# -- features and forward -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_feature_info(name):
    expansion = 1 if name.startswith("kw_resnet18") else 4
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    info = _shared_meta(name).feature_info
    assert [f["num_chs"] for f in info] == channels
    assert [f["reduction"] for f in info] == [4, 8, 16, 32]
    assert [f["module"] for f in info] == ["layer1", "layer2", "layer3", "layer4"]
    if name in ("acmix_resnet50", "kw_resnet50_1d2x"):
        wrapped = _meta(name, features_only=True)
        assert wrapped.feature_info.channels() == channels
        assert wrapped.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["acmix_resnet26", "kw_resnet18_1d4x"])
@torch.no_grad()
def test_features_and_forward_at_224_and_200x232(name):
    model = timm.create_model(name, features_only=True).eval()
    expansion = 1 if name.startswith("kw") else 4
    for h, w in ((224, 224), (200, 232)):
        maps = model(torch.randn(1, 3, h, w))
        assert [tuple(m.shape) for m in maps] == [
            (1, c * expansion, -(-h // r), -(-w // r)) for c, r in zip((64, 128, 256, 512), (4, 8, 16, 32), strict=True)
        ]
        assert all(torch.isfinite(m).all() for m in maps)


def test_acmix_too_small_input_raises():
    model = timm.create_model("acmix_resnet26", num_classes=0).eval()
    # layer4.0's ACmix reads the stride-16 map: 3x3 is too small for its 7x7 window's padding.
    with torch.no_grad(), pytest.raises(ValueError, match="reflection-pads"):
        model(torch.randn(1, 3, 48, 48))


# -- layer order against independent restatements -------------------------------------------------


@torch.no_grad()
def test_acmix_bottleneck_order():
    model = _randomize(timm.create_model("acmix_resnet26", num_classes=0))
    blk = model.layer2[0]
    assert isinstance(blk.conv2, ACmix) and blk.conv2.neighbourhood.stride == 2
    x = torch.randn(1, 256, 16, 16)
    out = F.relu(batch_norm_eval(F.conv2d(x, blk.conv1.weight), blk.bn1))
    out = F.relu(batch_norm_eval(blk.conv2(out), blk.bn2))
    out = batch_norm_eval(F.conv2d(out, blk.conv3.weight), blk.bn3)
    skip = batch_norm_eval(F.conv2d(x, blk.downsample[0].weight, stride=2), blk.downsample[1])
    torch.testing.assert_close(blk(x), F.relu(out + skip), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_kw_basic_block_order():
    model = _randomize(timm.create_model("kw_resnet18_1d4x", num_classes=0))
    blk = model.layer3[0]
    x = torch.randn(2, 128, 10, 9)
    out = F.relu(batch_norm_eval(blk.conv1(x), blk.bn1))
    out = batch_norm_eval(blk.conv2(out), blk.bn2)
    skip = batch_norm_eval(blk.downsample[0](x), blk.downsample[1])
    torch.testing.assert_close(blk(x), F.relu(out + skip), rtol=1e-5, atol=1e-5)
    assert blk(x).shape == (2, 256, 5, 5)


# -- KW disabled: timm's ResNets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "timm_name", "size"), [("kw_resnet18_1x", "resnet18", 224), ("kw_resnet50_1x", "resnet50", 96)]
)
@torch.no_grad()
def test_kw_disabled_is_timm_resnet(name, timm_name, size):
    reference = _randomize(timm.create_model(timm_name))
    model = timm.create_model(name, kw=False).eval()
    assert not any(isinstance(m, KWConv2d) for m in model.modules())
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    features = model.forward_intermediates(x, intermediates_only=True)
    expected = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    for ours, theirs in zip(features, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# -- the skeleton ---------------------------------------------------------------------------------


def test_skeleton_calls_the_factory_for_every_conv_in_order():
    specs = []

    def factory(spec: ConvSpec) -> nn.Module:
        specs.append(spec)
        return plain_conv(spec)

    ResNetLayout("basic", (2, 2, 2, 2), factory, widths=(8, 8, 16, 16), stem_width=8)
    roles = [s.role for s in specs]
    assert roles.count("stem") == 1 and roles.count("conv1") == roles.count("conv2") == 8
    assert roles.count("downsample") == 3  # where the shape changes: the first block of stages 2-4
    # A block's shortcut is made before its own convolutions.
    first = [(s.stage, s.role) for s in specs if s.block == 0 and s.stage == 1]
    assert first == [(1, "downsample"), (1, "conv1"), (1, "conv2")]
    assert next(s for s in specs if s.stage == 1 and s.role == "conv1").stride == 2


def test_skeleton_interface():
    model = _randomize(ResNetLayout("bottleneck", (1, 1, 1, 1), widths=(4, 8, 8, 16), stem_width=8, num_classes=5))
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [m.shape[1] for m in maps] == [16, 32, 32, 64]
        torch.testing.assert_close(model.forward_head(final), model(x))
    model.train()
    model.set_grad_checkpointing(True)
    y = model(x)
    y.sum().backward()
    assert model.prune_intermediate_layers([1]) == [1]
    assert isinstance(model.layer3, nn.Identity) and model.num_features == 32
    assert model(x).shape == (2, 32, 5, 5)  # pruning drops the pooling too, as in timm
    assert "stem" in model.group_matcher() and model.group_matcher(coarse=True)["blocks"] == r"^layer(\d+)"


def test_bad_arguments():
    with pytest.raises(ValueError, match="block"):
        ResNetLayout("wide")
    with pytest.raises(ValueError, match="layers"):
        ResNetLayout("basic", (2, 2, 2))
    with pytest.raises(ValueError, match="drop_path_schedule"):
        ResNetLayout(drop_path_schedule="cosine")
    with pytest.raises(TypeError, match="conv_factory"):
        ResNetLayout(conv_factory=lambda spec: None)
    with pytest.raises(TypeError, match="kw"):
        zoo.kw_resnet.KWResNet(kw="yes")
