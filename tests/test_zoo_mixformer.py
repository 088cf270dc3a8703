"""MixFormer B0-B3: registration, features, parameter counts, the official (Paddle) layout, layer order.

The outputs were checked against the official PaddlePaddle code and a PyTorch transliteration of it
outside the suite (see ``docs/zoo/mixformer.md``); here the official key names and shapes are
restated by hand and the macro is restated functionally.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import zoo.mixformer
from helpers import randomize_
from unifiedops.mixers import convert_paddle_state_dict
from zoo.mixformer import MixFormer

F64 = torch.float64
VARIANTS = {
    # name: (C, depths, heads, parameters of the official Paddle model, counted without BN statistics)
    "mixformer_b0": (24, (1, 2, 6, 6), (3, 6, 12, 24), 5_098_767),
    "mixformer_b1": (32, (1, 2, 6, 6), (2, 4, 8, 16), 7_887_877),
    "mixformer_b2": (32, (2, 2, 8, 8), (2, 4, 8, 16), 9_894_848),
    "mixformer_b3": (48, (2, 2, 8, 6), (3, 6, 12, 24), 16_747_808),
}


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{leaf}": (c,) for leaf in ("weight", "bias", "_mean", "_variance")}


def _affine(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _linear(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cin, cout), f"{prefix}.bias": (cout,)}  # Paddle stores (in, out)


def _conv(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def official_layout(c: int, depths: tuple[int, ...], heads: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The official Paddle ``MixFormer`` state dict: names and shapes, written out by hand."""
    h = c // 2
    keys = {}
    for i, cin in enumerate((3, h, h)):
        keys |= _conv(f"patch_embed.stem.{3 * i}", cin, h, 3) | _bn(f"patch_embed.stem.{3 * i + 1}", h)
    keys |= _conv("patch_embed.proj", h, c, 2) | _affine("patch_embed.norm", c)
    for s, (depth, nh) in enumerate(zip(depths, heads, strict=True)):
        d = c * 2**s
        for j in range(depth):
            b = f"layers.{s}.blocks.{j}"
            a = f"{b}.attn"
            keys |= _affine(f"{b}.norm1", d) | _affine(f"{b}.norm2", d)
            keys |= _linear(f"{b}.mlp.fc1", d, 4 * d) | _linear(f"{b}.mlp.fc2", 4 * d, d)
            keys |= {f"{a}.relative_position_bias_table": (169, nh), f"{a}.relative_position_index": (49, 49)}
            keys |= _linear(f"{a}.proj_attn", d, d // 2) | _affine(f"{a}.proj_attn_norm", d // 2)
            keys |= _linear(f"{a}.proj_cnn", d, d) | _affine(f"{a}.proj_cnn_norm", d)
            keys |= {f"{a}.dwconv3x3.0.weight": (d, 1, 3, 3), f"{a}.dwconv3x3.0.bias": (d,)} | _bn(
                f"{a}.dwconv3x3.1", d
            )
            keys |= _conv(f"{a}.channel_interaction.0", d, d // 8, 1) | _bn(f"{a}.channel_interaction.1", d // 8)
            keys |= _conv(f"{a}.channel_interaction.3", d // 8, d // 2, 1)
            keys |= _conv(f"{a}.projection", d, d // 2, 1) | _bn(f"{a}.conv_norm", d // 2)
            keys |= _linear(f"{a}.qkv", d // 2, 3 * d // 2)
            keys |= _conv(f"{a}.spatial_interaction.0", d // 2, d // 16, 1) | _bn(f"{a}.spatial_interaction.1", d // 16)
            keys |= _conv(f"{a}.spatial_interaction.3", d // 16, 1, 1)
            keys |= _affine(f"{a}.attn_norm", d // 2) | _linear(f"{a}.proj", d, d)
        if s + 1 < len(depths):
            keys |= _bn(f"layers.{s}.downsample.norm", d) | _conv(f"layers.{s}.downsample.reduction", d, 2 * d, 2)
    last = c * 2 ** (len(depths) - 1)
    return keys | _affine("norm", last) | _linear("last_proj", last, 1280) | _linear("head", 1280, 1000)


@pytest.mark.parametrize("name", VARIANTS)
def test_registered_with_config_and_official_parameter_count(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert model.pretrained_cfg["architecture"] == name
    assert not model.pretrained_cfg.get("url") and not model.pretrained_cfg.get("hf_hub_id")
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 3
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name][3]


@pytest.mark.parametrize("name", VARIANTS)
def test_official_paddle_layout_loads_strict(name):
    c, depths, heads, _ = VARIANTS[name]
    layout = official_layout(c, depths, heads)
    paddle_sd = {k: np.full(shape, 0.5, dtype=np.float32) for k, shape in layout.items()}
    with torch.device("meta"):
        model = timm.create_model(name)
    model.load_state_dict(convert_paddle_state_dict(paddle_sd), strict=True, assign=True)
    # Every official tensor but the computed relative-position index has a home of the right size.
    assert (
        sum(v.size for k, v in paddle_sd.items() if "_mean" not in k and "_variance" not in k and "index" not in k)
        == (VARIANTS[name][3])
    )


def test_features_only_maps_and_reductions():
    with torch.device("meta"):
        model = timm.create_model("mixformer_b1", features_only=True)
        feats = model(torch.empty(2, 3, 224, 224))
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [(2, 32 * 2**i, 56 // 2**i, 56 // 2**i) for i in range(4)]


@torch.no_grad()
def test_forward_sizes_b0():
    model = timm.create_model("mixformer_b0").eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    # 222 x 254 is padded by the stem to 224 x 256; stage maps 56x64 ... 7x8 are padded to windows.
    feats = model.forward_intermediates(torch.randn(1, 3, 222, 254), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(56, 64), (28, 32), (14, 16), (7, 8)]
    with pytest.raises(ValueError, match="even map, got 25x29"):
        model(torch.randn(1, 3, 200, 232))


def _tiny(**kwargs) -> MixFormer:
    torch.manual_seed(0)
    model = MixFormer(16, (1, 2, 1, 1), (2, 2, 4, 4), num_classes=5, window_size=4, head_dim=24, **kwargs)
    return randomize_(model, 0.3).to(F64).eval()


def _restated(model: MixFormer, x: torch.Tensor) -> torch.Tensor:
    """The official macro written out functionally; each block's mixer is run as a unit (its own
    order is checked in ``test_mixers.py``)."""

    def ln(t, m):
        return F.layer_norm(t, m.normalized_shape, m.weight, m.bias, m.eps)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    pe = model.patch_embed
    x = F.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4))
    for i in range(3):
        conv = pe.stem[3 * i]
        x = F.gelu(bn(F.conv2d(x, conv.weight, conv.bias, 2 if i == 0 else 1, 1), pe.stem[3 * i + 1]))
    x = ln(F.conv2d(x, pe.proj.weight, pe.proj.bias, 2).permute(0, 2, 3, 1), pe.norm)
    for layer in model.layers:
        for blk in layer.blocks:
            x = x + blk.attn(ln(x, blk.norm1))
            hidden = F.gelu(F.linear(ln(x, blk.norm2), blk.mlp.fc1.weight, blk.mlp.fc1.bias))
            x = x + F.linear(hidden, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        if isinstance(layer.downsample, zoo.mixformer.ConvMerging):
            ds = layer.downsample
            y = F.conv2d(bn(x.permute(0, 3, 1, 2), ds.norm), ds.reduction.weight, ds.reduction.bias, 2)
            x = y.permute(0, 2, 3, 1)
    x = F.gelu(F.linear(ln(x, model.norm), model.last_proj.weight, model.last_proj.bias))
    return F.linear(x.mean((1, 2)), model.head.weight, model.head.bias)


@torch.no_grad()
def test_layer_order_matches_functional_restatement():
    model = _tiny()
    for size in ((64, 64), (62, 61)):
        x = torch.randn(2, 3, *size, dtype=F64)
        torch.testing.assert_close(model(x), _restated(model, x), rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_head_interface():
    model = _tiny()
    x = torch.randn(1, 3, 64, 64, dtype=F64)
    assert model.num_features == 128 and model.head_hidden_size == 24
    assert model.forward_features(x).shape == (1, 2, 2, 128)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (1, 24)
    model.reset_classifier(3)
    model.to(F64)
    assert model.head.in_features == 24 and model(x).shape == (1, 3)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    kept = model.prune_intermediate_layers(indices=(0, 1))
    assert kept == [0, 1] and len(model.layers) == 2 and isinstance(model.last_proj, torch.nn.Identity)
    assert model(x).shape == (1, 8, 8, 32) and model.num_features == model.head_hidden_size == 32


def test_no_weight_decay_and_grad_checkpointing():
    model = _tiny(drop_path_rate=0.1).train()
    assert all(n.endswith("relative_position_bias_table") for n in model.no_weight_decay())
    assert len(model.no_weight_decay()) == 5
    model.set_grad_checkpointing()
    model(torch.randn(2, 3, 32, 32, dtype=F64)).sum().backward()
    assert model.layers[0].blocks[0].attn.qkv.weight.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="depths and num_heads"):
        MixFormer(16, (1, 1), (2,))
    with pytest.raises(ValueError, match="embed_dim"):
        MixFormer(15)
    with pytest.raises(TypeError, match="windw_size"):
        MixFormer(16, (1,), (2,), windw_size=4)
