"""``torch.autograd.gradcheck`` on every preset (and a few generic configurations), on the fast path
and on the reference path, over the input and over the parameters, in float64."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, randomize_
from unifiedops import (
    Aggregation,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    Point,
    PositionKernel,
    QKAttention,
    SampleKernel,
    Sliding,
    Window,
    WindowAttention,
)

MODULES = {
    "DWConv": functools.partial(DWConv, 4, 3),
    "DWConv-dilated": functools.partial(DWConv, 4, 3, 2),
    "DynamicDWConv": functools.partial(DynamicDWConv, 4, 3),
    "InhomogeneousDWConv": functools.partial(InhomogeneousDWConv, 4, 3, groups=2),
    "WindowAttention": functools.partial(WindowAttention, 4, 2, 3),
    "WindowAttention-shifted": functools.partial(WindowAttention, 4, 2, 3, 1),
    "NeighborhoodAttention": functools.partial(NeighborhoodAttention, 4, 2, 3),
    "NeighborhoodAttention-dilated": functools.partial(NeighborhoodAttention, 4, 2, 3, 2),
    "NeighborhoodAttention-zeros": functools.partial(NeighborhoodAttention, 4, 2, 3, border="zeros"),
    "GlobalAttention": functools.partial(GlobalAttention, 4, 2),
    "Window-mask": functools.partial(
        Aggregation, Window(3, 2, border="mask"), QKAttention(4, heads=2, rel_pos_bias=True)
    ),
    "Sliding-mask-attention": functools.partial(Aggregation, Sliding(3, 1, "mask"), QKAttention(4, heads=1)),
    "SampleKernel-Point": functools.partial(Aggregation, Point(), SampleKernel(4, groups=2, reduction=2)),
    "PositionKernel-dilated": functools.partial(Aggregation, Sliding(3, 2, "mask"), PositionKernel(4, groups=2)),
}


def _module(name: str, path: str):
    torch.manual_seed(sum(map(ord, name)))
    module = randomize_(MODULES[name]().double()).eval()
    if path == "fast":
        assert module.path != "reference"
    module.path = "auto" if path == "fast" else "reference"
    if name.startswith("NeighborhoodAttention"):
        module.set_halo_tile(2)  # several, partial tiles on a 4 x 5 input
    return module


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gradcheck_input(name, path):
    module = _module(name, path)
    x = torch.randn(2, 4, 4, 5, dtype=F64, requires_grad=True)
    assert gradcheck(module, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gradcheck_parameters(name, path):
    module = _module(name, path)
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    x = torch.randn(2, 4, 3, 4, dtype=F64, requires_grad=True)

    def f(x, *ps):
        return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    # fast_mode: gradcheck compares random projections of the Jacobians (vJu), which checks every
    # parameter's gradient at a fraction of the cost of building the full parameter Jacobian.
    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gradcheck_detects_a_wrong_gradient():
    """Sanity: a function whose backward is off makes gradcheck fail."""

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2.001

    x = torch.randn(3, dtype=F64, requires_grad=True)
    for fast_mode in (False, True):
        assert not gradcheck(
            Scaled.apply, (x,), eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False, fast_mode=fast_mode
        )
