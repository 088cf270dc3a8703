"""UniFormer in the zoo: registration, official layout, layer order, forward passes and the timm interface."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401  (registers the models with timm)
from helpers import assert_grad_checkpointing_is_exact, batch_norm_eval, randomize_
from zoo.uniformer import UniFormer, uniformer_attention_block, uniformer_conv_block

NAMES = ("uniformer_small", "uniformer_base")
# The README and paper give whole millions (22M, 50M); the official code counts 21.55M and 49.78M.
OFFICIAL_COUNT = {"uniformer_small": 21_545_256, "uniformer_base": 49_776_552}


def _tiny(**kwargs) -> UniFormer:
    return UniFormer(depths=(1, 2, 1, 1), embed_dims=(8, 16, 32, 32), head_dim=8, num_classes=5, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_published(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    # Registration, configs and rounding to the paper are checked for every model in test_zoo_models
    # and test_zoo_published; here the count must equal the official code's to the parameter.
    assert count == OFFICIAL_COUNT[name]


def _conv_block_keys(i: int, dim: int) -> dict[str, tuple[int, ...]]:
    b = f"blocks{i}.0"
    return {
        f"{b}.pos_embed.weight": (dim, 1, 3, 3),
        f"{b}.pos_embed.bias": (dim,),
        f"{b}.norm1.weight": (dim,),
        f"{b}.norm1.running_mean": (dim,),
        f"{b}.norm1.num_batches_tracked": (),
        f"{b}.conv1.weight": (dim, dim, 1, 1),
        f"{b}.conv1.bias": (dim,),
        f"{b}.attn.weight": (dim, 1, 5, 5),
        f"{b}.attn.bias": (dim,),
        f"{b}.conv2.weight": (dim, dim, 1, 1),
        f"{b}.conv2.bias": (dim,),
        f"{b}.norm2.running_var": (dim,),
        f"{b}.mlp.fc1.weight": (4 * dim, dim, 1, 1),
        f"{b}.mlp.fc1.bias": (4 * dim,),
        f"{b}.mlp.fc2.weight": (dim, 4 * dim, 1, 1),
        f"{b}.mlp.fc2.bias": (dim,),
    }


def _attention_block_keys(i: int, dim: int) -> dict[str, tuple[int, ...]]:
    b = f"blocks{i}.0"
    return {
        f"{b}.pos_embed.weight": (dim, 1, 3, 3),
        f"{b}.pos_embed.bias": (dim,),
        f"{b}.norm1.weight": (dim,),
        f"{b}.norm1.bias": (dim,),
        f"{b}.attn.qkv.weight": (3 * dim, dim),
        f"{b}.attn.qkv.bias": (3 * dim,),
        f"{b}.attn.proj.weight": (dim, dim),
        f"{b}.attn.proj.bias": (dim,),
        f"{b}.norm2.weight": (dim,),
        f"{b}.mlp.fc1.weight": (4 * dim, dim),
        f"{b}.mlp.fc1.bias": (4 * dim,),
        f"{b}.mlp.fc2.weight": (dim, 4 * dim),
        f"{b}.mlp.fc2.bias": (dim,),
    }


def test_official_key_names_and_shapes():
    with torch.device("meta"):
        sd = timm.create_model("uniformer_small").state_dict()
    expected = {
        "patch_embed1.proj.weight": (64, 3, 4, 4),
        "patch_embed1.proj.bias": (64,),
        "patch_embed1.norm.weight": (64,),
        "patch_embed2.proj.weight": (128, 64, 2, 2),
        "patch_embed4.proj.weight": (512, 320, 2, 2),
        "patch_embed4.norm.bias": (512,),
        "norm.weight": (512,),
        "norm.running_var": (512,),
        "head.weight": (1000, 512),
        "head.bias": (1000,),
        **_conv_block_keys(1, 64),
        **_conv_block_keys(2, 128),
        **_attention_block_keys(3, 320),
        **_attention_block_keys(4, 512),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    allowed = re.compile(
        r"^(patch_embed[1-4]\.(proj|norm)\.(weight|bias)|norm\.\w+|head\.(weight|bias)"
        r"|blocks[12]\.\d+\.((pos_embed|conv1|attn|conv2|mlp\.fc1|mlp\.fc2)\.(weight|bias)|norm[12]\.\w+)"
        r"|blocks[34]\.\d+\.(pos_embed|norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias))$"
    )
    assert [k for k in sd if not allowed.match(k)] == []
    assert sum(k.startswith("blocks2.3.") for k in sd) == 22
    assert sum(k.startswith("blocks3.7.") for k in sd) == 14
    assert not any(k.startswith(("blocks2.4.", "blocks3.8.")) for k in sd)


def _dpe(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + F.conv2d(x, block.pos_embed.weight, block.pos_embed.bias, padding=1, groups=x.shape[1])


def _conv_block_reference(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official ``CBlock`` order, with functional ops: DPE, local MHRA on BN, CMlp on BN."""
    x = _dpe(block, x)
    h = F.conv2d(batch_norm_eval(x, block.norm1), block.conv1.weight, block.conv1.bias)
    h = F.conv2d(h, block.attn.weight, block.attn.bias, padding=2, groups=x.shape[1])
    x = x + F.conv2d(h, block.conv2.weight, block.conv2.bias)
    h = F.gelu(F.conv2d(batch_norm_eval(x, block.norm2), block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.conv2d(h, block.mlp.fc2.weight, block.mlp.fc2.bias)


def _attention_block_reference(block: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """The official ``SABlock`` order on ``(B, C, H, W)``: DPE, then MHSA on LN and Mlp on LN over tokens."""
    x = _dpe(block, x)
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    n1, n2 = block.norm1, block.norm2
    q, k, v = F.linear(
        F.layer_norm(t, (c,), n1.weight, n1.bias, n1.eps), block.attn.qkv.weight, block.attn.qkv.bias
    ).chunk(3, -1)
    q, k, v = (z.reshape(b, -1, heads, c // heads).transpose(1, 2) for z in (q, k, v))
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
    o = (attn @ v).transpose(1, 2).reshape(b, -1, c)
    t = t + F.linear(o, block.attn.proj.weight, block.attn.proj.bias)
    m = F.gelu(F.linear(F.layer_norm(t, (c,), n2.weight, n2.bias, n2.eps), block.mlp.fc1.weight, block.mlp.fc1.bias))
    t = t + F.linear(m, block.mlp.fc2.weight, block.mlp.fc2.bias)
    return t.transpose(1, 2).reshape(b, c, h, w)


def test_conv_block_matches_functional_restatement():
    torch.manual_seed(0)
    block = randomize_(uniformer_conv_block(6, mlp_ratio=2.0)).double().eval()
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _conv_block_reference(block, x), rtol=1e-10, atol=1e-10)


def test_attention_block_matches_functional_restatement():
    torch.manual_seed(0)
    block = randomize_(uniformer_attention_block(16, mlp_ratio=2.0, head_dim=4), 0.3).double().eval()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, _attention_block_reference(block, x, heads=4), rtol=1e-10, atol=1e-10)


def test_attention_block_layer_scale():
    block = uniformer_attention_block(16, head_dim=8, layer_scale_init=1e-6)
    assert tuple(block.gamma_1.shape) == (16,) and float(block.gamma_2.detach()[0]) == pytest.approx(1e-6)
    assert not hasattr(uniformer_attention_block(16, head_dim=8), "gamma_1")


@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_forward_smallest_variant(size):
    model = timm.create_model("uniformer_small").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    # Non-overlapping embeddings floor: 200x232 gives 50x58, 25x29, 12x14, 6x7.
    h, w = size[0] // 4, size[1] // 4
    for m in maps:
        assert m.shape[-2:] == (h, w)
        h, w = h // 2, w // 2


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="at least 32x32"):
        _tiny()(torch.randn(1, 3, 16, 64))


def test_intermediates_agree_with_forward_and_prune():
    torch.manual_seed(0)
    model = randomize_(_tiny(), 0.2).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_norm(maps[-1]), final)
        model.prune_intermediate_layers([2])
        assert not hasattr(model, "blocks4") and not hasattr(model, "patch_embed4")
        torch.testing.assert_close(model.forward_intermediates(x, indices=[2], intermediates_only=True)[0], maps[2])


def test_grad_checkpointing_is_exact():
    torch.manual_seed(0)
    assert_grad_checkpointing_is_exact(_tiny().train(), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depths=(1, 1, 1)), "depths"),
        (dict(depths=(1, 1, 1, 1), global_stages=5), "global_stages"),
        (dict(depths=(1, 1, 1, 1), head_dim=100), "head_dim"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniFormer(**kwargs)
