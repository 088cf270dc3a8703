"""LKA (VAN): parameter count and names, the composed-kernel identity of the decomposition, the
product with the input, fast path against the reference path, and gradcheck, in float64."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, assert_close, randomize_, seeds
from unifiedops import Aggregation, Sliding
from unifiedops.lka import LKA, LargeKernelGate, lka_kernel_sizes

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def _set_paths(module: torch.nn.Module, which: str) -> None:
    """Every aggregation of a composite on its fast path (``"fast"``) or on the reference path."""
    for sub in module.modules():
        if isinstance(sub, Aggregation):
            sub.path = "auto" if which == "fast" else "reference"


def _lka(dim, k=21, d=3, seed=0) -> LKA:
    torch.manual_seed(seed)
    return randomize_(LKA(dim, k, d).double())


@st.composite
def _kd(draw) -> tuple[int, int]:
    """``(K, d)`` with ``ceil(K/d)`` odd: every K in ``(d*(m-1), d*m]`` gives ``ceil(K/d) = m``."""
    d = draw(st.integers(1, 3))
    m = draw(st.sampled_from([1, 3, 5]))
    return draw(st.integers(max(1, d * (m - 1) + 1), d * m)), d


# --- parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,k,d", [(64, 21, 3), (32, 21, 3), (8, 9, 2), (5, 7, 1), (4, 17, 4)])
def test_parameter_count_and_names(dim, k, d):
    m = math.ceil(k / d)
    expected = dim * (2 * d - 1) ** 2 + dim + dim * m * m + dim + dim * dim + dim
    lka = LKA(dim, k, d)
    assert sum(p.numel() for p in lka.parameters()) == expected
    shapes = {name: tuple(t.shape) for name, t in lka.state_dict().items()}
    assert shapes == {
        "conv0.weight": (dim, 1, 2 * d - 1, 2 * d - 1),
        "conv0.bias": (dim,),
        "conv_spatial.weight": (dim, 1, m, m),
        "conv_spatial.bias": (dim,),
        "conv1.weight": (dim, dim, 1, 1),
        "conv1.bias": (dim,),
    }


def test_default_is_the_official_layer():
    lka = LKA(64)
    assert sum(p.numel() for p in lka.parameters()) == 64 * 64 + 77 * 64  # C^2 + (25 + 1 + 49 + 1 + 1) C
    assert (lka.conv0.neighbourhood, lka.conv_spatial.neighbourhood) == (Sliding(5), Sliding(7, 3))
    assert lka.path == "shifted_sum" and lka.paths == ["shifted_sum", "reference"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        LKA(8, 12, 3)  # ceil(12/3) = 4 is even
    with pytest.raises(ValueError, match="dilation"):
        LKA(8, 21, 0)
    with pytest.raises(TypeError, match="kernel_size"):
        LKA(8, 21.0, 3)
    with pytest.raises(ValueError, match="Point"):
        Aggregation(Sliding(3), LargeKernelGate(8))
    with pytest.raises(ValueError, match="channels"):
        LKA(8)(torch.randn(1, 4, 5, 5))
    assert lka_kernel_sizes(21, 3) == (5, 7) and lka_kernel_sizes(7, 1) == (1, 7)


# --- the decomposition is one large depth-wise kernel away from the border -------------------------


def _composed(lka: LKA) -> tuple[torch.Tensor, torch.Tensor]:
    """conv_spatial after conv0 as one depth-wise kernel and bias, by explicit loops over the taps."""
    w0, b0 = lka.conv0.weight.detach(), lka.conv0.bias.detach()
    ws, bs = lka.conv_spatial.weight.detach(), lka.conv_spatial.bias.detach()
    d = lka.source.dilation
    k0, m = w0.shape[-1], ws.shape[-1]
    size = k0 + d * (m - 1)
    kernel = w0.new_zeros(w0.shape[0], 1, size, size)
    for ay in range(m):
        for ax in range(m):
            for by in range(k0):
                for bx in range(k0):
                    kernel[:, 0, d * ay + by, d * ax + bx] += ws[:, 0, ay, ax] * w0[:, 0, by, bx]
    return kernel, bs + b0 * ws.sum((1, 2, 3))


def _check_composed(lka: LKA, x: torch.Tensor) -> None:
    d, m = lka.source.dilation, lka.conv_spatial.weight.shape[-1]
    kernel, bias = _composed(lka)
    halo = d * (m // 2)
    inner = (slice(None), slice(None), slice(halo, x.shape[2] - halo), slice(halo, x.shape[3] - halo))
    one_conv = F.conv2d(x, kernel, bias, padding=kernel.shape[-1] // 2, groups=x.shape[1])
    with torch.no_grad():
        conv1 = lka.conv1
        expected = F.conv2d(one_conv, conv1.weight, conv1.bias)
        gate = lka.source.attention_map(lka, x)
        assert_close(gate[inner], expected[inner], "map vs one depth-wise conv")
        assert_close(lka(x)[inner], (x * expected)[inner], "output vs x * one depth-wise conv")
        # The restriction matters: at the border conv_spatial reads conv0's zero padding, where
        # the composed kernel would read conv0 applied to padding (its bias, partial sums).
        if halo and lka.conv0.weight.shape[-1] > 1:
            assert not torch.allclose(gate, expected)


def test_composed_23x23_kernel_equals_lka_away_from_the_border():
    lka = _lka(3, 21, 3, seed=1).eval()
    kernel, _ = _composed(lka)
    assert kernel.shape[-1] == 23
    # Cross-check the loops with the transposed convolution: the spatial kernel spread by d,
    # each tap stamping conv0's kernel.
    stamped = F.conv_transpose2d(
        lka.conv_spatial.weight.detach().transpose(0, 1), lka.conv0.weight.detach(), stride=3, groups=3
    )
    assert_close(stamped.transpose(0, 1), kernel)
    x = torch.randn(2, 3, 24, 21, dtype=F64)
    _check_composed(lka, x)
    with torch.no_grad():
        lka.conv_spatial.weight[1, 0, 3, 3] += 0.1  # the composed kernel no longer matches
        kernel2, bias2 = _composed(lka)
        lka.conv_spatial.weight[1, 0, 3, 3] -= 0.1
    assert not torch.allclose(
        lka.source.attention_map(lka, x)[:, :, 9:-9, 9:-9],
        F.conv2d(F.conv2d(x, kernel2, bias2, padding=11, groups=3), lka.conv1.weight, lka.conv1.bias)[:, :, 9:-9, 9:-9],
    )


@settings(max_examples=max(1, EXAMPLES // 4))
@given(kd=_kd(), c=st.integers(1, 4), extra=st.tuples(st.integers(1, 4), st.integers(1, 4)), seed=seeds)
def test_decomposition_equals_one_depthwise_conv(kd, c, extra, seed):
    k, d = kd
    lka = _lka(c, k, d, seed)
    halo = d * (math.ceil(k / d) // 2)
    x = torch.randn(2, c, 2 * halo + extra[0], 2 * halo + extra[1], dtype=F64)
    _set_paths(lka, "fast")
    _check_composed(lka, x)


# --- the product, both paths ------------------------------------------------------------------------


def _restated(lka: LKA, x: torch.Tensor) -> torch.Tensor:
    """The official layer order in plain functional calls: x * conv1(conv_spatial(conv0(x)))."""
    c, d = x.shape[1], lka.source.dilation
    m = lka.conv_spatial.weight.shape[-1]
    a = F.conv2d(x, lka.conv0.weight, lka.conv0.bias, padding=d - 1, groups=c)
    a = F.conv2d(a, lka.conv_spatial.weight, lka.conv_spatial.bias, padding=d * (m // 2), dilation=d, groups=c)
    return x * F.conv2d(a, lka.conv1.weight, lka.conv1.bias)


def _outputs_and_grads(module, x, which, grad_out):
    _set_paths(module, which)
    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(True)
    y = module(xx)
    y.backward(grad_out)
    return y.detach(), xx.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@settings(max_examples=max(1, EXAMPLES // 4))
@given(
    kd=_kd(),
    c=st.integers(1, 4),
    b=st.integers(1, 2),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    last=st.booleans(),
    seed=seeds,
)
def test_fast_equals_reference_and_restatement(kd, c, b, h, w, last, seed):
    lka = _lka(c, *kd, seed)
    lka.channels_last = last
    x = torch.randn(b, c, h, w, dtype=F64)
    xin = x.permute(0, 2, 3, 1).contiguous() if last else x
    grad_out = torch.randn_like(xin)
    y, gx, gp = _outputs_and_grads(lka, xin, "fast", grad_out)
    y_ref, gx_ref, gp_ref = _outputs_and_grads(lka, xin, "reference", grad_out)
    assert lka.path == "reference" and lka.conv0.path == "reference"
    assert_close(y, y_ref, "output")
    assert_close(gx, gx_ref, "input gradient")
    assert set(gp) == set(gp_ref) and len(gp) == 6
    for name in gp:
        assert_close(gp[name], gp_ref[name], f"gradient of {name}")
    assert_close(y.permute(0, 3, 1, 2) if last else y, _restated(lka, x), "official layer order")


def test_restatement_detects_a_perturbed_weight():
    lka = _lka(4, seed=3)
    x = torch.randn(1, 4, 9, 9, dtype=F64)
    with torch.no_grad():
        y = lka(x)
        lka.conv1.bias[2] += 1e-3
        assert not torch.allclose(y, _restated(lka, x))


# --- gradcheck ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["fast", "reference"])
@pytest.mark.parametrize("k,d", [(21, 3), (5, 2)])
def test_gradcheck(k, d, which):
    lka = _lka(2, k, d, seed=k + d)
    _set_paths(lka, which)
    x = torch.randn(1, 2, 4, 5, dtype=F64, requires_grad=True)
    assert gradcheck(lka, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    names = [n for n, _ in lka.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in lka.parameters())

    def f(x, *ps):
        return functional_call(lka, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
