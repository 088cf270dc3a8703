"""FLOP counting: every execution path of every preset against closed-form MAC counts written out
here, the handles fvcore lacks (SDPA, exact einsum and matmul, multiply-accumulate written as
``addcmul`` or ``mul`` then ``sum``), whole timm models against their published FLOPs, fused
attention on and off, the bookkeeping (eval mode, restored training flags, module attribution,
unsupported operators still reported), and a cross-check against torch's own
``FlopCounterMode`` (halved) on every path, with the two places where the conventions differ
(padded windows, halo key blocks) checked as such."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
import torch.nn.functional as F
import torch.utils.flop_counter
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unifiedops import (
    LKA,
    Aggregation,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    QKAttention,
    Sliding,
    WindowAttention,
)
from unifiedops.acmix import ACmix, ACmixWindowAttention
from unifiedops.dcd import DCDConv2d
from unifiedops.flops import FREE_OPS, count_flops, einsum_macs, flop_breakdown, flop_counter
from unifiedops.mixers import MixingAttention, UniFormerGlobalMHRA, UniFormerLocalMHRA
from unifiedops.mixture import CondConv, DYConv
from unifiedops.odconv import ODConv2d
from unifiedops.xvolution import XVolution

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))
B, C, H, W = 2, 16, 10, 10


def _x(shape=(B, C, H, W)) -> torch.Tensor:
    return torch.randn(shape)


def _attention(heads: int, queries: int, keys: int, head_dim: int, batch: int = B) -> int:
    """``q k^T`` plus ``attn v``: one MAC per (query, key, channel) in each."""
    return batch * heads * queries * keys * 2 * head_dim


def _qkv_and_proj(channels: int, positions: int, batch: int = B) -> int:
    return batch * positions * channels * 3 * channels + batch * positions * channels * channels


def _every_path(module: Aggregation, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Breakdown by operator on every applicable path."""
    out = {}
    for path in module.paths:
        module.path = path
        out[path] = flop_breakdown(module, x)
    return out


def _aggregation_part(breakdown: dict[str, float]) -> float:
    """The MACs of the aggregation itself, whichever operator a path uses for it."""
    keys = ("conv", "addcmul", "mul_sum", "einsum", "scaled_dot_product_attention")
    return sum(breakdown.get(k, 0.0) for k in keys)


# --- presets on every path against the closed form -----------------------------------------------------

