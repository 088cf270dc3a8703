"""X-volution: the pixel-shift attention against an independent statement, its fast path against the
reference path, and the inference merge against the two-branch form."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import F64, assert_close, assert_path_matches_reference, randomize_, seeds
from unifiedops import Aggregation, Sliding
from unifiedops.xvolution import MergedXVolution, ShiftProductKernel, XVolution

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def _shift_in_zeros(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = t[..., i + dy, j + dx]``, zero outside."""
    h, w = t.shape[-2:]
    y0, x0 = max(0, -dy), max(0, -dx)
    y1, x1 = max(y0, min(h, h - dy)), max(x0, min(w, w - dx))
    out = torch.zeros_like(t)
    out[..., y0:y1, x0:x1] = t[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def _pssa_by_shifts(module: Aggregation, x: torch.Tensor) -> torch.Tensor:
    """The attention branch written from its definition: for every shift d, weight <q_p, k_{p+d}> / sqrt(Cq)
    times the shifted input."""
    q, k = module.query(x), module.key(x)
    s = module.neighbourhood.dilation
    y = torch.zeros_like(x)
    for dy in (-s, 0, s):
        for dx in (-s, 0, s):
            coeff = (q * _shift_in_zeros(k, dy, dx)).sum(1, keepdim=True) / q.shape[1] ** 0.5
            y = y + coeff * _shift_in_zeros(x, dy, dx)
    return y


geometry = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


@settings(max_examples=EXAMPLES // 2)
@given(c=st.integers(1, 5), cq=st.sampled_from([None, 1, 3]), shift=st.integers(1, 3), geo=geometry, seed=seeds)
def test_pixel_shift_attention_by_definition_and_fast_path(c, cq, shift, geo, seed):
    torch.manual_seed(seed)
    module = randomize_(Aggregation(Sliding(3, shift), ShiftProductKernel(c, cq)).double())
    assert module.path == "shifted_sum"
    x = torch.randn(geo[0], c, *geo[1:], dtype=F64)
    assert_close(module(x), _pssa_by_shifts(module, x), "PSSA")
    assert_path_matches_reference(module, x, "shifted_sum")


@settings(max_examples=EXAMPLES // 2)
@given(
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    k=st.sampled_from([1, 3, 5]),
    shift=st.integers(1, 3),
    geo=geometry,
    seed=seeds,
)
def test_merge_equals_two_branches(cin, cout, k, shift, geo, seed):
    """The paper's inference form: one per-position kernel W(d) + w_A(p, d) V, BatchNorms folded, equals
    the trained two-branch module in eval mode, also when the shifts reach past the convolution kernel."""
    torch.manual_seed(seed)
    xv = randomize_(XVolution(cin, cout, k, shift).double()).eval()
    x = torch.randn(geo[0], cin, *geo[1:], dtype=F64)
    merged = xv.merge()
    assert isinstance(merged, MergedXVolution) and merged.path == "reference"
    assert merged.neighbourhood.kernel_size == max(k, 2 * shift + 1)
    assert_close(merged(x), xv(x), "merged X-volution")


def test_two_branch_form_is_conv_bn_plus_attention_bn():
    torch.manual_seed(0)
    xv = randomize_(XVolution(4, 6, 3).double()).eval()
    x = torch.randn(2, 4, 7, 8, dtype=F64)
    conv = F.batch_norm(
        F.conv2d(x, xv.conv.weight, padding=1),
        xv.conv_bn.running_mean,
        xv.conv_bn.running_var,
        xv.conv_bn.weight,
        xv.conv_bn.bias,
        eps=xv.conv_bn.eps,
    )
    attention = F.conv2d(_pssa_by_shifts(xv.attention, x), xv.value.weight)
    attention = F.batch_norm(
        attention,
        xv.attention_bn.running_mean,
        xv.attention_bn.running_var,
        xv.attention_bn.weight,
        xv.attention_bn.bias,
        eps=xv.attention_bn.eps,
    )
    assert_close(xv(x), conv + attention)
    with torch.no_grad():
        xv.value.weight.zero_()  # without the attention branch only conv + BN (+ the attention BN's shift) remain
    assert_close(
        xv(x),
        conv
        + (
            xv.attention_bn.bias
            - xv.attention_bn.running_mean
            * xv.attention_bn.weight
            / torch.sqrt(xv.attention_bn.running_var + xv.attention_bn.eps)
        ).view(1, -1, 1, 1),
    )


def test_merge_detects_a_wrong_fold():
    torch.manual_seed(1)
    xv = randomize_(XVolution(3, 3).double()).eval()
    x = torch.randn(1, 3, 6, 6, dtype=F64)
    merged = xv.merge()
    with torch.no_grad():
        merged.value_weight.mul_(1.01)
    assert not torch.allclose(merged(x), xv(x))


def test_parameter_count():
    c, o, k, cq = 16, 32, 3, 8
    xv = XVolution(c, o, k, qk_channels=cq)
    expected = o * c * k * k + 2 * o + 2 * (c * cq + cq) + o * c + 2 * o
    assert sum(p.numel() for p in xv.parameters()) == expected
    assert set(xv.state_dict()) >= {"conv.weight", "attention.query.weight", "attention.key.bias", "value.weight"}


@pytest.mark.parametrize("merged", [False, True])
def test_gradcheck(merged):
    torch.manual_seed(2)
    xv = randomize_(XVolution(2, 3, 3, 1, qk_channels=2).double()).eval()
    module = xv.merge() if merged else xv
    x = torch.randn(1, 2, 4, 5, dtype=F64, requires_grad=True)
    params = [p for p in module.parameters()]
    assert torch.autograd.gradcheck(lambda inp, *ps: module(inp), (x, *params))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Aggregation(Sliding(3, border="mask"), ShiftProductKernel(4)), "border='zeros'"),
        (lambda: Aggregation(Sliding(3, stride=2), ShiftProductKernel(4)), "stride=1"),
        (lambda: XVolution(4, 4, shift=0), "shift"),
        (lambda: XVolution(0, 4), "in_channels"),
        (lambda: ShiftProductKernel(4, qk_channels=0), "qk_channels"),
        (lambda: MergedXVolution(4, 4, 3, shift=2), "shifts"),
    ],
)
def test_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
