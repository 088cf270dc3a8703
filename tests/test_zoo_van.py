"""VAN in the zoo: registration, official layout, layer order, forward passes and the timm interface."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401  (registers the models with timm)
from helpers import assert_grad_checkpointing_is_exact, batch_norm_eval, randomize_
from zoo.blocks import drop_path_rates
from zoo.van import VAN, van_block

NAMES = ("van_b0", "van_b1", "van_b2", "van_b3")


def _tiny(**kwargs) -> VAN:
    return VAN(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), mlp_ratios=(2, 2, 2, 2), num_classes=5, **kwargs)


def _first_block_keys(i: int, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    b = f"block{i}.0"
    return {
        f"{b}.layer_scale_1": (dim,),
        f"{b}.layer_scale_2": (dim,),
        f"{b}.norm1.weight": (dim,),
        f"{b}.norm1.running_var": (dim,),
        f"{b}.norm1.num_batches_tracked": (),
        f"{b}.attn.proj_1.weight": (dim, dim, 1, 1),
        f"{b}.attn.proj_1.bias": (dim,),
        f"{b}.attn.spatial_gating_unit.conv0.weight": (dim, 1, 5, 5),
        f"{b}.attn.spatial_gating_unit.conv0.bias": (dim,),
        f"{b}.attn.spatial_gating_unit.conv_spatial.weight": (dim, 1, 7, 7),
        f"{b}.attn.spatial_gating_unit.conv_spatial.bias": (dim,),
        f"{b}.attn.spatial_gating_unit.conv1.weight": (dim, dim, 1, 1),
        f"{b}.attn.spatial_gating_unit.conv1.bias": (dim,),
        f"{b}.attn.proj_2.weight": (dim, dim, 1, 1),
        f"{b}.norm2.bias": (dim,),
        f"{b}.mlp.fc1.weight": (hidden, dim, 1, 1),
        f"{b}.mlp.fc1.bias": (hidden,),
        f"{b}.mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3),
        f"{b}.mlp.dwconv.dwconv.bias": (hidden,),
        f"{b}.mlp.fc2.weight": (dim, hidden, 1, 1),
        f"{b}.mlp.fc2.bias": (dim,),
    }


def test_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = timm.create_model("van_b0").state_dict()
    dims, ratios = (32, 64, 160, 256), (8, 8, 4, 4)
    expected = {
        "patch_embed1.proj.weight": (32, 3, 7, 7),
        "patch_embed1.proj.bias": (32,),
        "patch_embed1.norm.running_mean": (32,),
        "patch_embed2.proj.weight": (64, 32, 3, 3),
        "patch_embed4.proj.weight": (256, 160, 3, 3),
        "norm1.weight": (32,),
        "norm4.bias": (256,),
        "head.weight": (1000, 256),
        "head.bias": (1000,),
    }
    for i, (dim, ratio) in enumerate(zip(dims, ratios, strict=True), start=1):
        expected.update(_first_block_keys(i, dim, dim * ratio))
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # Every key is one of the official kinds, and each block has the official 28 entries.
    allowed = re.compile(
        r"^(patch_embed[1-4]\.(proj\.(weight|bias)|norm\.\w+)|norm[1-4]\.(weight|bias)|head\.(weight|bias)"
        r"|block[1-4]\.\d+\.(layer_scale_[12]|norm[12]\.\w+|attn\.(proj_[12]|spatial_gating_unit\.(conv0|conv_spatial|conv1))"
        r"\.(weight|bias)|mlp\.(fc1|dwconv\.dwconv|fc2)\.(weight|bias)))$"
    )
    assert [k for k in sd if not allowed.match(k)] == []
    assert sum(k.startswith("block3.4.") for k in sd) == 28
    assert not any(k.startswith("block3.5.") for k in sd)


def _van_block_reference(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The VAN block written out with functional ops (the official order, from the paper and code)."""
    c = x.shape[1]
    a, lka = block.attn, block.attn.spatial_gating_unit
    h = batch_norm_eval(x, block.norm1)
    shortcut = h
    h = F.gelu(F.conv2d(h, a.proj_1.weight, a.proj_1.bias))
    gate = F.conv2d(h, lka.conv0.weight, lka.conv0.bias, padding=2, groups=c)
    gate = F.conv2d(gate, lka.conv_spatial.weight, lka.conv_spatial.bias, padding=9, dilation=3, groups=c)
    gate = F.conv2d(gate, lka.conv1.weight, lka.conv1.bias)
    h = F.conv2d(h * gate, a.proj_2.weight, a.proj_2.bias) + shortcut
    x = x + block.layer_scale_1.view(-1, 1, 1) * h
    m = block.mlp
    h = F.conv2d(batch_norm_eval(x, block.norm2), m.fc1.weight, m.fc1.bias)
    h = F.gelu(F.conv2d(h, m.dwconv.dwconv.weight, m.dwconv.dwconv.bias, padding=1, groups=h.shape[1]))
    h = F.conv2d(h, m.fc2.weight, m.fc2.bias)
    return x + block.layer_scale_2.view(-1, 1, 1) * h


def test_block_matches_functional_restatement():
    torch.manual_seed(0)
    block = randomize_(van_block(6, mlp_ratio=2.0)).double().eval()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _van_block_reference(block, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_forward_smallest_variant(size):
    model = timm.create_model("van_b0").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    # Overlapping embeddings round up: 200x232 gives 50x58, 25x29, 13x15, 7x8.
    h, w = size
    for i, m in enumerate(maps):
        h, w = (h + 3) // 4 if i == 0 else (h + 1) // 2, (w + 3) // 4 if i == 0 else (w + 1) // 2
        assert m.shape[-2:] == (h, w)


def test_intermediates_agree_with_forward_and_prune():
    torch.manual_seed(0)
    model = randomize_(_tiny(), 0.2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(maps[-1], final)  # VAN's last stage ends with its norm
        taken = model.prune_intermediate_layers([1])
        assert taken == [1]
        assert not hasattr(model, "block3") and not hasattr(model, "norm4")
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], maps[1])
        assert model(x).shape == (2, 16, 8, 8)  # pruning drops the pooling, as in timm


def test_grad_checkpointing_and_group_matcher():
    torch.manual_seed(0)
    model = _tiny().train()
    assert_grad_checkpointing_is_exact(model, torch.randn(2, 3, 32, 32))
    grads = dict(model.named_parameters())
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert len(groups) > 4 and sum(len(v) for v in groups.values()) == len(grads)


def test_drop_path_rates():
    rates = drop_path_rates(0.3, (1, 2, 1))
    assert [len(r) for r in rates] == [1, 2, 1]
    assert [r for stage in rates for r in stage] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, (1,)) == [[0.0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embed_dims=(8, 16), depths=(1, 1, 1)), "depths"),
        (dict(embed_dims=(8, 16), depths=(1, 1), mlp_ratios=(2,)), "mlp_ratios"),
        (dict(embed_dims=(8, 0), depths=(1, 1), mlp_ratios=(2, 2)), "embed_dims"),
        (dict(embed_dims=(8, 16), depths=(1, 0), mlp_ratios=(2, 2)), "depths"),
        (dict(embed_dims=(8,), depths=(1,), mlp_ratios=(2,), kernel_size=18), "kernel_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAN(**kwargs)
