"""DCD MobileNetV2: the official parameter count, which layers are dynamic with the official latent sizes,
the official checkpoint layout, and a training step."""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

import zoo.dcd_mobilenetv2  # noqa: F401  (registers the model until zoo imports the family)
from helpers import shallow_kwargs
from unifiedops.dcd import DCDConv2d, DCDLinear
from zoo.dcd_mobilenetv2 import convert_official_dcd_mobilenetv2

# Counted by instantiating the official model (liyunsheng13/dcd mobilenetv2_dcd, fc_squeeze=16,
# num_classes=1000, the dynamic DYCls classifier); the paper rounds it to 5.72M.
OFFICIAL_PARAMS = 5_720_028
# (latent, squeeze, pool) of some layers of the official model.
OFFICIAL_LAYERS = {
    "blocks.1.0.conv_pw": (8, 4, 2),  # 16 -> 96
    "blocks.1.0.conv_pwl": (12, 9, 1),  # 96 -> 24
    "blocks.1.1.conv_pw": (12, 9, 2),  # 24 -> 144
    "blocks.4.0.conv_pwl": (24, 36, 1),  # 384 -> 96
    "blocks.6.0.conv_pwl": (40, 100, 1),  # 960 -> 320
}


def test_parameter_count_equals_the_official_model():
    with torch.device("meta"):
        model = timm.create_model("dcd_mobilenetv2_100")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS


def test_expanding_blocks_point_wise_layers_and_the_classifier_are_dcd():
    with torch.device("meta"):
        model = timm.create_model("dcd_mobilenetv2_100")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | DCDConv2d)}
    dynamic = {n for n, m in convs.items() if isinstance(m, DCDConv2d)}
    inner = {n for n in convs if any(n.startswith(f"{d}.") for d in dynamic)}
    assert dynamic == {n for n in convs if re.fullmatch(r"blocks\.[1-6]\.\d+\.conv_pwl?", n)}
    plain = set(convs) - dynamic - inner
    assert {"conv_stem", "conv_head", "blocks.0.0.conv_dw", "blocks.0.0.conv_pw", "blocks.3.2.conv_dw"} <= plain
    for name, dims in OFFICIAL_LAYERS.items():
        source = convs[name].source
        assert (source.latent, source.squeeze, source.pool) == dims, name
    assert isinstance(model.classifier, DCDLinear) and model.classifier.in_features == 1280


def test_official_checkpoint_layout_loads():
    """The official layout (flat blocks, a top-level head ``conv``, ``conv_q``/``conv_p``, ``DYCls``),
    rebuilt from ours by the inverse renaming, loads after conversion."""
    model = timm.create_model("dcd_mobilenetv2_100", num_classes=10)
    flat = {"conv_pw": 0, "bn1": 1, "conv_dw": 3, "bn2": 4, "conv_pwl": 6, "bn3": 7}
    first = {"conv_dw": 0, "bn1": 1, "conv_pw": 3, "bn2": 4}
    index = {(r, j): i + 1 for i, (r, j) in enumerate((r, j) for r in range(7) for j in range(len(model.blocks[r])))}
    official = {}
    for key, value in model.state_dict().items():
        if m := re.match(r"blocks\.(\d)\.(\d+)\.(\w+)\.(.*)", key):
            r, j, layer, rest = int(m[1]), int(m[2]), m[3], m[4]
            rest = re.sub(r"^([qp])\.", r"conv_\1.", rest)
            key = f"features.{index[r, j]}.conv.{(first if r == 0 else flat)[layer]}.{rest}"
        elif key.startswith(("conv_stem.", "bn1.")):
            key = re.sub(r"^conv_stem\.", "features.0.0.", re.sub(r"^bn1\.", "features.0.1.", key))
        elif key.startswith(("conv_head.", "bn2.")):
            key = re.sub(r"^conv_head\.", "conv.0.", re.sub(r"^bn2\.", "conv.1.", key))
        else:
            head, rest = key.removeprefix("classifier.").split(".", 1)
            names = {"conv": "cls", "q": "cls_q", "p": "cls_p"}
            value = value.flatten(1) if head in names and rest == "weight" else value
            key = f"classifier.0.{names.get(head, head)}.{rest}"
        official[f"module.{key}"] = value + 1
    assert "module.features.2.conv.6.conv_q.weight" in official and "module.conv.1.running_var" in official
    model.load_state_dict(convert_official_dcd_mobilenetv2(official), strict=True)
    assert torch.equal(model.blocks[1][0].conv_pwl.q.weight, official["module.features.2.conv.6.conv_q.weight"])
    assert torch.equal(model.classifier.conv.weight.flatten(1), official["module.classifier.0.cls.weight"])


def test_shallow_model_trains():
    torch.manual_seed(0)
    model = timm.create_model("dcd_mobilenetv2_100", num_classes=10, **shallow_kwargs("dcd_mobilenetv2_100"))
    x = torch.randn(2, 3, 64, 64)
    model(x).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.eval()(x[:1]).shape == (1, 10)
    model.reset_classifier(5)
    assert isinstance(model.classifier, DCDLinear) and model(x).shape == (2, 5)