DW_CONV = B * C * H * W * 9  # one MAC per (output element, tap)
PRESETS = [
    pytest.param(lambda: DWConv(C, 3), DW_CONV, id="DWConv"),
    # predictor: GAP -> 1x1 C->C/4 -> BN(C/4) (2 per element in eval) -> 1x1 C/4->C*9
    pytest.param(
        lambda: DynamicDWConv(C, 3), DW_CONV + B * C * C // 4 + B * C // 4 * 2 + B * C // 4 * C * 9, id="DynamicDWConv"
    ),
    # predictor at every position: 1x1 C->C/4, BN, 1x1 C/4 -> 9*G
    pytest.param(
        lambda: InhomogeneousDWConv(C, 3, groups=4),
        DW_CONV + B * H * W * (C * C // 4 + C // 4 * 2 + C // 4 * 9 * 4),
        id="InhomogeneousDWConv",
    ),
    pytest.param(
        lambda: WindowAttention(C, num_heads=2, window_size=5, shift_size=2),
        _qkv_and_proj(C, H * W) + _attention(2, H * W, 25, C // 2),
        id="WindowAttention",
    ),
    pytest.param(
        lambda: NeighborhoodAttention(C, num_heads=2, kernel_size=3),
        _qkv_and_proj(C, H * W) + _attention(2, H * W, 9, C // 2),
        id="NeighborhoodAttention",
    ),
    pytest.param(
        lambda: NeighborhoodAttention(C, num_heads=2, kernel_size=3, dilation=2, border="mask"),
        _qkv_and_proj(C, H * W) + _attention(2, H * W, 9, C // 2),
        id="NeighborhoodAttention-dilated-mask",
    ),
    pytest.param(
        lambda: GlobalAttention(C, num_heads=4),
        _qkv_and_proj(C, H * W) + _attention(4, H * W, H * W, C // 4),
        id="GlobalAttention",
    ),
    # conv0 5x5 DW, conv_spatial 7x7 DW (dilation 3), conv1 1x1 dense, then one multiply per element
    pytest.param(lambda: LKA(C), B * H * W * C * (25 + 49 + C + 1), id="LKA"),
]


@pytest.mark.parametrize("make,expected", PRESETS)
def test_every_path_counts_the_closed_form(make, expected):
    module = make()
    counts = _every_path(module, _x())
    assert len(counts) >= 2
    for path, breakdown in counts.items():
        assert sum(breakdown.values()) == expected, (path, breakdown)


def test_each_path_counts_the_aggregation_with_its_own_operator():
    """The closed form is reached through a different handle on each path, so each handle is
    exercised (a missing one would make a path count 0 for the aggregation)."""
    seen = {}
    for module in (DWConv(C, 3), InhomogeneousDWConv(C, 3, groups=4), NeighborhoodAttention(C, 2, 3)):
        for path, breakdown in _every_path(module, _x()).items():
            seen[type(module).__name__, path] = {k for k in breakdown if k not in ("linear", "batch_norm")}
    assert seen[("DWConv", "conv")] == {"conv"}
    assert seen[("DWConv", "reference")] == {"mul_sum"}
    assert seen[("InhomogeneousDWConv", "shifted_sum")] == {"conv", "addcmul"}
    assert seen[("NeighborhoodAttention", "halo_sdpa")] == {"scaled_dot_product_attention"}
    assert seen[("NeighborhoodAttention", "reference")] == {"einsum", "mul_sum"}


@st.composite
def _sliding_attention(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.integers(1, 2))
    stride = 1 if dilation > 1 else draw(st.integers(1, 2))
    border = draw(st.sampled_from(["zeros", "clamp", "mask"]))
    heads = draw(st.sampled_from([1, 2]))
    size = (draw(st.integers(2, 9)), draw(st.integers(2, 9)))
    return k, dilation, stride, border, heads, size


@settings(max_examples=max(1, EXAMPLES // 25))
@given(_sliding_attention())
def test_sliding_attention_counts_k_squared_keys_per_query(config):
    """halo_sdpa attends over key blocks larger than the neighbourhood; the count is still the
    operator's ``k*k`` keys per output position, equal to the literal reference's."""
    k, dilation, stride, border, heads, (h, w) = config
    torch.manual_seed(0)
    module = Aggregation(Sliding(k, dilation, border, stride), QKAttention(8, heads=heads))
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    expected = _attention(heads, ho * wo, k * k, 8 // heads, batch=1)
    for path, breakdown in _every_path(module, torch.randn(1, 8, h, w)).items():
        assert _aggregation_part(breakdown) == expected, (path, breakdown)


def test_window_attention_counts_real_queries_only():
    """On a 10x10 input, 4x4 windows pad to 12x12; the count covers the 100 real queries."""
    module = WindowAttention(C, num_heads=2, window_size=4, shift_size=2)
    for path, breakdown in _every_path(module, _x()).items():
        assert _aggregation_part(breakdown) == _attention(2, H * W, 16, C // 2), path


def test_strided_dense_kernel_and_batched_conv():
    torch.manual_seed(0)
    dyn = DynamicDWConv(C, 5)
    x = _x()
    assert flop_breakdown(dyn, x)["conv"] == B * C * H * W * 25
    strided = DWConv(C, 3)
    strided.neighbourhood = Sliding(3, stride=2)
    strided.path = "conv"
    assert flop_breakdown(strided, x)["conv"] == B * C * 5 * 5 * 9


# --- handles -------------------------------------------------------------------------------------------


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_sdpa_is_counted_with_broadcast_batch_and_mask():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(1, 3, 7, 8), torch.randn(1, 3, 7, 4)
    mask = torch.zeros(5, 7)
    model = _Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    expected = 2 * 3 * 5 * 7 * (8 + 4)
    assert count_flops(model, (q, k, v)) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        plain = FlopCountAnalysis(model, (q, k, v)).unsupported_ops_warnings(False)
        assert plain.total() == 0  # what the handle fixes


def test_timm_attention_counts_the_same_fused_or_not():
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10
    )
    attentions = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    assert attentions
    counts = {}
    for fused in (True, False):
        for m in attentions:
            m.fused_attn = fused
        counts[fused] = flop_breakdown(vit, input_size=(1, 3, 32, 32))
    n = 16 + 1  # patches + class token
    assert counts[True]["scaled_dot_product_attention"] == 2 * _attention(2, n, n, 32, batch=1)
    assert counts[False]["matmul"] == counts[True]["scaled_dot_product_attention"]
    assert sum(counts[True].values()) == sum(counts[False].values())


def test_einsum_is_exact():
    """fvcore parses numpy's printed estimate, rounded to 4 significant digits (4917000.0)."""
    q, k = torch.randn(1, 4, 196, 32), torch.randn(1, 4, 196, 32)
    model = _Lambda(lambda q, k: torch.einsum("bhnd,bhmd->bhnm", q, k))
    assert count_flops(model, (q, k)) == 4 * 196 * 196 * 32 == 4_917_248


@pytest.mark.parametrize(
    "equation,shapes,expected",
    [
        ("ij,jk->ik", [(3, 4), (4, 5)], 60),
        ("ij,jk", [(3, 4), (4, 5)], 60),
        ("bij,bjk->bik", [(2, 3, 4), (1, 4, 5)], 120),
        ("...ij,...jk->...ik", [(2, 6, 3, 4), (4, 5)], 720),
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], 2 * 3 * 4 + 2 * 4 * 5),
        ("ii->i", [(3, 3)], 0),
    ],
)
def test_einsum_macs(equation, shapes, expected):
    assert einsum_macs(equation, shapes) == expected


@settings(max_examples=max(1, EXAMPLES // 10))
@given(
    st.sampled_from(["bhnd,bhmd->bhnm", "bgipk,bgoipk->bgop", "bpgd,bpkgd->bgpk", "ij,jk->ik"]),
    st.lists(st.integers(2, 4), min_size=6, max_size=6),
)
def test_einsum_macs_matches_torch_flop_counter(equation, sizes):
    """torch's own counter (2 flops per MAC, einsum lowered to bmm) as an independent oracle."""
    letters = sorted(set(equation) - set(",->"))
    size = dict(zip(letters, sizes, strict=False))
    operands = [torch.randn([size[c] for c in op]) for op in equation.split("->")[0].split(",")]
    with torch.utils.flop_counter.FlopCounterMode(display=False) as mode:
        torch.einsum(equation, *operands)
    assert 2 * einsum_macs(equation, [t.shape for t in operands]) == mode.get_total_flops()


def test_matmul_broadcasts_either_operand():
    a, b = torch.randn(7, 5), torch.randn(3, 5, 2)
    assert count_flops(_Lambda(torch.matmul), (a, b)) == 3 * 7 * 5 * 2
    assert count_flops(_Lambda(torch.matmul), (torch.randn(5), b)) == 3 * 5 * 2
    c = torch.randn(3, 7, 2)
    assert count_flops(_Lambda(torch.baddbmm), (c, torch.randn(3, 7, 5), b)) == 3 * 7 * 5 * 2


def test_mul_then_sum_counts_as_a_contraction():
    """Local aggregation written with unfold, as many official codes do: 1 MAC per tap."""
    x, w = torch.randn(1, 32, 14, 14), torch.randn(1, 1, 9, 196)

    def local(x, w):
        cols = F.unfold(x, 3, padding=1).view(1, 32, 9, 196)
        return (cols * w).sum(2)

    assert count_flops(_Lambda(local), (x, w)) == 32 * 9 * 196 == 56_448
    assert count_flops(_Lambda(lambda x: (x * 2.0).sum()), (x,)) == 0  # a scaled sum
    assert count_flops(_Lambda(lambda i: (i * i).sum()), (torch.arange(6),)) == 0  # integer tables
    assert count_flops(_Lambda(lambda x, w: x * w), (x, x)) == 0  # element-wise product alone


# --- whole models ---------------------------------------------------------------------------------------


def test_convnext_tiny_matches_published_flops():
    torch.manual_seed(0)
    assert count_flops(timm.create_model("convnext_tiny")) == pytest.approx(4.47e9, rel=0.005)


def test_swin_tiny_matches_published_flops_with_fused_attention_on_and_off():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224")
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attentions
    totals = set()
    for fused in (True, False):
        for m in attentions:
            m.fused_attn = fused
        totals.add(count_flops(model))
    assert totals == {4_509_194_496.0}  # fvcore's count with the matmul attention
    assert totals.pop() == pytest.approx(4.5e9, rel=0.02)


# --- bookkeeping ---------------------------------------------------------------------------------------


def test_runs_in_eval_mode_and_restores_training_flags():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.Conv2d(8, 8, 1))
    model.train()
    model[2].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    # eval-mode batch norm with affine: 2 per element (fvcore); training mode would count more
    expected = 8 * 27 * 36 + 2 * 8 * 36 + 8 * 8 * 36
    assert count_flops(model, input_size=(1, 3, 8, 8)) == expected
    assert [m.training for m in model.modules()] == before
    assert torch.is_grad_enabled()


def test_shape_dependent_control_flow_follows_the_traced_branch():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.small, self.large = DWConv(4, 3), DWConv(4, 5)

        def forward(self, x):
            return self.small(x) if x.shape[-1] < 8 else self.large(x)

    model = Branchy()
    assert count_flops(model, input_size=(1, 4, 6, 6)) == 4 * 36 * 9
    assert count_flops(model, input_size=(1, 4, 8, 8)) == 4 * 64 * 25


def test_composite_calling_run_directly_is_attributed_and_corrected():
    """ACmix-style: project once, then run the aggregation with ``projected=``."""

    class Composite(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = NeighborhoodAttention(C, num_heads=2, kernel_size=3, border="zeros")

        def forward(self, x):
            qkv = self.inner.source.project(self.inner, x.permute(0, 2, 3, 1))
            return self.inner._run(self.inner, x, projected=qkv)

    counter = flop_counter(nn.Sequential(Composite(), Composite()), _x())
    sdpa = _attention(2, H * W, 9, C // 2)
    by_module = counter.by_module_and_operator()
    for name in ("0", "0.inner", "1.inner"):
        assert by_module[name]["scaled_dot_product_attention"] == sdpa, name
    assert counter.by_operator()["scaled_dot_product_attention"] == 2 * sdpa
    assert counter.by_module()[""] == counter.total()


def test_unsupported_arithmetic_stays_reported(caplog):
    model = _Lambda(lambda x: torch.cdist(F.gelu(x * 2).softmax(-1), x))
    counter = flop_counter(model, torch.randn(2, 5, 3))
    with caplog.at_level(logging.WARNING):
        assert dict(counter.unsupported_ops()) == {"aten::cdist": 1}  # runs the analysis itself
    assert counter.total() == 0
    assert "aten::cdist" in caplog.text
    assert {"aten::mul", "aten::gelu", "aten::softmax", "aten::pad", "aten::roll"} <= FREE_OPS


def test_breakdown_by_module_and_default_input():
    model = nn.Sequential(DWConv(3, 3), nn.Conv2d(3, 4, 1))
    by_module = flop_breakdown(model, by="module")
    assert by_module == {"": 3 * 224 * 224 * (9 + 4), "0": 3 * 224 * 224 * 9, "1": 3 * 224 * 224 * 4}


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: count_flops("model"), TypeError),
        (lambda: count_flops(DWConv(4, 3), [torch.randn(1, 4, 5, 5)]), TypeError),
        (lambda: count_flops(DWConv(4, 3), input_size=(1, 4, 0, 5)), ValueError),
        (lambda: count_flops(DWConv(4, 3), input_size=[1, 4, 5, 5]), ValueError),
        (lambda: flop_breakdown(DWConv(4, 3), input_size=(1, 4, 5, 5), by="layer"), ValueError),
        (lambda: einsum_macs("ij,jk->ik", [(2, 3)]), ValueError),
    ],
)
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()


# --- cross-check against torch.utils.flop_counter.FlopCounterMode ---------------------------------------

UNSEEN_BY_TORCH = frozenset(
    {"batch_norm", "group_norm", "layer_norm", "instance_norm", "adaptive_avg_pool2d", "addcmul", "mul_sum"}
)
"""Our operator keys that ``FlopCounterMode`` counts 0: norms and pooling (it counts matrix products,
convolutions and attention only), and the multiply-accumulates written as element-wise operations
(``addcmul`` on ``shifted_sum``, ``mul`` then ``sum`` on ``reference``), which it cannot tell from
element-wise arithmetic."""

FAST_PATHS = ("conv", "batched_conv", "window_sdpa", "halo_sdpa", "global_sdpa")


def _torch_macs(module: nn.Module, x: torch.Tensor, only: str = "") -> int:
    """Half of ``FlopCounterMode``'s count (it counts a multiply-add as 2 flops); with ``only``,
    just the operators whose name contains it."""
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as mode:
        module(x)
    flops = sum(v for op, v in mode.get_flop_counts().get("Global", {}).items() if only in str(op))
    assert flops % 2 == 0
    return flops // 2


def _seen_by_torch(breakdown: dict[str, float]) -> float:
    return sum(v for op, v in breakdown.items() if op not in UNSEEN_BY_TORCH)


def _all_paths(module: nn.Module) -> list[str]:
    return sorted({p for m in module.modules() if isinstance(m, Aggregation) for p in m.paths})


def _set_path(module: nn.Module, path: str) -> None:
    """Every aggregation of ``module`` that can run ``path`` runs it; the others keep theirs."""
    for m in module.modules():
        if isinstance(m, Aggregation) and path in m.paths:
            m.path = path


@dataclass(frozen=True)
class _Case:
    """A module of 16 channels and the maps on which our count and torch's see the same arithmetic.

    Attributes:
        make: Builds the module.
        side: 0: any map; otherwise each side a multiple of ``side`` (a window: ``window_sdpa``
            computes padded windows otherwise).
        exact: Non-zero: the map must be ``exact x exact`` (``halo_sdpa``: its key blocks are then
            the whole map, which is also every query's neighbourhood).
        fully_seen: No norm and no element-wise multiply-accumulate on the fast paths, so there
            the whole count must equal torch's.
    """

    make: Callable[[], nn.Module]
    side: int = 0
    exact: int = 0
    fully_seen: bool = True


CROSS_CHECKED = {
    "DWConv": _Case(lambda: DWConv(16, 3)),
    "DynamicDWConv": _Case(lambda: DynamicDWConv(16, 3), fully_seen=False),
    "InhomogeneousDWConv": _Case(lambda: InhomogeneousDWConv(16, 3, groups=4), fully_seen=False),
    "LKA": _Case(lambda: LKA(16), fully_seen=False),
    "GlobalAttention": _Case(lambda: GlobalAttention(16, num_heads=2)),
    "UniFormerGlobalMHRA": _Case(lambda: UniFormerGlobalMHRA(16, 8)),
    "UniFormerLocalMHRA": _Case(lambda: UniFormerLocalMHRA(16)),
    "WindowAttention": _Case(lambda: WindowAttention(16, num_heads=2, window_size=4, shift_size=2), side=4),
    "ACmixWindowAttention": _Case(lambda: ACmixWindowAttention(16, 2, 4, 2), side=4),
    "MixingAttention": _Case(lambda: MixingAttention(16, 2, 4), side=4, fully_seen=False),
    "NeighborhoodAttention": _Case(lambda: NeighborhoodAttention(16, 2, 3), exact=3),
    "NeighborhoodAttention-k5-nobias": _Case(lambda: NeighborhoodAttention(16, 2, 5, rel_pos_bias=False), exact=5),
    "NeighborhoodAttention-dilated-mask": _Case(
        lambda: NeighborhoodAttention(16, 2, 3, dilation=2, border="mask"), exact=6
    ),
    "XVolution": _Case(lambda: XVolution(16, 16), fully_seen=False),
    "CondConv": _Case(lambda: CondConv(16, 16, 3, num_experts=4)),
    "DYConv": _Case(lambda: DYConv(16, 16, 3, num_kernels=4)),
    "ODConv2d": _Case(lambda: ODConv2d(16, 16, 3, kernel_num=4), fully_seen=False),
    "DCDConv2d": _Case(lambda: DCDConv2d(16, 16, 3, pool=2), fully_seen=False),
}


@st.composite
def _map(draw, case: _Case):
    batch = draw(st.integers(1, 2))
    if case.exact:
        h = w = case.exact
    elif case.side:
        h, w = (case.side * draw(st.integers(1, 3)) for _ in range(2))
    else:
        h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    return batch, h, w


@pytest.mark.parametrize("name", list(CROSS_CHECKED))
@settings(max_examples=max(1, EXAMPLES // 25))
@given(data=st.data())
def test_torch_flop_counter_agrees_on_what_it_sees(name, data):
    """On every path, our count less what ``FlopCounterMode`` cannot see (``UNSEEN_BY_TORCH``) is
    exactly half its count; on the fast paths of modules without norms, our whole count is."""
    case = CROSS_CHECKED[name]
    batch, h, w = data.draw(_map(case), label="batch, height, width")
    torch.manual_seed(0)
    module = case.make().eval()
    x = torch.randn(batch, 16, h, w)
    paths = _all_paths(module)
    assert len(paths) >= 2
    for path in paths:
        _set_path(module, path)
        ours = flop_breakdown(module, x)
        theirs = _torch_macs(module, x)
        assert _seen_by_torch(ours) == theirs, (path, ours, theirs)
        if path in FAST_PATHS:
            assert theirs > 0, path
            if case.fully_seen:
                assert sum(ours.values()) == theirs, (path, ours)


def test_torch_counts_the_padded_windows():
    """``window_sdpa`` pads a 10x7 map to 12x8 for 4x4 windows and attends over the padding; we
    count the real queries (the operator's definition), torch the computed ones. The projections
    agree: both count them on the padded map."""
    module = WindowAttention(16, num_heads=2, window_size=4, shift_size=2).eval()
    x = torch.randn(2, 16, 10, 7)
    ours = flop_breakdown(module, x)
    assert ours["scaled_dot_product_attention"] == _attention(2, 10 * 7, 16, 8)
    assert _torch_macs(module, x, only="scaled_dot_product") == _attention(2, 12 * 8, 16, 8)
    assert _torch_macs(module, x) - _torch_macs(module, x, only="scaled_dot_product") == ours["linear"]


def _halo_keys(length: int, k: int) -> int:
    """Query-key pairs ``halo_sdpa`` computes along one axis when the border pads (zeros, reflect):
    ``ceil(L / k)`` query tiles of ``k`` (the last one filled up), each over ``2k - 1`` keys."""
    return math.ceil(length / k) * k * (2 * k - 1)


@settings(max_examples=max(1, EXAMPLES // 10))
@given(
    st.sampled_from([3, 5]),
    st.sampled_from(["zeros", "reflect", "clamp", "mask"]),
    st.integers(0, 7),
    st.integers(0, 7),
    st.integers(1, 2),
)
def test_torch_counts_the_key_blocks_of_halo_sdpa(k, border, extra_h, extra_w, heads):
    """``halo_sdpa`` attends each tile of ``k x k`` queries to a block of keys holding all their
    neighbourhoods, masked down to each query's ``k * k``; we count the ``k * k`` (the definition,
    as for a padded convolution), torch the whole blocks. With a padded border a block is
    ``(2k - 1)^2``; with clamp or mask it is cut at the border, and equals the neighbourhood only
    on a ``k x k`` map. Everything else (the projections) agrees."""
    h, w = k + extra_h, k + extra_w
    if border == "reflect":
        h, w = max(h, k), max(w, k)  # reflection needs the map longer than the padding: k > k // 2
    module = Aggregation(Sliding(k, border=border), QKAttention(16, heads=heads)).eval()
    x = torch.randn(1, 16, h, w)
    ours = flop_breakdown(module, x)
    head_dim = 16 // heads
    assert ours["scaled_dot_product_attention"] == _attention(heads, h * w, k * k, head_dim, batch=1)
    sdpa = _torch_macs(module, x, only="scaled_dot_product")
    assert _torch_macs(module, x) - sdpa == ours["linear"]
    if border in ("zeros", "reflect"):
        assert sdpa == heads * _halo_keys(h, k) * _halo_keys(w, k) * 2 * head_dim
    elif h == w == k:
        assert sdpa == ours["scaled_dot_product_attention"]
    else:
        assert sdpa > ours["scaled_dot_product_attention"]


def test_acmix_attention_counts_its_definition_not_its_reflected_key_blocks():
    """ACmix pads keys by reflection, so its halo blocks always exceed the kernel; its reference
    path is what torch can check (see ``test_torch_flop_counter_agrees_on_what_it_sees``)."""
    torch.manual_seed(0)
    module = ACmix(16, 16, kernel_att=3, head=2).eval()
    x = torch.randn(2, 16, 8, 8)
    ours = {}
    for path in ("reference", "halo_sdpa"):
        _set_path(module, path)
        ours[path] = flop_breakdown(module, x)
    _set_path(module, "reference")
    assert _seen_by_torch(ours["reference"]) == _torch_macs(module, x)
    _set_path(module, "halo_sdpa")
    assert ours["halo_sdpa"]["scaled_dot_product_attention"] == _attention(2, 64, 9, 8)
    assert _torch_macs(module, x, only="scaled_dot_product") == 2 * 2 * _halo_keys(8, 3) ** 2 * 2 * 8
