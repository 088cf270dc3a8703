"""Every fast path equals the reference path (the literal ``y_i = sum_j w_ij x_ij``) in float64:
output, input gradient and parameter gradients, over random configurations and geometries."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    CASES,
    F64,
    FAST_PATHS,
    Case,
    assert_path_matches_reference,
    batched_conv_cases,
    conv_cases,
    decomposed_cases,
    global_cases,
    halo_cases,
    seeds,
    shifted_sum_cases,
    window_cases,
)
from unifiedops import (
    PATHS,
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
from unifiedops.dcd import DCDConv2d
from unifiedops.paths import Path
from unifiedops.testing import randomize_

# Raise for a deeper search, e.g. UNIFIEDOPS_EXAMPLES=2000.
EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


def _check(case: Case, seed: int, path: str) -> None:
    module, x = case.build(seed)
    assert module.path == path, f"auto path is {module.path!r}, expected {path!r}"
    assert module.paths[0] == path and module.paths[-1] == "reference"
    assert_path_matches_reference(module, x, path)


# --- one property per fast path ---------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(case=conv_cases(), seed=seeds)
def test_conv_matches_reference(case, seed):
    _check(case, seed, "conv")


@settings(max_examples=EXAMPLES // 2)
@given(case=decomposed_cases(), seed=seeds)
def test_decomposed_matches_reference(case, seed):
    _check(case, seed, "decomposed")


@settings(max_examples=EXAMPLES)
@given(case=batched_conv_cases(), seed=seeds)
def test_batched_conv_matches_reference(case, seed):
    _check(case, seed, "batched_conv")


@settings(max_examples=EXAMPLES)
@given(case=shifted_sum_cases(), seed=seeds)
def test_shifted_sum_matches_reference(case, seed):
    _check(case, seed, "shifted_sum")


@settings(max_examples=EXAMPLES)
@given(case=window_cases(), seed=seeds)
def test_window_sdpa_matches_reference(case, seed):
    _check(case, seed, "window_sdpa")


@settings(max_examples=2 * EXAMPLES)
@given(case=halo_cases(), seed=seeds)
def test_halo_sdpa_matches_reference(case, seed):
    _check(case, seed, "halo_sdpa")


@settings(max_examples=EXAMPLES // 2)
@given(case=global_cases(), seed=seeds)
def test_global_sdpa_matches_reference(case, seed):
    _check(case, seed, "global_sdpa")


# --- deterministic grids over the corners hypothesis might miss --------------------------------


@pytest.mark.parametrize("border", ["zeros", "clamp", "mask"])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("tile", [None, 1, 2, 3, 4])
def test_halo_grid(border, dilation, tile):
    """Every border x dilation x tile, on sizes smaller than, equal to and not a multiple of the
    kernel and tile (so several tiles, partial tiles and short dilation groups occur)."""
    # (heights and widths >= 3: dilation > H or W is a known bug, see test_halo_dilation_larger_than_input)
    for k, (h, w) in [(3, (3, 7)), (5, (5, 11)), (7, (4, 13)), (5, (9, 3)), (1, (3, 4))]:
        case = Case(
            functools.partial(Aggregation, Sliding(k, dilation, border), QKAttention(4, heads=2, rel_pos_bias=True)),
            batch=2,
            height=h,
            width=w,
            channels=4,
            halo_tile=tile,
        )
        _check(case, 1000 * k + h, "halo_sdpa")


@pytest.mark.parametrize("border", ["zeros", "mask"])
@pytest.mark.parametrize("size,shift", [(1, 0), (2, 1), (3, 0), (3, 1), (3, 2), (4, 3), (5, 2)])
def test_window_grid(border, size, shift):
    """Every shift of small windows, on image sizes below, at and not a multiple of the window."""
    for h, w in [(1, 1), (2, 5), (size, size), (size + 1, 2 * size), (7, 3)]:
        case = Case(
            functools.partial(Aggregation, Window(size, shift, border), QKAttention(6, heads=3, rel_pos_bias=True)),
            batch=2,
            height=h,
            width=w,
            channels=6,
        )
        _check(case, 100 * h + w, "window_sdpa")


@pytest.mark.parametrize(
    "make,path",
    [
        # grouped static kernel (G < C) on a sliding window and on a point
        (functools.partial(Aggregation, Sliding(3, 2, "mask"), StaticKernel(6, groups=2)), "conv"),
        (functools.partial(Aggregation, Point(), StaticKernel(6, groups=3, bias=False)), "conv"),
        # per-sample kernel on a point (a per-sample channel gate) and grouped on a window
        (functools.partial(Aggregation, Point(), SampleKernel(8, reduction=2)), "batched_conv"),
        (functools.partial(Aggregation, Sliding(5, 3, "mask"), SampleKernel(8, groups=2, reduction=4)), "batched_conv"),
        # per-position kernel with dilation, and on a point
        (functools.partial(Aggregation, Sliding(3, 3), PositionKernel(6, groups=3, reduction=2)), "shifted_sum"),
        (functools.partial(Aggregation, Point(), PositionKernel(4, groups=2, reduction=1)), "shifted_sum"),
        # attention without relative-position bias, custom scale, masked window border
        (functools.partial(Aggregation, Sliding(5, 2, "clamp"), QKAttention(6, heads=2, qkv_bias=False)), "halo_sdpa"),
        (
            functools.partial(Aggregation, Window(4, 2, border="mask"), QKAttention(6, heads=3, scale=0.2)),
            "window_sdpa",
        ),
        (functools.partial(Aggregation, Global(), QKAttention(6, heads=1, scale=1.3)), "global_sdpa"),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_generic_combinations(make, path, channels_last):
    channels = make.args[1].channels
    make = functools.partial(make, channels_last=channels_last)
    for h, w in [(2, 2), (3, 8), (7, 5)]:
        case = Case(make, batch=3, height=h, width=w, channels=channels, channels_last=channels_last)
        _check(case, h * 31 + w, path)


# --- train mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,path",
    [
        (functools.partial(DynamicDWConv, 8, 5), "batched_conv"),
        (functools.partial(Aggregation, Point(), SampleKernel(8, groups=4, reduction=2)), "batched_conv"),
        (functools.partial(InhomogeneousDWConv, 8, 3, groups=2), "shifted_sum"),
        (
            functools.partial(Aggregation, Sliding(3, 2, "mask"), PositionKernel(8, groups=4, reduction=2)),
            "shifted_sum",
        ),
    ],
)
@pytest.mark.parametrize("batch", [2, 3])
def test_train_mode_matches_reference(make, path, batch):
    """In train mode BatchNorm uses the batch statistics; fast and reference see the same batch."""
    torch.manual_seed(batch)
    module = randomize_(make().double()).train()
    x = torch.randn(batch, 8, 6, 7, dtype=F64)
    assert_path_matches_reference(module, x, path)
    assert module.training


# --- presets pick their fast paths --------------------------------------------------------------


@pytest.mark.parametrize(
    "module,path",
    [
        (DWConv(4, 3), "conv"),
        (DynamicDWConv(4, 3), "batched_conv"),
        (InhomogeneousDWConv(4, 3, groups=2), "shifted_sum"),
        (WindowAttention(4, 2, 3, 1), "window_sdpa"),
        (NeighborhoodAttention(4, 2, 3), "halo_sdpa"),
        (GlobalAttention(4, 2), "global_sdpa"),
    ],
)
def test_auto_path_and_paths(module, path):
    assert module.path == path
    assert module.paths == [path, "reference"]
    module.path = "reference"
    assert module.path == "reference"
    module.path = "auto"
    assert module.path == path


def test_every_fast_path_is_exercised():
    assert set(PATHS) == set(FAST_PATHS) | {"reference"}
    assert set(CASES) == set(FAST_PATHS)


# --- the checker is not a tautology -------------------------------------------------------------


_PERTURB_CASES = {
    "conv": Case(functools.partial(DWConv, 4, 3, 2), 2, 5, 6, 4),
    "decomposed": Case(functools.partial(DCDConv2d, 4, 4, 3, latent=2, squeeze=2), 2, 5, 6, 4),
    "batched_conv": Case(functools.partial(DynamicDWConv, 4, 3), 2, 5, 6, 4),
    "shifted_sum": Case(functools.partial(InhomogeneousDWConv, 4, 3, groups=2), 2, 5, 6, 4),
    "window_sdpa": Case(functools.partial(WindowAttention, 4, 2, 3, 1), 2, 5, 6, 4),
    "halo_sdpa": Case(functools.partial(NeighborhoodAttention, 4, 2, 3, 2), 2, 5, 6, 4, halo_tile=2),
    "global_sdpa": Case(functools.partial(GlobalAttention, 4, 2), 2, 5, 6, 4),
}


def _perturbed(path: str, how: str) -> Path:
    run = PATHS[path].run

    def perturbed_run(module, x):
        y = run(module, x)
        if how == "output":
            return y + 1e-3
        if how == "input_grad":  # same forward value, only the input gradient is off
            return y + 1e-3 * (x - x.detach()).sum(1, keepdim=True)
        if how == "param_grad":  # same forward value and input gradient, only parameter gradients are off
            return y + 1e-3 * sum((p - p.detach()).sum() for p in module.parameters())
        raise AssertionError(how)

    return Path(path, PATHS[path].applies, perturbed_run)


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("how", ["output", "input_grad", "param_grad"])
def test_checker_catches_perturbed_path(monkeypatch, path, how):
    case = _PERTURB_CASES[path]
    module, x = case.build(0)
    assert_path_matches_reference(module, x, path)  # unperturbed: passes
    monkeypatch.setitem(PATHS, path, _perturbed(path, how))
    with pytest.raises(AssertionError):
        assert_path_matches_reference(module, x, path)


# --- regressions -----------------------------------------------------------------------------------


# A dilation larger than the input leaves some dilation groups empty; halo_sdpa once crashed there.
@pytest.mark.parametrize(
    "make,h,w",
    [
        (functools.partial(NeighborhoodAttention, 4, 2, 3, 2), 5, 1),  # the preset's default clamp rule
        (functools.partial(NeighborhoodAttention, 4, 2, 3, 3, "zeros"), 2, 6),
        (functools.partial(Aggregation, Sliding(1, 2, "mask"), QKAttention(4, heads=1)), 1, 1),
    ],
)
def test_halo_dilation_larger_than_input(make, h, w):
    case = Case(make, batch=1, height=h, width=w, channels=4)
    _check(case, 0, "halo_sdpa")


# --- CUDA (skipped without a GPU) -----------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fast_path_matches_cpu_reference(path, dtype):
    case = _PERTURB_CASES[path]
    module, x = case.build(0)
    module.path = "reference"
    y_ref = module(x)
    module = module.to("cuda", dtype)
    module.path = path
    y = module(x.to("cuda", dtype)).double().cpu()
    tol = dict(rtol=1e-6, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(y, y_ref, **tol)


# --- q, k, v projected by the caller -----------------------------------------------------------


@settings(max_examples=EXAMPLES // 2)
@given(case=st.sampled_from([window_cases, halo_cases, global_cases]).flatmap(lambda cases: cases()), seed=seeds)
def test_projected_qkv_equals_projecting_inside(case, seed):
    """Composites (ACmix) hand the attention paths the projections of the unpadded input; every
    path must pad them as projecting the padded input would (zeros project to the bias)."""
    module, x = case.build(seed)
    if case.channels_last:
        x = x.permute(0, 3, 1, 2)
    qkv = module.source.project(module, x.permute(0, 2, 3, 1))
    for path in (module.path, "reference"):
        module.path = path
        torch.testing.assert_close(module._run(module, x, projected=qkv), module._run(module, x), rtol=1e-9, atol=1e-12)
