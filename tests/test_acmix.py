"""ACmix (both forms): parameter counts, the shift convolution, fast paths against the reference
path, independent restatements of the official layer order, timm's Swin attention, gradcheck, and
argument errors. All in float64."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer import SwinTransformerBlock
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, Case, assert_close, assert_path_matches_reference, randomize_, seeds
from unifiedops import Aggregation, QKAttention, Sliding
from unifiedops.acmix import ACmix, ACmixWindowAttention, shift_kernel

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))
BOTH = ("fast", "reference")


def _set_path(module, which: str):
    module.path = "auto" if which == "fast" else "reference"
    return module


def _randn(*shape):
    return torch.randn(*shape, dtype=F64)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parameter counts and names --------------------------------------------------------------------


def _acmix_count(cin: int, out: int, head: int, kc: int) -> int:
    """conv1/2/3 (1x1 with bias), conv_p (2 -> head_dim, bias), fc (3*head -> kc^2, no bias),
    dep_conv (kc^2*head_dim -> out, groups head_dim: kc^2 inputs per group, kc x kc), rate1, rate2."""
    return 3 * out * (cin + 1) + 3 * (out // head) + 3 * head * kc**2 + out * kc**4 + 2


def _swin_count(dim: int, heads: int, window: int, qkv_bias: bool = True) -> int:
    """qkv, proj, relative-position table, fc (3*heads -> 9, with bias), dep_conv (9 per group), rates."""
    return (
        (3 * dim * dim + 3 * dim * qkv_bias)
        + (dim * dim + dim)
        + (2 * window - 1) ** 2 * heads
        + 27 * heads
        + 9
        + 81 * dim
        + 2
    )


@pytest.mark.parametrize(
    "cin,out,katt,head,kc,stride",
    [(64, 64, 7, 4, 3, 1), (16, 32, 5, 2, 1, 2), (8, 12, 3, 3, 5, 1), (256, 256, 7, 4, 3, 2)],
)
def test_acmix_parameter_count(cin, out, katt, head, kc, stride):
    assert _count(ACmix(cin, out, katt, head, kc, stride)) == _acmix_count(cin, out, head, kc)


def test_acmix_parameter_count_by_hand():
    # 3*64*65 + 3*16 + 3*4*9 + 64*81 + 2, the ACmix of ResNet's first stage (width 64).
    assert _count(ACmix(64, 64)) == 12480 + 48 + 108 + 5184 + 2 == 17822


def test_acmix_resnet50_count_from_the_official_code():
    """ResNet-50 (25,557,032 parameters) with every bottleneck's 3x3 conv replaced by ACmix(w, w): the
    official code's model has 18,333,976 parameters (its README rounds to 18.6M)."""
    total = 25_557_032
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        total += blocks * (_count(ACmix(width, width)) - 9 * width * width)
    assert total == 18_333_976


@pytest.mark.parametrize("dim,heads,window,qkv_bias", [(96, 3, 7, True), (192, 6, 7, True), (12, 2, 3, False)])
def test_swin_parameter_count(dim, heads, window, qkv_bias):
    assert _count(ACmixWindowAttention(dim, heads, window, qkv_bias=qkv_bias)) == _swin_count(
        dim, heads, window, qkv_bias
    )


def test_swin_parameter_count_by_hand():
    # Swin-T stage 1: qkv 96*288 + 288, proj 96*96 + 96, table 169*3, fc 9*9 + 9, dep_conv 96*81, rates.
    assert _count(ACmixWindowAttention(96, 3, 7)) == 27936 + 9312 + 507 + 90 + 7776 + 2 == 45623


