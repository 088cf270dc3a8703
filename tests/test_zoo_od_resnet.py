"""ODConv ResNets: the official parameter counts, which layers are dynamic, the official key names."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo.od_resnet  # noqa: F401  (registers the models until zoo imports the family)
from unifiedops.odconv import ODConv2d, OmniAttention, odconv_schedule

# Counted by instantiating the official models (OSVAI/ODConv, num_classes=1000); the README rounds them to
# 11.94M, 44.90M, 28.64M and 90.67M.
OFFICIAL_PARAMS = {
    "od_resnet18_1x": 11_943_944,
    "od_resnet18_4x": 44_901_640,
    "od_resnet50_1x": 28_635_112,
    "od_resnet50_4x": 90_670_888,
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_equals_the_official_model(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", ["od_resnet18_4x", "od_resnet50_1x"])
def test_block_convs_are_odconv_and_the_stem_and_shortcuts_plain(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    kernel_num = 4 if name.endswith("4x") else 1
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | ODConv2d) and ".attention." not in n}
    dynamic = {n for n, m in convs.items() if isinstance(m, ODConv2d)}
    plain = set(convs) - dynamic
    assert plain == {"conv1"} | {n for n in convs if ".downsample." in n}
    assert all(n.rsplit(".", 1)[-1] in ("conv1", "conv2", "conv3") for n in dynamic)
    assert {convs[n].weight.shape[0] for n in dynamic} == {kernel_num}
    block = "layer2.0.conv2" if "50" in name else "layer2.0.conv1"  # the strided 3x3
    assert convs[block].neighbourhood.stride == 2


def test_official_key_names():
    with torch.device("meta"):
        keys = set(timm.create_model("od_resnet50_4x").state_dict())
    for key in (
        "layer1.0.conv1.weight",
        "layer1.0.conv1.attention.fc.weight",
        "layer1.0.conv1.attention.bn.running_var",
        "layer1.0.conv1.attention.channel_fc.bias",
        "layer1.0.conv1.attention.filter_fc.weight",
        "layer1.0.conv1.attention.kernel_fc.weight",
        "layer1.0.conv2.attention.spatial_fc.weight",
        "layer1.0.downsample.0.weight",
        "fc.weight",
    ):
        assert key in keys, key
    assert "layer1.0.conv1.attention.spatial_fc.weight" not in keys  # a 1x1 layer has no spatial head


def test_shallow_model_trains_and_the_schedule_reaches_every_layer():
    torch.manual_seed(0)
    model = timm.create_model("od_resnet18_4x", layers=(1, 1, 1, 1), num_classes=10)
    schedule = odconv_schedule(iters_per_epoch=2)
    assert schedule.step(model) == pytest.approx(30 - 29 / 20)
    attentions = [m for m in model.modules() if isinstance(m, OmniAttention)]
    assert len(attentions) == 8 and {a.temperature for a in attentions} == {schedule.value(1)}
    x = torch.randn(2, 3, 64, 64)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.eval()(x[:1]).shape == (1, 10)
