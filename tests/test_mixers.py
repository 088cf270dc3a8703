"""UniFormer's relation aggregators and DPE, MixFormer's mixing attention: parameter counts and
names, plain-torch re-statements of the official layer order, fast paths against reference-path
compositions, the Paddle key converter, and gradcheck, in float64."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, assert_close, randomize_, seeds
from unifiedops import Aggregation
from unifiedops.mixers import (
    DynamicPositionEmbedding,
    MixingAttention,
    UniFormerGlobalMHRA,
    UniFormerLocalMHRA,
    convert_paddle_state_dict,
)

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def _set_paths(module: torch.nn.Module, which: str) -> None:
    """Every aggregation of a composite on its fast path (``"fast"``) or on the reference path."""
    for sub in module.modules():
        if isinstance(sub, Aggregation):
            sub.path = "auto" if which == "fast" else "reference"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _outputs_and_grads(module, x, which, grad_out):
    _set_paths(module, which)
    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(True)
    y = module(xx)
    y.backward(grad_out)
    return y.detach(), xx.grad, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_paths_agree(module, x) -> torch.Tensor:
    """All aggregations fast vs all on the reference path: output, input and parameter gradients."""
    _set_paths(module, "reference")
    with torch.no_grad():
        grad_out = torch.randn_like(module(x))
    y_ref, gx_ref, gp_ref = _outputs_and_grads(module, x, "reference", grad_out)
    y, gx, gp = _outputs_and_grads(module, x, "fast", grad_out)
    assert_close(y, y_ref, "output")
    assert_close(gx, gx_ref, "input gradient")
    assert set(gp) == set(gp_ref) == {n for n, _ in module.named_parameters()}
    for name in gp:
        assert_close(gp[name], gp_ref[name], f"gradient of {name}")
    return y


def _randomized(make, seed: int):
    torch.manual_seed(seed)
    return randomize_(make().double()).eval()


# --- parameter counts and names -------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 64, 320])
def test_uniformer_parameter_counts(dim):
    assert _count(UniFormerLocalMHRA(dim)) == 2 * (dim * dim + dim) + 25 * dim + dim
    assert _count(DynamicPositionEmbedding(dim)) == 9 * dim + dim
    head_dim = min(dim, 64)
    assert _count(UniFormerGlobalMHRA(dim, head_dim)) == 3 * dim * dim + 3 * dim + dim * dim + dim
    assert _count(UniFormerGlobalMHRA(dim, head_dim, qkv_bias=False)) == 4 * dim * dim + dim
    assert UniFormerGlobalMHRA(dim, head_dim=8).source.heads == dim // 8


def test_uniformer_names():
    assert list(UniFormerLocalMHRA(8).state_dict()) == [
        "conv1.weight", "conv1.bias", "attn.weight", "attn.bias", "conv2.weight", "conv2.bias"
    ]  # fmt: skip
    assert sorted(UniFormerGlobalMHRA(8, 4).state_dict()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]
    assert sorted(DynamicPositionEmbedding(8).state_dict()) == ["bias", "weight"]
    assert UniFormerLocalMHRA(8).attn.weight.shape == (8, 1, 5, 5)


def _mixing_count(dim: int, heads: int, ws: int, k: int) -> int:
    h, r8, r16 = dim // 2, dim // 8, dim // 16
    return (
        (2 * ws - 1) ** 2 * heads  # relative_position_bias_table
        + dim * h + h + 2 * h  # proj_attn, proj_attn_norm
        + dim * dim + dim + 2 * dim  # proj_cnn, proj_cnn_norm
        + dim * k * k + dim + 2 * dim  # dwconv3x3: depth-wise conv, BN
        + dim * r8 + r8 + 2 * r8 + r8 * h + h  # channel_interaction
        + dim * h + h + 2 * h  # projection, conv_norm
        + h * 3 * h + 3 * h  # qkv
        + h * r16 + r16 + 2 * r16 + r16 + 1  # spatial_interaction
        + 2 * h  # attn_norm
        + dim * dim + dim  # proj
    )  # fmt: skip


OFFICIAL_MIXING_KEYS = {
    "relative_position_bias_table",
    "proj_attn.weight", "proj_attn.bias", "proj_attn_norm.weight", "proj_attn_norm.bias",
    "proj_cnn.weight", "proj_cnn.bias", "proj_cnn_norm.weight", "proj_cnn_norm.bias",
    "dwconv3x3.0.weight", "dwconv3x3.0.bias",
    "channel_interaction.0.weight", "channel_interaction.0.bias",
    "channel_interaction.3.weight", "channel_interaction.3.bias",
    "projection.weight", "projection.bias",
    "qkv.weight", "qkv.bias",
    "spatial_interaction.0.weight", "spatial_interaction.0.bias",
    "spatial_interaction.3.weight", "spatial_interaction.3.bias",
    "attn_norm.weight", "attn_norm.bias", "proj.weight", "proj.bias",
}  # fmt: skip
BN_NAMES = ("dwconv3x3.1", "channel_interaction.1", "conv_norm", "spatial_interaction.1")


@pytest.mark.parametrize("dim,heads,ws,k", [(24, 3, 7, 3), (32, 2, 7, 3), (96, 6, 7, 3), (64, 4, 4, 5)])
def test_mixing_attention_parameter_count_and_names(dim, heads, ws, k):
    m = MixingAttention(dim, heads, ws, k)
    assert _count(m) == _mixing_count(dim, heads, ws, k)
    bn = {f"{n}.{leaf}" for n in BN_NAMES for leaf in ("weight", "bias")}
    assert {n for n, _ in m.named_parameters()} == OFFICIAL_MIXING_KEYS | bn
    assert m.qkv.weight.shape == (3 * (dim // 2), dim // 2)
    assert m.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, heads)
    assert m.path == "window_sdpa" and m.dwconv3x3[0].path == "conv" and m.projection.path == "conv"


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        MixingAttention(33, 1)
    with pytest.raises(ValueError, match="dim"):
        MixingAttention(8, 1)
    with pytest.raises(ValueError, match="num_heads"):
        MixingAttention(32, 3)
    with pytest.raises(ValueError, match="channels"):
        MixingAttention(32, 2)(torch.randn(1, 16, 7, 7))
    with pytest.raises(ValueError, match="head_dim"):
        UniFormerGlobalMHRA(32, head_dim=64)
    with pytest.raises(ValueError, match="num_heads"):
        UniFormerGlobalMHRA(100, head_dim=32)  # 3 heads do not divide 100
    with pytest.raises(TypeError, match="dim"):
        UniFormerLocalMHRA(8.0)


# --- UniFormer: re-statements of the official layer order -----------------------------------------------


def _local_restated(m: UniFormerLocalMHRA, x: torch.Tensor) -> torch.Tensor:
    y = F.conv2d(x, m.conv1.weight, m.conv1.bias)
    y = F.conv2d(y, m.attn.weight, m.attn.bias, padding=2, groups=x.shape[1])
    return F.conv2d(y, m.conv2.weight, m.conv2.bias)


def _global_restated(m: UniFormerGlobalMHRA, tokens: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    b, n, c = tokens.shape
    q, k, v = F.linear(tokens, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * scale).softmax(-1)
    return F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), m.proj.weight, m.proj.bias)


@settings(max_examples=max(1, EXAMPLES // 5))
@given(c=st.integers(1, 6), b=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), seed=seeds)
def test_uniformer_local_and_dpe(c, b, h, w, seed):
    x = torch.randn(b, c, h, w, dtype=F64)
    local = _randomized(functools.partial(UniFormerLocalMHRA, c), seed)
    dpe = _randomized(functools.partial(DynamicPositionEmbedding, c), seed)
    for which in ("fast", "reference"):
        _set_paths(local, which)
        _set_paths(dpe, which)
        with torch.no_grad():
            assert_close(local(x), _local_restated(local, x), f"local MHRA, {which}")
            assert_close(dpe(x), x + F.conv2d(x, dpe.weight, dpe.bias, padding=1, groups=c), f"DPE, {which}")
    _assert_paths_agree(local, x)
    _assert_paths_agree(dpe, x)


@settings(max_examples=max(1, EXAMPLES // 5))
@given(
    shape=st.sampled_from([(8, 4), (8, 8), (12, 4), (6, 2), (9, 3)]),
    bias=st.booleans(),
    scale=st.sampled_from([None, 0.3]),
    b=st.integers(1, 2),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=seeds,
)
def test_uniformer_global(shape, bias, scale, b, h, w, seed):
    dim, head_dim = shape
    m = _randomized(functools.partial(UniFormerGlobalMHRA, dim, head_dim, bias, scale), seed)
    x = torch.randn(b, dim, h, w, dtype=F64)
    heads = dim // head_dim
    tokens = x.flatten(2).transpose(1, 2)  # the official (B, N, C)
    for which in ("fast", "reference"):
        _set_paths(m, which)
        with torch.no_grad():
            expected = _global_restated(m, tokens, heads, scale or (dim // heads) ** -0.5)
            assert_close(m(x).flatten(2).transpose(1, 2), expected, f"map input, {which}")
            m.channels_last = True
            assert_close(m(tokens.unsqueeze(2)).squeeze(2), expected, f"token input, {which}")
            m.channels_last = False
    _assert_paths_agree(m, x)


# --- MixFormer: a re-statement on windows, scaling v literally ----------------------------------------


def _windows(t: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws*ws, C), windows in row-major order per sample."""
    b, h, w, c = t.shape
    return t.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def _unwindows(t: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    return t.reshape(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def _mixing_restated(m: MixingAttention, x: torch.Tensor, heads: int, ws: int, scale: float) -> torch.Tensor:
    """The official forward, from the MixFormer layer order, on a (B, H, W, C) map."""
    b, h, w, c = x.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    half = c // 2
    a = F.layer_norm(F.linear(x, m.proj_attn.weight, m.proj_attn.bias), (half,), m.proj_attn_norm.weight,
                     m.proj_attn_norm.bias)  # fmt: skip
    cnn = F.layer_norm(F.linear(x, m.proj_cnn.weight, m.proj_cnn.bias), (c,), m.proj_cnn_norm.weight,
                       m.proj_cnn_norm.bias).permute(0, 3, 1, 2)  # fmt: skip
    dw = m.dwconv3x3[0]
    cnn = F.conv2d(cnn, dw.weight, dw.bias, padding=dw.weight.shape[-1] // 2, groups=c)
    cnn = m.dwconv3x3[2](m.dwconv3x3[1](cnn))
    gate = torch.sigmoid(m.channel_interaction(F.adaptive_avg_pool2d(cnn, 1)))  # (B, C/2, 1, 1)
    cnn = F.conv2d(cnn, m.projection.weight, m.projection.bias)
    # window attention with v scaled per sample and channel (broadcast over that sample's windows)
    n_win = (hp // ws) * (wp // ws)
    qkv = F.linear(_windows(a, ws), m.qkv.weight, m.qkv.bias)
    q, k, v = qkv.reshape(b * n_win, ws * ws, 3, heads, half // heads).permute(2, 0, 3, 1, 4)
    v = (v.reshape(b, n_win, heads, ws * ws, -1) * gate.reshape(b, 1, heads, 1, -1)).flatten(0, 1)
    yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    dy = yy.reshape(-1, 1) - yy.reshape(1, -1) + ws - 1
    dx = xx.reshape(-1, 1) - xx.reshape(1, -1) + ws - 1
    bias = m.relative_position_bias_table[dy * (2 * ws - 1) + dx].permute(2, 0, 1)
    attn = ((q * scale) @ k.transpose(-2, -1) + bias).softmax(-1)
    out = _unwindows((attn @ v).transpose(1, 2).reshape(b * n_win, ws * ws, half), ws, b, hp, wp)
    spatial = torch.sigmoid(m.spatial_interaction(out.permute(0, 3, 1, 2)))
    cnn = m.conv_norm(spatial * cnn).permute(0, 2, 3, 1)
    out = F.layer_norm(out, (half,), m.attn_norm.weight, m.attn_norm.bias)
    y = F.linear(torch.cat([out, cnn], -1), m.proj.weight, m.proj.bias)
    return y[:, :h, :w]


@st.composite
def _mixing_config(draw):
    heads = draw(st.integers(1, 3))
    dim = 2 * heads * draw(st.integers(max(1, -(-8 // heads)), 8 // heads + 2))  # >= 16
    return dim, heads, draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 5]))


@settings(max_examples=max(1, EXAMPLES // 4))
@given(
    cfg=_mixing_config(),
    bias=st.booleans(),
    scale=st.sampled_from([None, 0.4]),
    b=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    train=st.booleans(),
    last=st.booleans(),
    seed=seeds,
)
def test_mixing_attention(cfg, bias, scale, b, h, w, train, last, seed):
    dim, heads, ws, k = cfg
    m = _randomized(functools.partial(MixingAttention, dim, heads, ws, k, bias, scale, channels_last=last), seed)
    if train and b > 1:  # BatchNorm on batch statistics (the pooled branch has one value per sample)
        m.train()
    x = torch.randn(b, h, w, dim, dtype=F64)
    xin = x if last else x.permute(0, 3, 1, 2)
    for which in ("fast", "reference"):
        _set_paths(m, which)
        with torch.no_grad():
            y = m(xin)
            expected = _mixing_restated(m, x, heads, ws, scale or (dim // 2 // heads) ** -0.5)
        assert_close(y if last else y.permute(0, 2, 3, 1), expected, f"official layer order, {which}")
    _assert_paths_agree(m, xin)


def test_restatement_detects_a_perturbed_weight():
    m = _randomized(functools.partial(MixingAttention, 32, 2, 3), 0)
    x = torch.randn(2, 6, 6, 32, dtype=F64)
    with torch.no_grad():
        m.relative_position_bias_table[4, 1] += 1e-3
        y = m(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        m.relative_position_bias_table[4, 1] -= 1e-3
        assert not torch.allclose(y, _mixing_restated(m, x, 2, 3, 8**-0.5))


# --- the Paddle converter ---------------------------------------------------------------------------------


def test_convert_paddle_state_dict_round_trip():
    m = _randomized(functools.partial(MixingAttention, 32, 2, 7), 1)
    paddle = {}
    for name, t in m.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # Paddle's BatchNorm has no counter
        a = t.numpy()
        if name.endswith("weight") and a.ndim == 2:
            a = a.T.copy()  # Paddle's Linear weight is (in, out)
        name = name.replace("running_mean", "_mean").replace("running_var", "_variance")
        paddle[name] = a
    paddle["relative_position_index"] = np.zeros((49, 49), dtype=np.int64)
    fresh = MixingAttention(32, 2, 7).double().eval()
    fresh.load_state_dict(convert_paddle_state_dict(paddle), strict=True)
    x = torch.randn(1, 32, 7, 14, dtype=F64)
    with torch.no_grad():
        assert_close(fresh(x), m(x))
    assert convert_paddle_state_dict({"relative_position_bias_table": np.zeros((169, 2))})[
        "relative_position_bias_table"
    ].shape == (169, 2)


# --- gradcheck ----------------------------------------------------------------------------------------------

GRADCHECK = {
    "UniFormerLocalMHRA": (functools.partial(UniFormerLocalMHRA, 3), 3),
    "DynamicPositionEmbedding": (functools.partial(DynamicPositionEmbedding, 3), 3),
    "UniFormerGlobalMHRA": (functools.partial(UniFormerGlobalMHRA, 4, 2), 4),
    "MixingAttention": (functools.partial(MixingAttention, 16, 2, 2), 16),
}


@pytest.mark.parametrize("which", ["fast", "reference"])
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck(name, which):
    make, c = GRADCHECK[name]
    m = _randomized(make, sum(map(ord, name)))
    _set_paths(m, which)
    x = torch.randn(1, c, 3, 4, dtype=F64, requires_grad=True)  # 3 x 4: MixingAttention pads to 4 x 4
    assert gradcheck(m, (x,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=c > 4)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

    def f(x, *ps):
        return functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
