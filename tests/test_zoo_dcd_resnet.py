"""DCD ResNets: the official parameter counts, which layers are dynamic, the official latent sizes and key
names, the official checkpoint layout, and a training step."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo.dcd_resnet  # noqa: F401  (registers the models until zoo imports the family)
from unifiedops.dcd import DCDConv2d, DCDLinear
from zoo.dcd_resnet import convert_official_dcd_resnet

# Counted by instantiating the official models (liyunsheng13/dcd resnet_dcd.py, num_classes=1000; the
# classifier is the dynamic DYCls); the paper rounds them to 14.7M and 29.8M.
OFFICIAL_PARAMS = {"dcd_resnet18": 14_703_332, "dcd_resnet50": 29_835_056}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_equals_the_official_model(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


# Latent size, context width and pooled size of some layers of the official models.
OFFICIAL_LAYERS = {
    "dcd_resnet18": {"layer1.0.conv1": (16, 16, 2), "layer2.0.conv1": (16, 16, 2), "layer4.1.conv2": (45, 128, 2)},
    "dcd_resnet50": {"layer1.0.conv1": (8, 4, 1), "layer2.0.conv2": (11, 8, 1), "layer4.1.conv1": (45, 128, 1)},
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_block_convs_are_dcd_with_the_official_sizes(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | DCDConv2d | DCDLinear)}
    dynamic = {n for n, m in convs.items() if isinstance(m, DCDConv2d | DCDLinear)}
    inner = {n for n in convs if any(n.startswith(f"{d}.") for d in dynamic)}  # a DCD layer's own q, p, conv
    assert set(convs) - dynamic - inner == {"conv1"} | {n for n in convs if ".downsample." in n}
    assert all(n.rsplit(".", 1)[-1] in ("conv1", "conv2", "conv3") for n in dynamic - {"fc"})
    for layer, dims in OFFICIAL_LAYERS[name].items():
        source = convs[layer].source
        assert (source.latent, source.squeeze, source.pool) == dims, layer
    strided = convs["layer2.0.conv2" if "50" in name else "layer2.0.conv1"]
    assert strided.neighbourhood.stride == 2 and strided.q.stride == (2, 2)
    assert isinstance(model.fc, DCDLinear) and model.fc.source.latent == 32


def test_official_checkpoint_layout_loads():
    """An official (DataParallel) state dict: ``module.`` prefixes, ``classifier.0`` for ``fc`` and the
    classifier's ``Linear`` names and shapes."""
    model = timm.create_model("dcd_resnet18", layers=(1, 1, 1, 1), num_classes=10)
    names = {"conv": "cls", "q": "cls_q", "p": "cls_p"}
    official = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            head, _, rest = key[3:].partition(".")
            value = value.flatten(1) if head in names and rest == "weight" else value
            key = f"classifier.0.{names.get(head, head)}.{rest}"
        official[f"module.{key}"] = value + 1
    assert official["module.classifier.0.cls.weight"].shape == (10, 512)
    model.load_state_dict(convert_official_dcd_resnet(official), strict=True)
    assert torch.equal(model.fc.conv.weight.flatten(1), official["module.classifier.0.cls.weight"])
    with_dropout = {k.replace("classifier.0.", "classifier.1."): v for k, v in official.items()}
    assert convert_official_dcd_resnet(with_dropout).keys() == model.state_dict().keys()


def test_shallow_model_trains_and_pools_any_size():
    torch.manual_seed(0)
    model = timm.create_model("dcd_resnet50", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=10)
    x = torch.randn(2, 3, 96, 80)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.eval()(x[:1]).shape == (1, 10)
    model.reset_classifier(5)
    assert isinstance(model.fc, DCDLinear) and model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 256)
