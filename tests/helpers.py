"""Shared helpers and hypothesis strategies for the unifiedops test suite."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from unifiedops import (
    Aggregation,
    DenseKernel,
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

F64 = torch.float64
RTOL = 1e-6
ATOL = 1e-9

FAST_PATHS = ("conv", "batched_conv", "shifted_sum", "window_sdpa", "halo_sdpa", "global_sdpa")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """``torch.testing.assert_close`` at the suite's float64 tolerances."""
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=(lambda m: f"{msg}: {m}") if msg else None)


@torch.no_grad()
def randomize_(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Overwrite every parameter with ``N(0, scale^2)`` noise and BN running stats with non-trivial values.

    Default initialisations hide bugs (a zero ``bias``, a near-zero ``relative_position_bias_table``
    or identity BatchNorm statistics make a dropped or misindexed term invisible), so every
    comparison runs on randomised modules.
    """
    for p in module.parameters():
        p.copy_(torch.randn_like(p) * scale)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn_like(b) * 0.3)
        elif name.endswith("running_var"):
            b.copy_(torch.rand_like(b) + 0.5)
    return module


def batch_norm_eval(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm`` in eval mode, written functionally (for re-statements of a block's layer order)."""
    return torch.nn.functional.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
    )


def assert_grad_checkpointing_is_exact(model: nn.Module, x: torch.Tensor) -> None:
    """Gradients with ``model.set_grad_checkpointing()`` equal those without (same random stream)."""
    torch.manual_seed(1)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    torch.manual_seed(1)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def run_path(module: nn.Module, x: torch.Tensor, path: str, grad_out: torch.Tensor):
    """Output, input gradient and parameter gradients of ``module`` on ``path`` for the cotangent ``grad_out``."""
    module.path = path
    assert module.path == path
    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(True)
    y = module(xx)
    assert y.shape == grad_out.shape, (y.shape, grad_out.shape)
    y.backward(grad_out)
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return y.detach(), xx.grad.detach(), grads


def assert_path_matches_reference(module: nn.Module, x: torch.Tensor, path: str) -> None:
    """The fast ``path`` and the reference path agree on output, input gradient and every parameter gradient."""
    assert path in module.paths, (path, module.paths)
    module.path = "reference"
    with torch.no_grad():
        grad_out = torch.randn_like(module(x))
    y_ref, gx_ref, gp_ref = run_path(module, x, "reference", grad_out)
    y, gx, gp = run_path(module, x, path, grad_out)
    assert torch.isfinite(y_ref).all() and torch.isfinite(gx_ref).all()
    assert_close(y, y_ref, f"output of {path}")
    assert_close(gx, gx_ref, f"input gradient of {path}")
    assert gp_ref, "the reference path produced no parameter gradients"
    assert set(gp) == set(gp_ref), (sorted(gp), sorted(gp_ref))
    for name in gp_ref:
        assert_close(gp[name], gp_ref[name], f"gradient of {name} on {path}")


# --- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """A module constructor plus an input geometry; ``repr`` shows everything hypothesis drew."""

    make: Callable[[], nn.Module]
    batch: int
    height: int
    width: int
    channels: int
    channels_last: bool = False
    halo_tile: int | None = None
    nhwc_memory: bool = False  # feed a channels_last-*memory-format* NCHW tensor

    def build(self, seed: int) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(seed)
        module = self.make()
        module = randomize_(module.double()).eval()
        if self.halo_tile is not None:
            module.set_halo_tile(self.halo_tile)
        if self.channels_last:
            shape = (self.batch, self.height, self.width, self.channels)
        else:
            shape = (self.batch, self.channels, self.height, self.width)
        x = torch.randn(shape, dtype=F64)
        if self.nhwc_memory and not self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module, x


seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(1, 13)
batches = st.integers(1, 3)
odd_kernels = st.sampled_from([1, 3, 5, 7])
dilations = st.integers(1, 3)


def _divisors(n: int, limit: int) -> list[int]:
    return [r for r in range(1, min(n, limit) + 1) if n % r == 0]


@st.composite
def _channels(draw, max_groups: int = 4, max_width: int = 3) -> tuple[int, int]:
    """``(C, G)``: ``G`` groups (heads) of ``C // G`` channels."""
    groups = draw(st.integers(1, max_groups))
    return groups * draw(st.integers(1, max_width)), groups


@st.composite
def _conv_neighbourhood(draw):
    if draw(st.integers(0, 4)) == 0:
        return Point()
    return Sliding(
        draw(odd_kernels),
        draw(dilations),
        draw(st.sampled_from(["zeros", "reflect", "mask"])),
        stride=draw(st.sampled_from([1, 1, 2, 3])),
    )


