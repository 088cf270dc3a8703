"""ODConv: the official computation re-stated, fast path against reference path, the degenerate plain
convolution, gradients, parameter names and counts, the temperature and the batch-of-one error."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import F64, assert_close, assert_gradcheck, assert_path_matches_reference, randomize_, seeds
from unifiedops.odconv import ODConv2d, OmniAttention, odconv_schedule
from unifiedops.warehouse import set_temperature

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def official_form(module: ODConv2d, x: torch.Tensor) -> torch.Tensor:
    """ODConv as the official code computes it: the input scaled by the channel attention, one
    grouped convolution over the batch folded into the groups with ``sum_e a_s a_w[e] W_e``, the
    output scaled by the filter attention; written from the heads' parameters, not through the
    library's attention module."""
    att, nb = module.attention, module.neighbourhood
    b, c = x.shape[:2]
    n, o, cg, k, _ = module.weight.shape
    groups = c // cg
    bn = att.bn
    pooled = F.conv2d(x.mean((2, 3), keepdim=True), att.fc.weight)
    h = F.relu(F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    def logits(fc):
        return F.conv2d(h, fc.weight, fc.bias) / att.temperature

    a_c = torch.sigmoid(logits(att.channel_fc))  # (B, C, 1, 1)
    a_f = torch.ones(b, o, 1, 1, dtype=x.dtype) if att.filter_fc is None else torch.sigmoid(logits(att.filter_fc))
    a_s = torch.ones(b, 1, 1, 1, k, k, dtype=x.dtype)
    if att.spatial_fc is not None:
        a_s = torch.sigmoid(logits(att.spatial_fc)).view(b, 1, 1, 1, k, k)
    a_w = torch.ones(b, 1, 1, 1, 1, 1, dtype=x.dtype)
    if att.kernel_fc is not None:
        a_w = torch.softmax(logits(att.kernel_fc).view(b, n), 1).view(b, n, 1, 1, 1, 1)
    folded = (x * a_c).reshape(1, b * c, *x.shape[2:])
    kernels = (a_s * a_w * module.weight.unsqueeze(0)).sum(1).reshape(b * o, cg, k, k)
    pad = nb.dilation * (k // 2)
    y = F.conv2d(folded, kernels, None, nb.stride, pad, nb.dilation, groups * b)
    return y.view(b, o, *y.shape[2:]) * a_f


@st.composite
def odconv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    if draw(st.booleans()):  # depth-wise: no filter head
        cin = cout = groups
    else:
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    make = functools.partial(
        ODConv2d,
        cin,
        cout,
        kernel_size=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.integers(1, 2)),
        dilation=draw(st.integers(1, 2)),
        groups=groups,
        kernel_num=draw(st.integers(1, 4)),
        reduction=draw(st.sampled_from([0.0625, 0.5, 1.0])),
        min_hidden=draw(st.integers(1, 4)),
        temperature=draw(st.sampled_from([1.0, 2.5, 30.0])),
    )
    shape = (draw(st.integers(1, 3)), cin, draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    return make, shape


def _build(make, seed):
    torch.manual_seed(seed)
    return randomize_(make().double()).eval()


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=odconv_cases(), seed=seeds)
def test_fast_path_matches_reference(case, seed):
    make, shape = case
    module = _build(make, seed)
    assert module.path == "batched_conv" and module.paths == ["batched_conv", "reference"]
    assert_path_matches_reference(module, torch.randn(shape, dtype=F64), "batched_conv")


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=odconv_cases(), seed=seeds)
def test_matches_the_official_form(case, seed):
    make, shape = case
    module = _build(make, seed)
    x = torch.randn(shape, dtype=F64)
    for path in module.paths:
        module.path = path
        assert_close(module(x), official_form(module, x), path)


@pytest.mark.parametrize("path", ["batched_conv", "reference"])
@pytest.mark.parametrize("wrong", ["channel attention on the output", "spatial attention transposed"])
def test_the_official_form_catches_a_wrong_assembly(wrong, path, monkeypatch):
    """The check can fail: attentions applied along the wrong axis give a different output."""
    module = _build(functools.partial(ODConv2d, 4, 4, 3, kernel_num=3, reduction=1.0), 0)
    module.path = path
    x = torch.randn(2, 4, 6, 5, dtype=F64)
    original = OmniAttention.forward

    def forward(self, inp):
        attentions = original(self, inp)
        if wrong == "channel attention on the output":
            filter_ = attentions.filter * attentions.channel
            return attentions._replace(filter=filter_, channel=torch.ones_like(attentions.channel))
        return attentions._replace(spatial=attentions.spatial.view(-1, 3, 3).transpose(1, 2).reshape(-1, 9))

    assert_close(module(x), official_form(module, x))
    monkeypatch.setattr(OmniAttention, "forward", forward)
    assert not torch.allclose(module(x), official_form(module, x))