def test_state_dict_keys_are_the_official_names():
    assert set(ACmix(8, 8, 3, 2).state_dict()) == {
        *(f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")),
        "conv_p.weight",
        "conv_p.bias",
        "fc.weight",
        "dep_conv.weight",
        "rate1",
        "rate2",
    }
    assert set(ACmixWindowAttention(8, 2, 3).state_dict()) == {
        "qkv.weight",
        "qkv.bias",
        "proj.weight",
        "proj.bias",
        "relative_position_bias_table",
        "relative_position_index",
        "fc.weight",
        "fc.bias",
        "dep_conv.weight",
        "rate1",
        "rate2",
    }


def test_initial_rates_and_shift_kernel():
    for m in (ACmix(8, 8, 3, 2, kernel_conv=5), ACmixWindowAttention(8, 2, 3)):
        assert m.rate1.shape == m.rate2.shape == (1,)
        assert m.rate1.item() == m.rate2.item() == 0.5
        assert m.dep_conv.bias is None and m.dep_conv.weight.requires_grad
    k = 5
    weight = ACmix(8, 8, 3, 2, kernel_conv=k).dep_conv.weight
    expected = torch.zeros(8, k * k, k, k)
    for i in range(k * k):
        expected[:, i, i // k, i % k] = 1
    assert torch.equal(weight, expected)
    assert torch.equal(shift_kernel(8, k), expected)


# --- the convolution half at its shift initialisation: a sum of shifted maps ----------------------


def _projections(m: ACmix, x: torch.Tensor) -> list[torch.Tensor]:
    return [F.conv2d(x, c.weight, c.bias) for c in (m.conv1, m.conv2, m.conv3)]


def _shifted_map_sum(m: ACmix, x: torch.Tensor) -> torch.Tensor:
    """The paper's reading of the conv half: fc gives k*k maps per channel index d (per head_dim
    position), each is shifted by its own tap (zero fill), and the shifted maps are summed; every head
    gets the same sum. Written with padding and slicing, without a convolution."""
    b, _, h, w = x.shape
    heads, d, kc = m.source.heads, m.source.head_dim, m.dep_conv.neighbourhood.kernel_size
    stack = torch.cat([t.reshape(b, heads, d, h, w) for t in _projections(m, x)], 1)  # (B, 3*heads, d, H, W)
    maps = torch.einsum("ic,bcdhw->bdihw", m.fc.weight.flatten(1), stack)  # (B, d, kc*kc, H, W)
    r = kc // 2
    padded = F.pad(maps, (r, r, r, r))
    total = sum(padded[:, :, i, i // kc : i // kc + h, i % kc : i % kc + w] for i in range(kc * kc))
    s = m.dep_conv.neighbourhood.stride
    return total.repeat_interleave(heads, 1)[:, :, ::s, ::s]  # output channel o reads group o // heads


@st.composite
def _acmix_geometry(draw, max_size: int = 11):
    head = draw(st.integers(1, 3))
    out = head * draw(st.integers(1, 3))
    katt = draw(st.sampled_from([3, 5, 7]))
    return dict(
        in_planes=draw(st.integers(1, 5)),
        out_planes=out,
        kernel_att=katt,
        head=head,
        kernel_conv=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.sampled_from([1, 2])),
        height=draw(st.integers(katt // 2 + 1, max_size)),
        width=draw(st.integers(katt // 2 + 1, max_size)),
        batch=draw(st.integers(1, 2)),
    )


@settings(max_examples=max(1, EXAMPLES // 8))
@given(geo=_acmix_geometry(), which=st.sampled_from(BOTH), seed=seeds)
def test_conv_half_at_shift_init_is_a_sum_of_shifted_maps(geo, which, seed):
    torch.manual_seed(seed)
    h, w, b = geo.pop("height"), geo.pop("width"), geo.pop("batch")
    m = ACmix(**geo).double()
    shifts = m.dep_conv.weight.detach().clone()
    randomize_(m)
    with torch.no_grad():
        m.dep_conv.weight.copy_(shifts)
        m.rate1.zero_()
        m.rate2.fill_(1.0)
    _set_path(m, which)
    x = _randn(b, geo["in_planes"], h, w)
    expected = _shifted_map_sum(m, x)
    assert_close(m(x), expected)
    r = geo["kernel_conv"] // 2
    with torch.no_grad():  # the comparison can fail: one perturbed tap breaks it (the centre one is never padding)
        m.dep_conv.weight[0, 0, r, r] += 0.1
    assert not torch.allclose(m(x), expected)


# --- fast paths equal the reference path ---------------------------------------------------------


@settings(max_examples=max(1, EXAMPLES // 5))
@given(geo=_acmix_geometry(max_size=13), tile=st.sampled_from([None, 1, 2, 3, 4]), nhwc=st.booleans(), seed=seeds)
def test_acmix_attention_halo_equals_reference(geo, tile, nhwc, seed):
    """The attention half alone (reflect border, stride, coordinate embedding) on ``halo_sdpa``."""
    source = QKAttention(
        geo["in_planes"],
        heads=geo["head"],
        value_channels=geo["out_planes"],
        projection="conv",
        out_proj=False,
        coord_pos_embed=True,
    )
    nb = Sliding(geo["kernel_att"], border="reflect", stride=geo["stride"])
    case = Case(
        functools.partial(Aggregation, nb, source),
        geo["batch"],
        geo["height"],
        geo["width"],
        geo["in_planes"],
        halo_tile=tile,
        nhwc_memory=nhwc,
    )
    module, x = case.build(seed)
    assert module.path == "halo_sdpa"
    assert_path_matches_reference(module, x, "halo_sdpa")


@settings(max_examples=max(1, EXAMPLES // 5))
@given(geo=_acmix_geometry(), tile=st.sampled_from([None, 2, 3]), nhwc=st.booleans(), seed=seeds)
def test_acmix_fast_equals_reference(geo, tile, nhwc, seed):
    h, w, b = geo.pop("height"), geo.pop("width"), geo.pop("batch")
    case = Case(functools.partial(ACmix, **geo), b, h, w, geo["in_planes"], halo_tile=tile, nhwc_memory=nhwc)
    module, x = case.build(seed)
    assert module.path == "halo_sdpa" and module.dep_conv.path == "conv"
    module.path = "reference"
    assert module.dep_conv.path == "reference"
    assert_path_matches_reference(module, x, "halo_sdpa")


@st.composite
def _swin_case(draw):
    heads = draw(st.integers(1, 3))
    dim = heads * draw(st.integers(1, 3))
    window = draw(st.integers(1, 5))
    shift = draw(st.integers(0, window - 1))
    last = draw(st.booleans())
    make = functools.partial(ACmixWindowAttention, dim, heads, window, shift, draw(st.booleans()), channels_last=last)
    return Case(
        make,
        draw(st.integers(1, 2)),
        draw(st.integers(1, 11)),
        draw(st.integers(1, 11)),
        dim,
        channels_last=last,
        nhwc_memory=draw(st.booleans()),
    )


@settings(max_examples=max(1, EXAMPLES // 5))
@given(case=_swin_case(), seed=seeds)
def test_swin_form_fast_equals_reference(case, seed):
    module, x = case.build(seed)
    assert module.path == "window_sdpa"
    assert_path_matches_reference(module, x, "window_sdpa")


# --- the ResNet form equals a restatement of the official layer order -----------------------------


def _acmix_restated(m: ACmix, x: torch.Tensor) -> torch.Tensor:
    """ACmix with unfold: reflection-padded keys, values and position embedding gathered as
    ``k_att^2`` windows, strided queries, logits ``q_i . (k_j + pe_i - pe_j)``, softmax over the window;
    fc over the (B, 3*heads, head_dim, H*W) stack, then the grouped conv with zero padding."""
    b, _, h, w = x.shape
    heads, d = m.source.heads, m.source.head_dim
    katt, s = m.neighbourhood.kernel_size, m.neighbourhood.stride
    kc = m.dep_conv.neighbourhood.kernel_size
    q, k, v = _projections(m, x)
    ho, wo = -(-h // s), -(-w // s)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=F64), torch.linspace(-1, 1, w, dtype=F64), indexing="ij")
    pe = F.conv2d(torch.stack([gx, gy])[None], m.conv_p.weight, m.conv_p.bias)

    def windows(t):
        u = F.unfold(F.pad(t, (katt // 2,) * 4, mode="reflect"), katt, stride=s)
        return u.view(t.shape[0], t.shape[1], katt * katt, ho, wo)

    qs = q.reshape(b * heads, d, h, w)[..., ::s, ::s] * d**-0.5
    keys = windows(k.reshape(b * heads, d, h, w)) + pe[..., ::s, ::s].unsqueeze(2) - windows(pe)
    weights = (qs.unsqueeze(2) * keys).sum(1).softmax(1)  # (B*heads, k_att^2, Ho, Wo)
    attention = (weights.unsqueeze(1) * windows(v.reshape(b * heads, d, h, w))).sum(2).reshape(b, -1, ho, wo)
    stack = torch.cat([t.reshape(b, heads, d, h * w) for t in (q, k, v)], 1)
    mixed = F.conv2d(stack, m.fc.weight).transpose(1, 2).reshape(b, d * kc * kc, h, w)
    conv = F.conv2d(mixed, m.dep_conv.weight, None, s, kc // 2, groups=d)
    return m.rate1 * attention + m.rate2 * conv


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize(
    "cin,out,katt,head,kc,stride,h,w",
    [
        (6, 8, 7, 4, 3, 1, 8, 9),
        (6, 8, 7, 2, 3, 2, 9, 8),
        (4, 6, 5, 3, 1, 1, 5, 6),
        (4, 6, 3, 3, 5, 2, 7, 7),
        (5, 4, 3, 1, 3, 2, 2, 3),
    ],
)
def test_acmix_equals_unfold_restatement(cin, out, katt, head, kc, stride, h, w, which):
    torch.manual_seed(cin * 100 + h * 10 + w)
    m = _set_path(randomize_(ACmix(cin, out, katt, head, kc, stride).double()), which)
    x = _randn(2, cin, h, w).requires_grad_(True)
    y, y_ref = m(x), _acmix_restated(m, x)
    assert y.shape == (2, out, -(-h // stride), -(-w // stride))
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    params = [m.conv_p.weight, m.fc.weight, m.dep_conv.weight, m.rate1]
    grads = torch.autograd.grad(y, [x, *params], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *params], g)
    for a, e in zip(grads, grads_ref, strict=True):
        assert_close(a, e)


# --- the Swin form: timm's window attention plus the conv half on the rolled map -------------------


def _timm_block(dim, heads, window, shift, resolution, seed):
    torch.manual_seed(seed)
    block = SwinTransformerBlock(
        dim, input_resolution=resolution, num_heads=heads, window_size=window, shift_size=shift
    )
    assert block.window_size == (window, window) and block.shift_size == (shift, shift), "timm resized the window"
    randomize_(block.attn)
    return block.double().eval()


def _rolled_conv_restated(m: ACmixWindowAttention, x: torch.Tensor, shift: int) -> torch.Tensor:
    """Official order: roll the map by -shift, qkv, fc over the (B, 3*heads, H*W, head_dim) view, grouped
    3x3 conv with zero padding, roll back."""
    b, h, w, c = x.shape
    heads = m.source.heads
    rolled = torch.roll(x, (-shift, -shift), (1, 2))
    qkv = F.linear(rolled, m.qkv.weight, m.qkv.bias).reshape(b, h * w, 3 * heads, c // heads).transpose(1, 2)
    mixed = F.conv2d(qkv, m.fc.weight, m.fc.bias)  # (B, 9, H*W, head_dim)
    mixed = mixed.permute(0, 3, 1, 2).reshape(b, 9 * c // heads, h, w)
    conv = F.conv2d(mixed, m.dep_conv.weight, None, 1, 1, groups=c // heads).permute(0, 2, 3, 1)
    return torch.roll(conv, (shift, shift), (1, 2))


SWIN_GEOMETRIES = [(3, 0, 6, 9), (3, 1, 6, 9), (4, 2, 8, 8), (5, 2, 10, 15), (7, 3, 14, 14), (2, 1, 4, 6)]


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("window,shift,h,w", SWIN_GEOMETRIES)
def test_swin_attention_half_equals_timm(window, shift, h, w, which):
    """With rate1 = 1 and rate2 = 0 the module is timm's SW-MSA (``SwinTransformerBlock._attn``), and
    its relative-position index is timm's."""
    dim, heads = 6, 2
    block = _timm_block(dim, heads, window, shift, (h, w), seed=window * 10 + shift)
    m = ACmixWindowAttention(dim, heads, window, shift, channels_last=True).double()
    missing, unexpected = m.load_state_dict(block.attn.state_dict(), strict=False)
    assert set(missing) == {"rate1", "rate2", "fc.weight", "fc.bias", "dep_conv.weight", "relative_position_index"}
    assert not unexpected
    assert torch.equal(m.relative_position_index, block.attn.relative_position_index)
    with torch.no_grad():
        m.rate1.fill_(1.0)
        m.rate2.zero_()
    _set_path(m, which)
    x = _randn(2, h, w, dim)
    assert_close(m(x), block._attn(x))


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("window,shift,h,w", SWIN_GEOMETRIES)
def test_swin_form_equals_timm_attention_plus_rolled_conv(window, shift, h, w, which):
    dim, heads = 6, 3
    block = _timm_block(dim, heads, window, shift, (h, w), seed=h * w + shift)
    m = ACmixWindowAttention(dim, heads, window, shift, channels_last=True).double()
    m.load_state_dict(block.attn.state_dict(), strict=False)
    randomize_(m.fc)
    randomize_(m.dep_conv)
    with torch.no_grad():
        m.rate1.fill_(0.7)
        m.rate2.fill_(-1.3)
    _set_path(m, which)
    x = _randn(2, h, w, dim).requires_grad_(True)
    y = m(x)
    y_ref = m.rate1 * block._attn(x) + m.rate2 * _rolled_conv_restated(m, x, shift)
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0])
    if shift:  # rolling is not optional: without it the conv half differs at the seam
        unrolled = m.rate1 * block._attn(x) + m.rate2 * _rolled_conv_restated(m, x, 0)
        assert not torch.allclose(y, unrolled)


@pytest.mark.parametrize("window,shift,h,w", [(3, 1, 5, 7), (4, 2, 6, 5), (3, 0, 4, 8)])
def test_swin_form_pads_then_rolls(window, shift, h, w):
    """Not a multiple of the window: the module equals itself run on the zero-padded map, cropped
    (the official block, as Swin's detection code runs it, pads before rolling)."""
    torch.manual_seed(h * w)
    dim, heads = 4, 2
    m = randomize_(ACmixWindowAttention(dim, heads, window, shift, channels_last=True).double())
    hp, wp = -(-h // window) * window, -(-w // window) * window
    x = _randn(2, h, w, dim)
    for which in BOTH:
        _set_path(m, which)
        assert_close(m(x), m(F.pad(x, (0, 0, 0, wp - w, 0, hp - h)))[:, :h, :w])


# --- gradcheck -------------------------------------------------------------------------------------

GRADCHECK = {
    "ACmix": functools.partial(ACmix, 3, 4, 3, 2),
    "ACmix-strided": functools.partial(ACmix, 3, 4, 3, 2, 3, 2),
    "ACmixWindowAttention": functools.partial(ACmixWindowAttention, 4, 2, 3),
    "ACmixWindowAttention-shifted": functools.partial(ACmixWindowAttention, 4, 2, 3, 1),
}


def _gradcheck_module(name: str, which: str):
    torch.manual_seed(sum(map(ord, name)))
    m = _set_path(randomize_(GRADCHECK[name]().double()), which)
    if name.startswith("ACmix-") or name == "ACmix":
        m.set_halo_tile(2)
    return m


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_input(name, which):
    m = _gradcheck_module(name, which)
    x = torch.randn(2, m.source.channels, 4, 5, dtype=F64, requires_grad=True)
    # fast_mode (random projections of the Jacobian): the full input Jacobian of these composites
    # takes hundreds of forward passes.
    assert gradcheck(m, (x,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_parameters(name, which):
    m = _gradcheck_module(name, which)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in m.named_parameters())
    x = torch.randn(2, m.source.channels, 5, 4, dtype=F64)

    def f(*ps):
        return functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, params, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: ACmix(16, 10, head=4), ValueError, r"out_planes=10 must be divisible by head=4"),
        (lambda: ACmix(16, 16, kernel_att=6), ValueError, r"kernel_att"),
        (lambda: ACmix(16, 16, kernel_conv=4), ValueError, r"kernel_conv"),
        (lambda: ACmix(16, 16, dilation=2), ValueError, r"dilation must be 1"),
        (lambda: ACmix(16, 16, stride=0), ValueError, r"stride"),
        (lambda: ACmix(16.0, 16), TypeError, r"in_planes"),
        (lambda: ACmix(16, 16, head=0), ValueError, r"head"),
        (lambda: ACmix(16, 16, path="window_sdpa"), ValueError, r"path"),
        (lambda: ACmixWindowAttention(10, 3, 7), ValueError, r"dim=10 must be divisible by num_heads=3"),
        (lambda: ACmixWindowAttention(8, 2, 3, shift_size=3), ValueError, r"shift"),
        (lambda: ACmixWindowAttention(8, 2, 0), ValueError, r"size"),
        (lambda: ACmixWindowAttention(8, 2, 3, path="halo_sdpa"), ValueError, r"path"),
    ],
)
def test_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("which", BOTH)
def test_input_too_small_for_reflection(which):
    m = _set_path(ACmix(4, 4, kernel_att=7, head=2), which)
    m(torch.randn(1, 4, 4, 9))  # 3 < 4: fits
    with pytest.raises(ValueError, match=r"kernel_att=7.*larger than 3.*3x9"):
        m(torch.randn(1, 4, 3, 9))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"channels"):
        ACmix(4, 4, 3, 2)(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match=r"4-D"):
        ACmix(4, 4, 3, 2)(torch.randn(4, 6, 6))
    with pytest.raises(ValueError, match=r"channels_last=True"):
        ACmixWindowAttention(4, 2, 3, channels_last=True)(torch.randn(1, 4, 6, 6))
