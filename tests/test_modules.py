"""Module-level contracts: the channels_last layout flag, state_dict names, parameter counts,
inference mode, dtype handling."""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import F64, assert_close, randomize_
from unifiedops import (
    Aggregation,
    DWConv,
    DynamicDWConv,
    Global,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    Point,
    PositionKernel,
    QKAttention,
    SampleKernel,
    Sliding,
    StaticKernel,
    Window,
    WindowAttention,
)

BN = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


# --- channels_last ------------------------------------------------------------------------------

LAYOUT_CASES = {
    "WindowAttention": lambda last: WindowAttention(6, 3, 3, 1, channels_last=last),
    "NeighborhoodAttention": lambda last: NeighborhoodAttention(6, 2, 3, 2, channels_last=last),
    "NeighborhoodAttention-zeros": lambda last: NeighborhoodAttention(6, 2, 5, border="zeros", channels_last=last),
    "GlobalAttention": lambda last: GlobalAttention(6, 2, channels_last=last),
    "StaticKernel": lambda last: Aggregation(Sliding(3, 2), StaticKernel(6, groups=3), channels_last=last),
    "SampleKernel": lambda last: Aggregation(Sliding(5), SampleKernel(6, reduction=2), channels_last=last),
    "PositionKernel": lambda last: Aggregation(
        Sliding(3, border="mask"), PositionKernel(6, groups=2, reduction=2), channels_last=last
    ),
    "Window-mask": lambda last: Aggregation(
        Window(4, 3, "mask"), QKAttention(6, heads=3, rel_pos_bias=True), channels_last=last
    ),
    "Point": lambda last: Aggregation(Point(), SampleKernel(6, groups=2, reduction=3), channels_last=last),
}


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("name", list(LAYOUT_CASES))
def test_channels_last_is_the_permuted_channels_first_result(name, path):
    torch.manual_seed(len(name))
    first = randomize_(LAYOUT_CASES[name](False).double()).eval()
    last = LAYOUT_CASES[name](True).double().eval()
    last.load_state_dict(first.state_dict(), strict=True)
    first.path = last.path = path
    x = torch.randn(2, 6, 7, 5, dtype=F64, requires_grad=True)
    x_last = x.detach().permute(0, 2, 3, 1).contiguous().requires_grad_(True)
    y, y_last = first(x), last(x_last)
    assert y_last.shape == (2, 7, 5, 6)
    assert_close(y_last, y.permute(0, 2, 3, 1))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_last,) = torch.autograd.grad(y_last, x_last, g.permute(0, 2, 3, 1))
    assert_close(gx_last, gx.permute(0, 2, 3, 1))


def test_channels_last_default_is_channels_first():
    for module in (DWConv(4, 3), WindowAttention(4, 2, 3), NeighborhoodAttention(4, 2, 3), GlobalAttention(4, 2)):
        assert module.channels_last is False
        assert module(torch.randn(1, 4, 5, 6)).shape == (1, 4, 5, 6)


