"""The identities the papers state, checked against independent implementations and oracles:
nn.Conv2d, timm's Swin attention, NATTEN's clamp rule, DWNet's official dynamic convolutions,
and the collapse of window / neighbourhood attention to global attention."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
from torch import nn

from helpers import F64, assert_close
from unifiedops import (
    Aggregation,
    DWConv,
    DynamicDWConv,
    Global,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    QKAttention,
    Sliding,
    Window,
    WindowAttention,
)
from unifiedops.testing import randomize_

BOTH = ("fast", "reference")


def _set_path(module, which: str):
    module.path = "auto" if which == "fast" else "reference"
    return module


def _randn(*shape):
    return torch.randn(*shape, dtype=F64)


# --- DWConv == nn.Conv2d(groups=C) ----------------------------------------------------------------


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,d", [(1, 1), (3, 1), (3, 2), (5, 3), (7, 1), (7, 2)])
def test_dwconv_equals_depthwise_conv2d(k, d, bias, which):
    torch.manual_seed(k * 10 + d)
    c = 5
    conv = nn.Conv2d(c, c, k, padding=d * (k // 2), dilation=d, groups=c, bias=bias).double()
    randomize_(conv)
    dw = DWConv(c, k, d, bias).double()
    dw.load_state_dict(conv.state_dict(), strict=True)  # parameter names and shapes match
    _set_path(dw, which)
    for h, w in [(1, 1), (2, 9), (k, k + 1), (11, 6)]:
        x = _randn(2, c, h, w).requires_grad_(True)
        y, y_ref = dw(x), conv(x)
        assert_close(y, y_ref)
        g = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, dw.weight), g)
        gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, conv.weight), g)
        assert_close(gx, gx_ref)
        assert_close(gw, gw_ref)


# --- DynamicDWConv: a constant predictor is a DWConv; and the official per-sample conv ------------


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_dynamic_dwconv_with_constant_predictor_equals_dwconv(k, which):
    torch.manual_seed(k)
    c = 8
    dyn = randomize_(DynamicDWConv(c, k).double()).eval()
    kernel, bias = _randn(c, 1, k, k), _randn(c)
    with torch.no_grad():
        # conv2's output no longer depends on its input: every sample gets `kernel`.
        dyn.conv2.weight.zero_()
        dyn.conv2.bias.copy_(kernel.flatten())
        dyn.bias.copy_(bias)
    dw = DWConv(c, k).double()
    dw.load_state_dict({"weight": kernel, "bias": bias}, strict=True)
    _set_path(dyn, which)
    x = _randn(3, c, 7, 6)
    assert_close(dyn(x), dw(x))
    dyn.train()  # batch statistics change conv1/bn's output, but conv2 ignores it
    assert_close(dyn(x), dw(x))


class OfficialDynamicDWConv(nn.Module):
    """DWNet's ``DynamicDWConv`` (models/dwnet.py), re-implemented from its definition: its own
    ``conv1`` (1x1, no bias), default ``BatchNorm2d``, ReLU, ``conv2`` (1x1 -> C*k*k) and a zero-init
    ``bias``; the forward runs one depth-wise ``F.conv2d`` per sample with that sample's kernel."""

    def __init__(self, dim: int, kernel_size: int, reduction: int = 4):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.conv1 = nn.Conv2d(dim, dim // reduction, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim // reduction)
        self.conv2 = nn.Conv2d(dim // reduction, dim * kernel_size * kernel_size, 1)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        k = self.kernel_size
        weight = self.conv2(F.relu(self.bn(self.conv1(F.adaptive_avg_pool2d(x, (1, 1))))))
        weight = weight.view(b, c, 1, k, k)
        return torch.cat(
            [F.conv2d(x[i : i + 1], weight[i], self.bias, padding=(k - 1) // 2, groups=c) for i in range(b)]
        )


class OfficialIDynamicDWConv(nn.Module):
    """DWNet's ``IDynamicDWConv`` (models/idynamic.py), re-implemented from its definition, with a
    slow loop in place of its CUDA kernel: ``out[b, c, h, w] = sum_{kh, kw} weight[b, c // (C/G), kh,
    kw, h, w] * x[b, c, h - pad + kh, w - pad + kw]`` (zero outside), where ``weight =
    conv2(conv1(x)).view(B, G, k, k, H, W)``. Note the official argument is ``group_channels``
    (channels per group); ``G = channels // group_channels``."""

    def __init__(self, channels: int, kernel_size: int, group_channels: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.groups = channels // group_channels
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels // 4, 1), nn.BatchNorm2d(channels // 4), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(channels // 4, kernel_size**2 * self.groups, 1))

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k = self.kernel_size
        return self.conv2(self.conv1(x)).view(b, self.groups, k, k, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, pad = self.kernel_size, (self.kernel_size - 1) // 2
        xs, ws = x.tolist(), self.kernel(x).tolist()
        out = torch.zeros_like(x)
        per_group = c // self.groups
        for bb, cc, hh, ww in itertools.product(range(b), range(c), range(h), range(w)):
            acc = 0.0
            for kh, kw in itertools.product(range(k), range(k)):
                ih, iw = hh - pad + kh, ww - pad + kw
                if 0 <= ih < h and 0 <= iw < w:
                    acc += ws[bb][cc // per_group][kh][kw][hh][ww] * xs[bb][cc][ih][iw]
            out[bb, cc, hh, ww] = acc
        return out


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_dynamic_dwconv_equals_official(k, train, which):
    torch.manual_seed(k + 100 * train)
    c = 8
    module = randomize_(DynamicDWConv(c, k).double()).train(train)
    official = OfficialDynamicDWConv(c, k).double().train(train)
    official.load_state_dict(module.state_dict(), strict=True)  # DWNet checkpoints load both ways
    module.load_state_dict(official.state_dict(), strict=True)
    _set_path(module, which)
    x = _randn(3, c, 6, 9)
    assert_close(module(x), official(x))


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("k,groups,h,w", [(3, 2, 5, 6), (5, 4, 4, 3), (3, 1, 2, 2), (7, 8, 3, 5)])
def test_inhomogeneous_dwconv_equals_official_loop(k, groups, h, w, which):
    torch.manual_seed(k * groups)
    c = 8
    module = randomize_(InhomogeneousDWConv(c, k, groups=groups).double()).eval()
    official = OfficialIDynamicDWConv(c, k, group_channels=c // groups).double().eval()
    official.load_state_dict(module.state_dict(), strict=True)
    _set_path(module, which)
    x = _randn(2, c, h, w)
    # The module's own kernel is the official (B, G, k, k, H, W) kernel in (B, G, k*k, H, W) form.
    assert_close(module.source.kernel(module, x), official.kernel(x).flatten(2, 3))
    assert_close(module(x), official(x))


def test_inhomogeneous_dwconv_train_mode_equals_official():
    torch.manual_seed(5)
    module = randomize_(InhomogeneousDWConv(8, 3, groups=4).double()).train()
    official = OfficialIDynamicDWConv(8, 3, group_channels=2).double().train()
    official.load_state_dict(module.state_dict(), strict=True)
    x = _randn(2, 8, 4, 3)
    assert_close(module(x), official(x))


# --- window / neighbourhood attention collapse to global attention ------------------------------


def _global_from(source_module: nn.Module, heads: int, c: int, qkv_bias: bool = True) -> GlobalAttention:
    g = GlobalAttention(c, heads, qkv_bias).double()
    state = {n: t for n, t in source_module.state_dict().items() if n.startswith(("qkv.", "proj."))}
    g.load_state_dict(state, strict=True)
    return g


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 3, 4])
def test_window_covering_image_equals_global(size, heads, which):
    torch.manual_seed(size * 7 + heads)
    c = 6
    wa = randomize_(WindowAttention(c, heads, size).double())
    with torch.no_grad():
        wa.relative_position_bias_table.zero_()
    ga = _global_from(wa, heads, c)
    _set_path(wa, which)
    x = _randn(2, c, size, size)
    assert_close(wa(x), ga(x))


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("size,h,w", [(5, 5, 5), (5, 3, 4), (6, 1, 5), (4, 2, 2), (7, 6, 1)])
def test_masked_window_larger_than_image_equals_global(size, h, w, which):
    """With ``border="mask"`` the padding is excluded, so one window over the image is global attention."""
    torch.manual_seed(size * 100 + h * 10 + w)
    c, heads = 6, 2
    win = randomize_(Aggregation(Window(size, border="mask"), QKAttention(c, heads=heads)).double())
    glob = randomize_(Aggregation(Global(), QKAttention(c, heads=heads)).double())
    glob.load_state_dict(win.state_dict(), strict=True)
    _set_path(win, which)
    x = _randn(2, c, h, w)
    assert_close(win(x), glob(x))
    if (h, w) != (size, size):
        # Under the zeros rule the padded positions take part, so it is not global attention.
        win_zeros = Aggregation(Window(size, border="zeros"), QKAttention(c, heads=heads)).double()
        win_zeros.load_state_dict(win.state_dict(), strict=True)
        assert not torch.allclose(win_zeros(x), glob(x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("k,h,w", [(5, 5, 5), (5, 3, 4), (7, 7, 2), (7, 4, 6), (3, 1, 3), (3, 2, 1)])
def test_clamped_neighbourhood_covering_image_equals_global(k, h, w, which):
    torch.manual_seed(k * 100 + h * 10 + w)
    c, heads = 6, 3
    na = randomize_(NeighborhoodAttention(c, heads, k, border="clamp", rel_pos_bias=False).double())
    ga = _global_from(na, heads, c)
    _set_path(na, which)
    x = _randn(2, c, h, w)
    assert_close(na(x), ga(x))


# --- WindowAttention == timm's Swin window attention ------------------------------------------------


def _timm_block(dim, heads, window, shift, resolution, seed):
    torch.manual_seed(seed)
    block = SwinTransformerBlock(
        dim, input_resolution=resolution, num_heads=heads, window_size=window, shift_size=shift
    )
    assert block.window_size == (window, window) and block.shift_size == (shift, shift), "timm resized the window"
    randomize_(block.attn)
    return block.double().eval()


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize(
    "window,shift,h,w",
    [(3, 0, 6, 9), (3, 1, 6, 9), (3, 2, 9, 6), (4, 2, 8, 8), (5, 2, 10, 15), (7, 3, 14, 14), (2, 1, 4, 6)],
)
def test_window_attention_equals_timm_swin(window, shift, h, w, which):
    """timm's SW-MSA (``SwinTransformerBlock._attn``: roll, partition, attention with Swin's mask
    and relative-position bias, reverse, roll back) on sizes that are multiples of the window.

    Only multiples: timm rolls the unpadded map and then pads, while WindowAttention pads and then
    rolls, like Swin's official detection code; the two differ when H or W is not a multiple of the
    window and the shift is non-zero (see the next test for the padded case).
    """
    dim, heads = 6, 2
    block = _timm_block(dim, heads, window, shift, (h, w), seed=window * 10 + shift)
    ours = WindowAttention(dim, heads, window, shift, channels_last=True).double()
    ours.load_state_dict(block.attn.state_dict(), strict=True)
    _set_path(ours, which)
    x = _randn(2, h, w, dim).requires_grad_(True)
    y, y_ref = ours(x), block._attn(x)
    # timm masks with -100 instead of -inf: a 1e-44 relative difference, far below the tolerance.
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0])
    gt = torch.autograd.grad(ours(x), ours.relative_position_bias_table, g)[0]
    gt_ref = torch.autograd.grad(block._attn(x), block.attn.relative_position_bias_table, g)[0]
    assert_close(gt, gt_ref)


@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("window,shift,h,w", [(3, 1, 5, 7), (4, 2, 6, 5), (4, 3, 9, 10), (3, 0, 4, 8)])
def test_window_attention_pads_then_rolls_like_swin_detection(window, shift, h, w, which):
    """Non-multiples, Swin detection order: zero-pad to ``(Hp, Wp)``, then roll, mask over the
    padded map, attend, roll back, crop. timm's block run on the padded map does exactly that."""
    dim, heads = 4, 2
    hp, wp = -(-h // window) * window, -(-w // window) * window
    block = _timm_block(dim, heads, window, shift, (hp, wp), seed=h * w)
    ours = WindowAttention(dim, heads, window, shift, channels_last=True).double()
    ours.load_state_dict(block.attn.state_dict(), strict=True)
    _set_path(ours, which)
    x = _randn(2, h, w, dim)
    expected = block._attn(F.pad(x, (0, 0, 0, wp - w, 0, hp - h)))[:, :h, :w]
    assert_close(ours(x), expected)


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_equals_explicit_timm_pipeline(shift):
    """The same comparison written out with timm's ``window_partition``, ``window_reverse``,
    ``WindowAttention`` and the mask of ``SwinTransformerBlock.get_attn_mask`` (with -inf)."""
    torch.manual_seed(shift)
    dim, heads, ws, h, w = 6, 3, 4, 8, 12
    attn = randomize_(TimmWindowAttention(dim, heads, window_size=ws)).double().eval()
    mask = None
    if shift:
        img = torch.zeros(1, h, w, 1, dtype=F64)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        mw = window_partition(img, (ws, ws)).view(-1, ws * ws)
        diff = mw.unsqueeze(1) - mw.unsqueeze(2)
        mask = torch.zeros_like(diff).masked_fill(diff != 0, float("-inf"))
    x = _randn(2, h, w, dim)
    xs = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
    o = attn(window_partition(xs, (ws, ws)).view(-1, ws * ws, dim), mask=mask)
    o = window_reverse(o.view(-1, ws, ws, dim), (ws, ws), h, w)
    expected = torch.roll(o, (shift, shift), (1, 2)) if shift else o
    ours = WindowAttention(dim, heads, ws, shift, channels_last=True).double()
    ours.load_state_dict(attn.state_dict(), strict=True)
    for which in BOTH:
        _set_path(ours, which)
        assert_close(ours(x), expected)


# --- NATTEN's clamp rule, from its definition -----------------------------------------------------


def _clamp_oracle(i: int, length: int, k: int, d: int) -> list[int]:
    """Positions are split into ``d`` groups by ``i mod d``; within a group of length ``L_g`` the
    ``k`` taps start at ``clamp(i // d - k // 2, 0, L_g - k)``; a group shorter than ``k`` is taken whole."""
    g, ii = i % d, i // d
    group_len = len(range(g, length, d))
    if group_len < k:
        return [g + d * a for a in range(group_len)]
    start = min(max(ii - k // 2, 0), group_len - k)
    return [g + d * (start + a) for a in range(k)]


def _natten_window_start(index: int, length: int, k: int, d: int) -> int:
    """NATTEN's ``get_window_start`` (valid for ``length >= k * d``), transcribed."""
    r = k // 2
    if d <= 1:
        return max(index - r, 0) + (index + r >= length) * (length - index - r - 1)
    ni = index - r * d
    if ni < 0:
        return index % d
    if index + r * d >= length:
        imodd = index % d
        a = (length // d) * d
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * r * d
        return a + imodd - k * d
    return ni


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_clamp_axis_matches_natten_rule(k, d):
    for length in range(1, 31):
        ax = Sliding(k, d, "clamp").axis(length)
        assert ax.pad == (0, 0) and ax.extent == k
        assert ax.index.shape == ax.valid.shape == ax.rel.shape == (length, k)
        for i in range(length):
            taps = _clamp_oracle(i, length, k, d)
            valid = ax.valid[i].tolist()
            # Valid slots come first, then the spare ones of a short group.
            assert valid == [True] * len(taps) + [False] * (k - len(taps)), (length, i)
            assert ax.index[i, : len(taps)].tolist() == taps, (length, i)
            # Relative position: query minus key in units of the dilation.
            assert ax.rel[i, : len(taps)].tolist() == [(i - t) // d for t in taps], (length, i)
            if length >= k * d:
                start = _natten_window_start(i, length, k, d)
                assert taps == [start + d * a for a in range(k)], (length, i)


def test_clamp_axis_small_hand_cases():
    ax = Sliding(3, border="clamp").axis(5)
    assert ax.index.tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert ax.valid.all()
    assert ax.rel.tolist() == [[0, -1, -2], [1, 0, -1], [1, 0, -1], [1, 0, -1], [2, 1, 0]]
    ax = Sliding(5, border="clamp").axis(2)  # shorter than the kernel: the whole axis, spare slots invalid
    assert ax.valid.tolist() == [[True, True, False, False, False]] * 2
    assert ax.index[:, :2].tolist() == [[0, 1], [0, 1]]
    ax = Sliding(3, 2, "clamp").axis(7)  # groups {0,2,4,6} and {1,3,5}
    assert ax.index.tolist() == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]


# --- hand-checked axes: Swin windows with shift, zeros / mask borders -------------------------------


def test_window_axis_without_shift():
    ax = Window(2).axis(3)  # padded to 4; the last window holds position 2 and one padded position
    assert ax.pad == (0, 1) and ax.extent == 2
    assert ax.index.tolist() == [[0, 1], [0, 1], [2, 3]]
    assert ax.valid.all()
    assert ax.rel.tolist() == [[0, -1], [1, 0], [0, -1]]
    ax = Window(2, border="mask").axis(3)
    assert ax.valid.tolist() == [[True, True], [True, True], [True, False]]


def test_window_axis_with_shift_regions():
    # L=6, w=3, s=1: rolled order is 1 2 3 | 4 5 0; Swin's regions split the second window into
    # {4, 5} (region 1) and {0} (region 2, wrapped around from the other border).
    ax = Window(3, shift=1).axis(6)
    assert ax.pad == (0, 0)
    assert ax.index.tolist() == [[4, 5, 0], [1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5, 0], [4, 5, 0]]
    assert ax.valid.tolist() == [
        [False, False, True],
        [True, True, True],
        [True, True, True],
        [True, True, True],
        [True, True, False],
        [True, True, False],
    ]
    assert ax.rel.tolist() == [[2, 1, 0], [0, -1, -2], [1, 0, -1], [2, 1, 0], [0, -1, -2], [1, 0, -1]]
    # L=5, w=3, s=2, padded to 6 then rolled: rolled order 2 3 4 | P 0 1 (P = padded position 5);
    # regions: rolled 0-2 -> 0, rolled 3 -> 1, rolled 4-5 -> 2.
    ax = Window(3, shift=2).axis(5)
    assert ax.pad == (0, 1)
    assert ax.index.tolist() == [[5, 0, 1], [5, 0, 1], [2, 3, 4], [2, 3, 4], [2, 3, 4]]
    assert ax.valid.tolist() == [[False, True, True], [False, True, True], [True] * 3, [True] * 3, [True] * 3]
    # The mask border also hides the padded position (already hidden here by the region rule).
    ax_mask = Window(3, shift=2, border="mask").axis(5)
    assert torch.equal(ax_mask.valid, ax.valid)
    # Docstring example: 7*7 + 4*4 + 3*3 pairs on a 14-long axis with w=7, s=3.
    assert Window(7, shift=3).axis(14).valid.sum().item() == 74


def test_window_axis_mask_hides_padding_in_same_region():
    # L=4, w=3, s=1: padded to 6; rolled order 1 2 3 | P P 0; regions 0,0,0 | 1,1,2.
    zeros, mask = Window(3, shift=1).axis(4), Window(3, shift=1, border="mask").axis(4)
    assert zeros.index.tolist() == [[4, 5, 0], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    assert zeros.valid.tolist() == [[False, False, True], [True] * 3, [True] * 3, [True] * 3]
    assert mask.valid.tolist() == zeros.valid.tolist()
    # Without shift the padded positions share the real position's region: only "mask" hides them.
    zeros, mask = Window(3).axis(4), Window(3, border="mask").axis(4)
    assert zeros.index.tolist() == [[0, 1, 2]] * 3 + [[3, 4, 5]]
    assert zeros.valid.tolist() == [[True] * 3] * 4
    assert mask.valid.tolist() == [[True] * 3] * 3 + [[True, False, False]]


def test_sliding_axis_zeros_and_mask_borders():
    ax = Sliding(3).axis(2)
    assert ax.pad == (1, 1)
    assert ax.index.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert ax.valid.all()
    assert ax.rel.tolist() == [[1, 0, -1], [1, 0, -1]]
    ax = Sliding(3, border="mask").axis(2)
    assert ax.pad == (0, 0)
    assert ax.valid.tolist() == [[False, True, True], [True, True, False]]
    assert torch.where(ax.valid, ax.index, -1).tolist() == [[-1, 0, 1], [0, 1, -1]]
    ax = Sliding(3, 2, "mask").axis(3)
    assert ax.valid.tolist() == [[False, True, True], [False, True, False], [True, True, False]]
    assert torch.where(ax.valid, ax.index, -1).tolist() == [[-1, 0, 2], [-1, 1, -1], [0, 2, -1]]
    ax = Sliding(5, 2).axis(3)
    assert ax.pad == (4, 4)
    assert ax.index.tolist() == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9], [2, 4, 6, 8, 10]]