@st.composite
def _geometry(draw, nb=None) -> dict:
    """Batch and image size; long enough for a reflecting neighbourhood ``nb`` to fit."""
    low = 1
    if isinstance(nb, Sliding) and nb.border == "reflect":
        low = nb.dilation * (nb.kernel_size // 2) + 1
    return dict(
        batch=draw(batches),
        height=draw(st.integers(low, max(low, 13))),
        width=draw(st.integers(low, max(low, 13))),
        nhwc_memory=draw(st.booleans()),
    )


@st.composite
def conv_cases(draw) -> Case:
    """StaticKernel cases: DWConv and generic static kernels, also grouped (``G < C``) and on Point."""
    c, g = draw(_channels())
    bias = draw(st.booleans())
    if draw(st.booleans()):
        make = functools.partial(DWConv, c, draw(odd_kernels), draw(dilations), bias)
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    nb = draw(_conv_neighbourhood())
    if draw(st.booleans()):
        source = StaticKernel(c, groups=draw(st.sampled_from([None, g])), bias=bias)
    else:
        # channel-mixing kernels: dense, grouped, and with a different number of outputs
        source = DenseKernel(c, g * draw(st.integers(1, 3)), groups=draw(st.sampled_from(_divisors(g, 4))), bias=bias)
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


@st.composite
def batched_conv_cases(draw) -> Case:
    """SampleKernel cases: DynamicDWConv and generic per-sample kernels (grouped, Point)."""
    c, g = draw(_channels())
    reduction = draw(st.sampled_from(_divisors(c, 4)))
    bias = draw(st.booleans())
    if draw(st.booleans()):
        make = functools.partial(DynamicDWConv, c, draw(odd_kernels), reduction, bias)
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    groups = draw(st.sampled_from([None, g]))
    source = SampleKernel(c, groups=groups, reduction=reduction, bias=bias)
    nb = draw(_conv_neighbourhood())
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


@st.composite
def shifted_sum_cases(draw) -> Case:
    """PositionKernel cases: InhomogeneousDWConv and generic per-position kernels (dilated, masked, Point)."""
    c, g = draw(_channels())
    reduction = draw(st.sampled_from(_divisors(c, 4)))
    if draw(st.booleans()):
        make = functools.partial(InhomogeneousDWConv, c, draw(odd_kernels), groups=g, reduction=reduction)
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    source = PositionKernel(c, groups=g, reduction=reduction)
    nb = draw(_conv_neighbourhood())
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


@st.composite
def _qk_source(draw, c: int, heads: int, rel_pos_bias: bool | None = None, coord_pos_embed: bool = False):
    """Attention sources over every option: bias table, ACmix's coordinate embedding, a different
    value width, both projection layouts, with and without the output projection."""
    return QKAttention(
        c,
        heads=heads,
        qkv_bias=draw(st.booleans()),
        rel_pos_bias=draw(st.booleans()) if rel_pos_bias is None else rel_pos_bias,
        scale=draw(st.sampled_from([None, 0.37])),
        value_channels=draw(st.sampled_from([None, heads * draw(st.integers(1, 3))])),
        projection=draw(st.sampled_from(["linear", "conv"])),
        out_proj=draw(st.booleans()),
        coord_pos_embed=coord_pos_embed and draw(st.booleans()),
    )


@st.composite
def window_cases(draw) -> Case:
    """Window attention: WindowAttention and generic Window (zeros and mask borders, any shift)."""
    c, heads = draw(_channels())
    size = draw(st.integers(1, 5))
    shift = draw(st.integers(0, size - 1))
    last = draw(st.booleans())
    geo = draw(_geometry())
    if draw(st.booleans()):
        make = functools.partial(WindowAttention, c, heads, size, shift, draw(st.booleans()), channels_last=last)
    else:
        nb = Window(size, shift=shift, border=draw(st.sampled_from(["zeros", "mask"])))
        make = functools.partial(Aggregation, nb, draw(_qk_source(c, heads)), channels_last=last)
    return Case(make, channels=c, channels_last=last, **geo)


@st.composite
def halo_cases(draw) -> Case:
    """Sliding attention: NeighborhoodAttention and generic Sliding (every border, dilation, tile)."""
    c, heads = draw(_channels())
    k = draw(odd_kernels)
    d = draw(dilations)
    border = draw(st.sampled_from(["zeros", "reflect", "clamp", "mask"]))
    last = draw(st.booleans())
    tile = draw(st.sampled_from([None, 1, 2, 3, 4]))
    if draw(st.booleans()):
        nb = Sliding(k, d, "clamp" if border == "reflect" else border)
        flags = draw(st.booleans()), draw(st.booleans())
        make = functools.partial(NeighborhoodAttention, c, heads, k, d, nb.border, *flags, channels_last=last)
    else:
        # the halo path takes a stride or a dilation, not both
        stride = 1 if d > 1 else draw(st.sampled_from([1, 2, 3]))
        nb = Sliding(k, d, border, stride)
        make = functools.partial(Aggregation, nb, draw(_qk_source(c, heads, coord_pos_embed=True)), channels_last=last)
    return Case(make, channels=c, channels_last=last, halo_tile=tile, **draw(_geometry(nb)))


@st.composite
def global_cases(draw) -> Case:
    """Global attention: GlobalAttention and generic Global + QKAttention (custom scale)."""
    c, heads = draw(_channels())
    last = draw(st.booleans())
    geo = draw(_geometry())
    if draw(st.booleans()):
        make = functools.partial(GlobalAttention, c, heads, draw(st.booleans()), channels_last=last)
    else:
        make = functools.partial(
            Aggregation, Global(), draw(_qk_source(c, heads, rel_pos_bias=False)), channels_last=last
        )
    return Case(make, channels=c, channels_last=last, **geo)


CASES = {
    "conv": conv_cases,
    "batched_conv": batched_conv_cases,
    "shifted_sum": shifted_sum_cases,
    "window_sdpa": window_cases,
    "halo_sdpa": halo_cases,
    "global_sdpa": global_cases,
}