# --- state_dict names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module,keys",
    [
        (DWConv(8, 3), {"weight", "bias"}),
        (DWConv(8, 3, bias=False), {"weight"}),
        (
            DynamicDWConv(8, 3),
            {"conv1.weight", "conv2.weight", "conv2.bias", "bias"} | {f"bn.{n}" for n in BN},
        ),
        (DynamicDWConv(8, 3, bias=False), {"conv1.weight", "conv2.weight", "conv2.bias"} | {f"bn.{n}" for n in BN}),
        (
            InhomogeneousDWConv(8, 3, groups=2),
            {"conv1.0.weight", "conv1.0.bias", "conv2.0.weight", "conv2.0.bias"} | {f"conv1.1.{n}" for n in BN},
        ),
        (
            WindowAttention(8, 2, 3, 1),
            {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"},
        ),
        (
            WindowAttention(8, 2, 3, qkv_bias=False),
            {"qkv.weight", "proj.weight", "proj.bias", "relative_position_bias_table"},
        ),
        (
            NeighborhoodAttention(8, 2, 3),
            {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"},
        ),
        (NeighborhoodAttention(8, 2, 3, rel_pos_bias=False), {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}),
        (GlobalAttention(8, 2), {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}),
    ],
)
def test_state_dict_keys(module, keys):
    assert set(module.state_dict()) == keys


def test_state_dict_shapes():
    c, k, g, w, h = 8, 5, 2, 3, 4
    assert {n: tuple(t.shape) for n, t in DWConv(c, k).state_dict().items()} == {"weight": (c, 1, k, k), "bias": (c,)}
    sd = DynamicDWConv(c, k).state_dict()
    assert sd["conv1.weight"].shape == (c // 4, c, 1, 1)
    assert sd["conv2.weight"].shape == (c * k * k, c // 4, 1, 1)
    assert sd["bias"].shape == (c,) and not sd["bias"].any()  # DWNet starts the bias at zero
    sd = InhomogeneousDWConv(c, k, groups=g).state_dict()
    assert sd["conv1.0.weight"].shape == (c // 4, c, 1, 1)
    assert sd["conv2.0.weight"].shape == (k * k * g, c // 4, 1, 1)
    sd = WindowAttention(c, h, w).state_dict()
    assert sd["qkv.weight"].shape == (3 * c, c)
    assert sd["relative_position_bias_table"].shape == ((2 * w - 1) ** 2, h)
    sd = NeighborhoodAttention(c, h, k).state_dict()
    assert sd["relative_position_bias_table"].shape == ((2 * k - 1) ** 2, h)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("c,k", [(8, 3), (16, 7), (4, 5)])
def test_parameter_counts(c, k):
    assert _count(DWConv(c, k)) == c * k * k + c
    assert _count(DWConv(c, k, bias=False)) == c * k * k
    r = c // 4
    assert _count(DynamicDWConv(c, k)) == c * r + 2 * r + r * c * k * k + c * k * k + c
    for g in (1, 2, 4):
        assert _count(InhomogeneousDWConv(c, k, groups=g)) == (c * r + r) + 2 * r + (r * k * k * g + k * k * g)
    for heads in (1, 2, 4):
        qkv_proj = (3 * c * c + 3 * c) + (c * c + c)
        assert _count(WindowAttention(c, heads, k)) == qkv_proj + (2 * k - 1) ** 2 * heads
        assert _count(WindowAttention(c, heads, k, qkv_bias=False)) == qkv_proj - 3 * c + (2 * k - 1) ** 2 * heads
        assert _count(NeighborhoodAttention(c, heads, k)) == qkv_proj + (2 * k - 1) ** 2 * heads
        assert _count(NeighborhoodAttention(c, heads, k, rel_pos_bias=False)) == qkv_proj
        assert _count(GlobalAttention(c, heads)) == qkv_proj


def test_dwconv_initialisation_matches_conv2d_bounds():
    torch.manual_seed(0)
    c, k = 16, 5
    dw = DWConv(c, k)
    bound = 1 / k  # kaiming_uniform(a=sqrt(5)) and the bias both give 1/sqrt(fan_in), fan_in = k*k
    assert dw.weight.abs().max() <= bound and dw.weight.abs().max() > 0.5 * bound
    assert dw.bias.abs().max() <= bound and dw.bias.abs().max() > 0.1 * bound


# --- inference mode, dtypes, memory formats ------------------------------------------------------

ALL_PRESETS = {
    "DWConv": functools.partial(DWConv, 4, 3),
    "DynamicDWConv": functools.partial(DynamicDWConv, 4, 3),
    "InhomogeneousDWConv": functools.partial(InhomogeneousDWConv, 4, 3, groups=2),
    "WindowAttention": functools.partial(WindowAttention, 4, 2, 3, 1),
    "NeighborhoodAttention": functools.partial(NeighborhoodAttention, 4, 2, 3),
    "GlobalAttention": functools.partial(GlobalAttention, 4, 2),
}


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("name", list(ALL_PRESETS))
def test_inference_mode_then_autograd(name, path):
    """Geometry tables are cached per input size; one first built under inference mode must still
    work with autograd afterwards (an inference tensor cannot be saved for backward)."""
    module = ALL_PRESETS[name]().double().eval()
    module.path = path
    # A size no other test uses, so the tables for it are first built under inference mode.
    x = torch.randn(2, 4, 17, 19, dtype=F64)
    with torch.inference_mode():
        y_inf = module(x)
    xx = x.clone().requires_grad_(True)
    y = module(xx)
    y.sum().backward()
    assert xx.grad is not None and torch.isfinite(xx.grad).all()
    assert_close(y.detach(), y_inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(ALL_PRESETS))
def test_output_dtype_follows_module(name, dtype):
    module = ALL_PRESETS[name]().to(dtype).eval()
    for path in module.paths:
        module.path = path
        y = module(torch.randn(1, 4, 5, 6, dtype=dtype))
        assert y.dtype == dtype and y.shape == (1, 4, 5, 6)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(ALL_PRESETS))
def test_float32_fast_path_close_to_reference(name):
    torch.manual_seed(3)
    module = randomize_(ALL_PRESETS[name]()).eval()
    x = torch.randn(2, 4, 8, 7)
    y = module(x)
    module.path = "reference"
    torch.testing.assert_close(y, module(x), rtol=1e-4, atol=1e-5)


def test_extra_repr_names_configuration():
    text = repr(NeighborhoodAttention(8, 2, 3, 2))
    assert "Sliding" in text and "halo_sdpa" in text and "QKAttention" in text
    assert "path='window_sdpa'" in repr(WindowAttention(8, 2, 3))


# --- which paths apply ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nb,source,expected",
    [
        (Sliding(3), StaticKernel(4), ["conv", "reference"]),
        (Sliding(3, 2, "mask"), StaticKernel(4), ["conv", "reference"]),
        (Sliding(3, border="clamp"), StaticKernel(4), ["reference"]),
        (Point(), StaticKernel(4, groups=2), ["conv", "reference"]),
        (Window(3), StaticKernel(4), ["reference"]),
        (Sliding(3), SampleKernel(4), ["batched_conv", "reference"]),
        (Sliding(3, border="clamp"), SampleKernel(4), ["reference"]),
        (Point(), SampleKernel(4), ["batched_conv", "reference"]),
        (Sliding(3, border="mask"), PositionKernel(4), ["shifted_sum", "reference"]),
        (Sliding(3, border="clamp"), PositionKernel(4), ["reference"]),
        (Point(), PositionKernel(4), ["shifted_sum", "reference"]),
        (Window(3, 1, "mask"), QKAttention(4), ["window_sdpa", "reference"]),
        (Sliding(3, 2, "zeros"), QKAttention(4), ["halo_sdpa", "reference"]),
        (Sliding(3, border="clamp"), QKAttention(4), ["halo_sdpa", "reference"]),
        (Global(), QKAttention(4), ["global_sdpa", "reference"]),
        (Point(), QKAttention(4), ["reference"]),
    ],
)
def test_applicable_paths(nb, source, expected):
    module = Aggregation(nb, source)
    assert module.paths == expected
    assert module.path == expected[0]
    for other in {"conv", "batched_conv", "shifted_sum", "window_sdpa", "halo_sdpa", "global_sdpa"} - set(expected):
        with pytest.raises(ValueError, match="path"):
            module.path = other


@pytest.mark.parametrize(
    "nb,source",
    [
        (Sliding(3, border="clamp"), StaticKernel(4, groups=2)),
        (Sliding(5, 2, border="clamp"), SampleKernel(4, reduction=2)),
        (Window(3, 1), PositionKernel(4, groups=2, reduction=2)),
    ],
)
def test_reference_only_configurations_run(nb, source):
    module = randomize_(Aggregation(nb, source).double()).eval()
    x = torch.randn(2, 4, 6, 7, dtype=F64, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


def test_point_attention_is_the_projected_value():
    """Each position attends only to itself: the softmax over one key is 1, so y = proj(v(x))."""
    torch.manual_seed(0)
    c = 6
    module = randomize_(Aggregation(Point(), QKAttention(c, heads=3)).double())
    x = torch.randn(2, c, 4, 5, dtype=F64)
    v = torch.nn.functional.linear(x.permute(0, 2, 3, 1), module.qkv.weight[2 * c :], module.qkv.bias[2 * c :])
    expected = module.proj(v).permute(0, 3, 1, 2)
    assert_close(module(x), expected)


def test_static_kernel_on_a_point_is_a_channel_scale():
    torch.manual_seed(0)
    module = randomize_(Aggregation(Point(), StaticKernel(6, groups=3)).double())
    x = torch.randn(2, 6, 4, 5, dtype=F64)
    scale = module.weight.reshape(3).repeat_interleave(2)
    for path in module.paths:
        module.path = path
        assert_close(module(x), x * scale.view(1, 6, 1, 1) + module.bias.view(1, 6, 1, 1))
