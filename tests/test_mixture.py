"""CondConv and DY-Conv: parameter counts, equality with a per-sample re-statement written from the
papers, fast path against reference path, gradients, and DY-Conv's temperature."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, assert_close, assert_path_matches_reference, randomize_, seeds
from unifiedops import Aggregation, Sliding
from unifiedops.mixture import CondConv, DYConv, MixtureAttention, MixtureKernel, dyconv_schedule
from unifiedops.warehouse import set_temperature

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def restated(module, x):
    """The mixture written out from the papers: routing from the pooled input, then every sample
    convolved with ``sum_e a_e W_e`` plus ``sum_e a_e b_e``."""
    pooled = x.mean((2, 3))
    if isinstance(module, CondConv):
        a = torch.sigmoid(pooled @ module.routing_fn.weight.T + module.routing_fn.bias)
    else:
        att = module.attention
        hidden = torch.relu(pooled @ att.fc1.weight.T + att.fc1.bias)
        a = torch.softmax((hidden @ att.fc2.weight.T + att.fc2.bias) / att.temperature, -1)
    nb, source = module.neighbourhood, module.source
    out = []
    for i in range(x.shape[0]):
        w = (a[i, :, None, None, None, None] * module.weight).sum(0)
        b = None if module.bias is None else (a[i, :, None] * module.bias).sum(0)
        pad = nb.dilation * (nb.kernel_size // 2)
        out.append(F.conv2d(x[i : i + 1], w, b, nb.stride, pad, nb.dilation, source.groups))
    return torch.cat(out)


@st.composite
def mixture_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kw = dict(
        kernel_size=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.integers(1, 2)),
        dilation=draw(st.integers(1, 2)),
        groups=groups,
        bias=draw(st.booleans()),
    )
    if draw(st.booleans()):
        make = functools.partial(CondConv, cin, cout, num_experts=draw(st.integers(1, 5)), **kw)
    else:
        t = draw(st.sampled_from([1.0, 2.5, 30.0]))
        make = functools.partial(DYConv, cin, cout, num_kernels=draw(st.integers(1, 5)), temperature=t, **kw)
    shape = (draw(st.integers(1, 3)), cin, draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    return make, shape


def _build(make, seed):
    torch.manual_seed(seed)
    return randomize_(make().double()).eval()


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=mixture_cases(), seed=seeds)
def test_fast_path_matches_reference(case, seed):
    make, shape = case
    module = _build(make, seed)
    assert module.path == "batched_conv" and module.paths == ["batched_conv", "reference"]
    assert_path_matches_reference(module, torch.randn(shape, dtype=F64), "batched_conv")


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=mixture_cases(), seed=seeds)
def test_matches_restatement(case, seed):
    make, shape = case
    module = _build(make, seed)
    x = torch.randn(shape, dtype=F64)
    for path in module.paths:
        module.path = path
        assert_close(module(x), restated(module, x), path)


def test_restatement_can_fail():
    module = _build(functools.partial(DYConv, 4, 4, 3, temperature=2.0), 0)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    y = module(x)
    with torch.no_grad():
        module.attention.fc2.bias[0] += 1
    assert not torch.allclose(y, restated(module, x))


def test_parameter_counts():
    c, o, k, n, g = 32, 64, 3, 8, 2
    cond = CondConv(c, o, k, n, groups=g)
    assert sum(p.numel() for p in cond.parameters()) == n * (o * c // g * k * k + o) + (c * n + n)
    assert dict((name, tuple(p.shape)) for name, p in cond.named_parameters()) == {
        "weight": (n, o, c // g, k, k),
        "bias": (n, o),
        "routing_fn.weight": (n, c),
        "routing_fn.bias": (n,),
    }
    n, h = 4, c // 4
    dy = DYConv(c, o, k, n, bias=False)
    assert sum(p.numel() for p in dy.parameters()) == n * o * c * k * k + (c * h + h) + (h * n + n)
    assert sorted(name for name, _ in dy.named_parameters()) == [
        "attention.fc1.bias",
        "attention.fc1.weight",
        "attention.fc2.bias",
        "attention.fc2.weight",
        "weight",
    ]
    assert DYConv(3, 8).attention.fc1.out_features == 1  # max(C // reduction, 1)


MODULES = {
    "CondConv": functools.partial(CondConv, 4, 6, 3, 3, groups=2),
    "CondConv-strided": functools.partial(CondConv, 4, 4, 3, 2, stride=2, dilation=2),
    "DYConv": functools.partial(DYConv, 4, 6, 3, 3, groups=2, temperature=2.0),
    "DYConv-1x1": functools.partial(DYConv, 4, 4, 1, 4, stride=2, bias=False, reduction=2),
}


@pytest.mark.parametrize("path", ["batched_conv", "reference"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gradcheck(name, path):
    module = _build(MODULES[name], 7)
    module.path = path
    x = torch.randn(2, 4, 3, 4, dtype=F64, requires_grad=True)
    assert gradcheck(module, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def f(x, *ps):
        return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_dyconv_temperature():
    module = _build(functools.partial(DYConv, 4, 4, 3, num_kernels=3, temperature=30.0), 1)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    s = dyconv_schedule(iters_per_epoch=4)
    assert s.value(0) == 30 and s.value(20) == pytest.approx(15.5) and s.value(40) == 1 and s.value(400) == 1
    assert s.step(module) == pytest.approx(30 - 29 / 40) and module.attention.temperature == s.value(1)
    # a huge temperature gives uniform attention: the mean kernel and the mean bias
    assert set_temperature(module, 1e12, MixtureAttention) == 1
    mean = torch.nn.functional.conv2d(x, module.weight.mean(0), module.bias.mean(0), padding=1)
    assert_close(module(x), mean)
    set_temperature(module, 1.0, MixtureAttention)
    assert not torch.allclose(module(x), mean)
    assert set_temperature(module, 0.5) == 0  # the KW default kind leaves DY-Conv alone
    with pytest.raises(ValueError, match="temperature"):
        module.attention.update_temperature(0)


def test_errors():
    with pytest.raises(ValueError, match="routing"):
        MixtureKernel(4, 4, routing="softplus")
    with pytest.raises(ValueError, match="divisible"):
        CondConv(4, 6, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        DYConv(4, 4, 2)
    with pytest.raises(TypeError, match="MixtureConv"):
        Aggregation(Sliding(3), MixtureKernel(4, 4, bias=True))
    # without a bias the source works in any aggregation
    agg = Aggregation(Sliding(3), MixtureKernel(4, 4, bias=False))
    assert agg(torch.randn(1, 4, 5, 5)).shape == (1, 4, 5, 5)


@pytest.mark.parametrize(("stride", "dilation", "groups"), [(1, 1, 1), (2, 2, 2)])
def test_condconv_matches_timm_condconv2d(stride, dilation, groups):
    """timm's ``CondConv2d`` holds the same experts as ``weight.flatten(1)`` and ``bias``; given our
    routing it computes the same output."""
    from timm.layers import CondConv2d

    module = _build(functools.partial(CondConv, 4, 6, 3, 5, stride, dilation, groups), 3)
    timm_conv = CondConv2d(4, 6, 3, stride, dilation=dilation, groups=groups, bias=True, num_experts=5).double()
    timm_conv.load_state_dict({"weight": module.weight.flatten(1), "bias": module.bias})
    x = torch.randn(3, 4, 9, 8, dtype=F64)
    routing = torch.sigmoid(module.routing_fn(x.mean((2, 3))))
    assert_close(module(x), timm_conv(x, routing))
