"""ODConv MobileNetV2 (1x, 4x) and the shared MobileNetV2 skeleton: the official parameter counts,
which layers are dynamic, the official key names, forward and feature shapes, the official-name
converter, the temperature, and the skeleton's factory order, classifier factory and key order."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo.od_mobilenetv2  # noqa: F401  (registers the models until zoo imports the family)
from unifiedops.odconv import ODConv2d, OmniAttention, odconv_schedule
from unifiedops.testing import randomize_
from unifiedops.warehouse import set_temperature
from zoo.blocks.mobilenetv2_layout import (
    MOBILENETV2_ROWS,
    MobileNetV2ConvSpec,
    MobileNetV2Layout,
    convert_official_mobilenetv2,
    plain_mobilenetv2_conv,
)
from zoo.od_mobilenetv2 import ODMobileNetV2

# Counted by instantiating the official models (OSVAI/ODConv od_mobilenetv2_100, num_classes=1000,
# reduction 1/16); the README rounds them to 4.94M and 11.51M.
OFFICIAL_PARAMS = {"od_mobilenetv2_100_1x": 4_940_185, "od_mobilenetv2_100_4x": 11_512_149}
SHALLOW = tuple((t, c, 1, s) for t, c, _, s in MOBILENETV2_ROWS)  # one block per row


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_equals_the_official_model(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and cfg["first_conv"] == "conv_stem" and cfg["classifier"] == "classifier"
    assert model.head_drop.p == 0.2  # the official model's and README command's dropout


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_block_and_head_convs_are_odconv_and_the_stem_plain(name):
    model = meta_model(name)
    kernel_num = 4 if name.endswith("4x") else 1
    plain = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".attention." not in n}
    dynamic = {n: m for n, m in model.named_modules() if isinstance(m, ODConv2d)}
    assert plain == {"conv_stem"}
    # 17 blocks of three convolutions but the first (no expansion), and the head.
    assert len(dynamic) == 17 * 3 - 1 + 1 and "conv_head" in dynamic
    assert {m.weight.shape[0] for m in dynamic.values()} == {kernel_num}
    assert dynamic["blocks.1.0.conv_dw"].neighbourhood.stride == 2  # the strided depth-wise 3x3
    assert tuple(dynamic["blocks.1.0.conv_dw"].weight.shape) == (kernel_num, 96, 1, 3, 3)
    assert isinstance(model.classifier, nn.Linear)


def test_official_key_names_and_shapes():
    four = {k: tuple(v.shape) for k, v in meta_model("od_mobilenetv2_100_4x").state_dict().items()}
    one = {k: tuple(v.shape) for k, v in meta_model("od_mobilenetv2_100_1x").state_dict().items()}
    expected = {
        "conv_stem.weight": (32, 3, 3, 3),
        "bn1.running_var": (32,),
        "blocks.0.0.conv_dw.weight": (4, 32, 1, 3, 3),
        "blocks.0.0.conv_pw.weight": (4, 16, 32, 1, 1),
        "blocks.1.0.conv_pw.weight": (4, 96, 16, 1, 1),
        "blocks.1.0.conv_pw.attention.fc.weight": (16, 16, 1, 1),  # hidden width at least 16
        "blocks.1.0.conv_pw.attention.bn.running_mean": (16,),
        "blocks.1.0.conv_pw.attention.channel_fc.bias": (16,),
        "blocks.1.0.conv_pw.attention.filter_fc.weight": (96, 16, 1, 1),
        "blocks.1.0.conv_dw.attention.spatial_fc.weight": (9, 16, 1, 1),
        "blocks.1.0.conv_pwl.weight": (4, 24, 96, 1, 1),
        "blocks.6.0.conv_pwl.attention.fc.weight": (60, 960, 1, 1),  # int(960 / 16)
        "blocks.6.0.conv_pwl.attention.kernel_fc.weight": (4, 60, 1, 1),
        "conv_head.weight": (4, 1280, 320, 1, 1),
        "conv_head.attention.filter_fc.bias": (1280,),
        "bn2.weight": (1280,),
        "classifier.weight": (1000, 1280),
    }
    for key, shape in expected.items():
        assert four[key] == shape, key
        assert one.get(key.replace("kernel_fc", "channel_fc"), None) is not None, key
    assert one["conv_head.weight"] == (1, 1280, 320, 1, 1)
    assert not [k for k in four if ".conv_dw.attention.filter_fc." in k]  # depth-wise: no filter head
    assert not [k for k in four if ".conv_pw.attention.spatial_fc." in k or ".conv_pwl.attention.spatial_fc." in k]
    assert not [k for k in one if ".kernel_fc." in k] and len([k for k in four if "kernel_fc.weight" in k]) == 51


@torch.no_grad()
def test_forward_shapes_features_and_intermediates():
    torch.manual_seed(0)
    model = timm.create_model("od_mobilenetv2_100_1x", num_classes=10, rows=SHALLOW)
    x = torch.randn(2, 3, 64, 64)
    assert model.train()(x).shape == (2, 10)
    assert model.eval()(x[:1]).shape == (1, 10)
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]
    final, inter = model.forward_intermediates(x, indices=[3])
    assert final.shape == (2, 1280, 2, 2) and len(inter) == 1
    feats = timm.create_model("od_mobilenetv2_100_4x", features_only=True, rows=SHALLOW).eval()
    assert feats.feature_info.channels() == [24, 32, 96, 320] and feats.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(m.shape[1:]) for m in feats(torch.randn(2, 3, 72, 56))] == [
        (24, 18, 14),
        (32, 9, 7),
        (96, 5, 4),
        (320, 3, 2),
    ]


@torch.no_grad()
def test_inverted_residual_against_restatement():
    """A block is ``x + bn3(pwl(relu6(bn2(dw(relu6(bn1(pw(x))))))))`` with its own ODConv layers."""
    torch.manual_seed(1)
    model = randomize_(ODMobileNetV2(width_mult=0.5, kernel_num=4).double(), 0.3).eval()
    set_temperature(model, 0.7, OmniAttention)
    block = model.blocks[2][1]  # stride 1, 16 -> 16 channels: residual

    def bn(norm, y):
        return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)

    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    y = F.relu6(bn(block.bn1, block.conv_pw(x)))
    y = F.relu6(bn(block.bn2, block.conv_dw(y)))
    expected = x + bn(block.bn3, block.conv_pwl(y))
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)
    # Control: without the residual the block differs.
    assert not torch.allclose(block(x), expected - x)


def _official_keys(ours: list[str]) -> list[str]:
    """Our keys as the official (torchvision-layout) model names them: written out independently."""
    places = [(r, j) for r, (_, _, n, _) in enumerate(MOBILENETV2_ROWS) for j in range(n)]
    feature = {f"blocks.{r}.{j}.": i + 1 for i, (r, j) in enumerate(places)}
    first = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
    other = {"conv_pw": "conv.0.0", "bn1": "conv.0.1", "conv_dw": "conv.1.0", "bn2": "conv.1.1"}
    other |= {"conv_pwl": "conv.2", "bn3": "conv.3"}
    out = []
    for key in ours:
        for prefix, official in (("conv_stem.", "features.0.0."), ("bn1.", "features.0.1.")):
            key = key.replace(prefix, official, 1) if key.startswith(prefix) else key
        for prefix, official in (("conv_head.", "features.18.0."), ("bn2.", "features.18.1.")):
            key = key.replace(prefix, official, 1) if key.startswith(prefix) else key
        key = "classifier.1." + key.removeprefix("classifier.") if key.startswith("classifier.") else key
        if key.startswith("blocks."):
            row, j, layer, rest = key.removeprefix("blocks.").split(".", 3)
            names = first if row == "0" else other
            key = f"features.{feature[f'blocks.{row}.{j}.']}.{names[layer]}.{rest}"
        out.append(key)
    return out


def test_converter_round_trip_from_official_names():
    torch.manual_seed(2)
    model = timm.create_model("od_mobilenetv2_100_4x", num_classes=10)
    ours = model.state_dict()
    official_names = _official_keys(list(ours))
    assert official_names[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.2.conv.1.0.attention.spatial_fc.weight" in official_names
    assert "features.17.conv.2.attention.kernel_fc.bias" in official_names
    assert official_names[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    # A DataParallel checkpoint, with random tensors so that a misplaced one is seen.
    official = {
        f"module.{k}": torch.randn_like(v) if v.is_floating_point() else torch.randint_like(v, 100)
        for k, v in zip(official_names, ours.values(), strict=True)
    }
    converted = convert_official_mobilenetv2(official)
    assert list(converted) == list(ours)
    fresh = timm.create_model("od_mobilenetv2_100_4x", num_classes=10)
    fresh.load_state_dict(converted, strict=True)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in converted.items())
    with pytest.raises(ValueError, match="layout"):
        convert_official_mobilenetv2({"features.3.conv.7.weight": torch.zeros(1)})


@torch.no_grad()
def test_temperature_reaches_every_attention_and_changes_the_output():
    torch.manual_seed(3)
    model = randomize_(timm.create_model("od_mobilenetv2_100_4x", num_classes=10, rows=SHALLOW), 0.2).eval()
    x = torch.randn(2, 3, 64, 64)
    cold = model(x)
    assert set_temperature(model, 30.0, OmniAttention) == 7 * 3 - 1 + 1
    assert {m.temperature for m in model.modules() if isinstance(m, OmniAttention)} == {30.0}
    assert not torch.allclose(model(x), cold)
    schedule = odconv_schedule(iters_per_epoch=2)
    assert schedule.step(model) == pytest.approx(30 - 29 / 20)
    assert {m.temperature for m in model.modules() if isinstance(m, OmniAttention)} == {schedule.value(1)}


def test_shallow_model_trains():
    torch.manual_seed(4)
    model = ODMobileNetV2(kernel_num=4, num_classes=5, rows=SHALLOW, drop_path_rate=0.1)
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- the shared skeleton ---------------------------------------------------------------------------------


def test_layout_calls_the_factory_in_the_official_order():
    specs = []

    def recording(spec: MobileNetV2ConvSpec) -> nn.Module:
        specs.append(spec)
        return plain_mobilenetv2_conv(spec)

    with torch.device("meta"):
        model = MobileNetV2Layout(recording, width_mult=0.5)
    roles = [s.role for s in specs]
    assert roles == ["stem", "dw", "pwl", *["pw", "dw", "pwl"] * 16, "head"]
    assert specs[0] == MobileNetV2ConvSpec(3, 16, 3, 2, 1, -1, 0, "stem")
    assert specs[1] == MobileNetV2ConvSpec(16, 16, 3, 1, 16, 0, 0, "dw")
    assert specs[4] == MobileNetV2ConvSpec(48, 48, 3, 2, 48, 1, 0, "dw")  # 16 * 6 hidden, strided
    assert specs[-1] == MobileNetV2ConvSpec(160, 1280, 1, 1, 1, 7, 0, "head")
    assert [(s.row, s.block) for s in specs if s.role == "pwl"][-4:] == [(5, 0), (5, 1), (5, 2), (6, 0)]
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in timm.create_model("mobilenetv2_050", pretrained=False).parameters()
    )


def test_layout_classifier_factory_and_shared_modules_lead_the_state_dict():
    class Classifier(nn.Module):
        def __init__(self, cin: int, classes: int) -> None:
            super().__init__()
            self.proj = nn.Linear(cin, classes, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    shared = nn.Module()
    shared.register_buffer("table", torch.zeros(3))
    model = MobileNetV2Layout(
        classifier_factory=Classifier, width_mult=0.5, num_classes=7, rows=SHALLOW, shared={"bank": shared}
    )
    keys = list(model.state_dict())
    assert keys[0] == "bank.table" and keys[-1] == "classifier.proj.weight"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(MobileNetV2Layout(classifier_factory=Classifier, num_classes=0).classifier, nn.Identity)


def test_layout_errors():
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2Layout(width_mult=0)
    with pytest.raises(ValueError, match="rows"):
        MobileNetV2Layout(rows=SHALLOW[:6])
    with pytest.raises(ValueError, match="rows"):
        MobileNetV2Layout(rows=((1, 16, 0, 1), *SHALLOW[1:]))
    with pytest.raises(TypeError, match="conv_factory"):
        MobileNetV2Layout("conv")
    with pytest.raises(TypeError, match="conv_factory"):
        MobileNetV2Layout(lambda spec: None)
    with pytest.raises(TypeError, match="classifier_factory"):
        MobileNetV2Layout(classifier_factory=lambda cin, n: None, rows=SHALLOW)
    with pytest.raises(TypeError, match="shared"):
        MobileNetV2Layout(shared={"bank": 3})