@settings(max_examples=max(EXAMPLES // 5, 1), deadline=None)
@given(
    cin=st.integers(1, 6),
    cout=st.integers(1, 6),
    k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    seed=seeds,
)
def test_one_kernel_with_attentions_forced_to_one_is_a_plain_conv(cin, cout, k, stride, dilation, seed):
    module = _build(functools.partial(ODConv2d, cin, cout, k, stride, dilation, kernel_num=1), seed)
    assert module.attention.kernel_fc is None
    with torch.no_grad():
        for fc in (module.attention.channel_fc, module.attention.filter_fc, module.attention.spatial_fc):
            if fc is not None:  # sigmoid(60) is 1.0 in float64
                fc.weight.zero_()
                fc.bias.fill_(60.0)
    x = torch.randn(2, cin, 7, 6, dtype=F64)
    plain = F.conv2d(x, module.weight[0], None, stride, dilation * (k // 2), dilation)
    for path in module.paths:
        module.path = path
        torch.testing.assert_close(module(x), plain, rtol=1e-12, atol=1e-12, msg=path)


MODULES = {
    "3x3-4kernels": functools.partial(ODConv2d, 4, 6, 3, kernel_num=4, reduction=0.5, min_hidden=2),
    "strided-grouped": functools.partial(ODConv2d, 4, 6, 3, 2, 2, groups=2, kernel_num=2, min_hidden=3),
    "depthwise": functools.partial(ODConv2d, 4, 4, 3, groups=4, kernel_num=1, min_hidden=2),
    "1x1": functools.partial(ODConv2d, 4, 6, 1, kernel_num=3, min_hidden=2, temperature=2.0),
}


@pytest.mark.parametrize("path", ["batched_conv", "reference"])
@pytest.mark.parametrize("name", list(MODULES))
def test_gradcheck(name, path):
    module = _build(MODULES[name], 7)
    module.path = path
    assert_gradcheck(module, torch.randn(2, 4, 4, 3, dtype=F64))


def _head_shapes(module: ODConv2d) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in module.named_parameters() if n.startswith("attention.")}


def test_parameter_names_shapes_and_counts():
    """The official ``ODConv2d``'s state-dict names and shapes; heads absent where they cannot apply."""
    c, o, k, n = 64, 128, 3, 4
    conv = ODConv2d(c, o, k, kernel_num=n)
    hidden = 16  # max(int(64 / 16), 16)
    assert tuple(conv.weight.shape) == (n, o, c, k, k)
    assert _head_shapes(conv) == {
        "attention.fc.weight": (hidden, c, 1, 1),
        "attention.bn.weight": (hidden,),
        "attention.bn.bias": (hidden,),
        "attention.channel_fc.weight": (c, hidden, 1, 1),
        "attention.channel_fc.bias": (c,),
        "attention.filter_fc.weight": (o, hidden, 1, 1),
        "attention.filter_fc.bias": (o,),
        "attention.spatial_fc.weight": (k * k, hidden, 1, 1),
        "attention.spatial_fc.bias": (k * k,),
        "attention.kernel_fc.weight": (n, hidden, 1, 1),
        "attention.kernel_fc.bias": (n,),
    }
    assert {n for n, _ in conv.named_buffers()} == {
        "attention.bn.running_mean",
        "attention.bn.running_var",
        "attention.bn.num_batches_tracked",
    }
    expected = n * o * c * k * k + c * hidden + 2 * hidden + (hidden + 1) * (c + o + k * k + n)
    assert sum(p.numel() for p in conv.parameters()) == expected
    assert ODConv2d(320, 320, 3).attention.fc.out_channels == 20  # int(320 / 16) exceeds the minimum
    depthwise_1x1 = ODConv2d(8, 8, 1, groups=8, kernel_num=1)
    assert set(_head_shapes(depthwise_1x1)) == {
        "attention.fc.weight",
        "attention.bn.weight",
        "attention.bn.bias",
        "attention.channel_fc.weight",
        "attention.channel_fc.bias",
    }


def test_temperature_schedule():
    module = _build(functools.partial(ODConv2d, 4, 4, 3, kernel_num=3, min_hidden=2), 1)
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    s = odconv_schedule(iters_per_epoch=4)
    assert s.value(0) == 30 and s.value(20) == pytest.approx(15.5) and s.value(40) == 1 and s.value(400) == 1
    assert s.step(module) == pytest.approx(30 - 29 / 40) and module.attention.temperature == s.value(1)
    y = module(x)
    assert set_temperature(module, 1.0, OmniAttention) == 1
    assert not torch.allclose(module(x), y)  # every head reads the temperature
    with pytest.raises(ValueError, match="temperature"):
        module.attention.update_temperature(0)


def test_a_batch_of_one_needs_eval_mode():
    module = ODConv2d(4, 4, 3)
    with pytest.raises(ValueError, match="batch of at least 2"):
        module.train()(torch.randn(1, 4, 5, 5))
    assert module.eval()(torch.randn(1, 4, 5, 5)).shape == (1, 4, 5, 5)
    assert module.train()(torch.randn(2, 4, 5, 5)).shape == (2, 4, 5, 5)


def test_errors():
    with pytest.raises(ValueError, match="groups"):
        ODConv2d(4, 6, groups=4)
    with pytest.raises(ValueError, match="kernel_num"):
        ODConv2d(4, 4, kernel_num=0)
    with pytest.raises(ValueError, match="reduction"):
        ODConv2d(4, 4, reduction=0)
    with pytest.raises(TypeError, match="temperature"):
        ODConv2d(4, 4, temperature="30")
    with pytest.raises(ValueError, match="kernel_size"):
        ODConv2d(4, 4, 2)
