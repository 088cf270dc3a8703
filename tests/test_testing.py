"""The public test helpers (``unifiedops.testing``): the reference check passes on correct operators,
fails on broken ones, leaves the caller's module as it was, rejects bad arguments; every
configuration the strategies draw builds and runs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unifiedops import (
    PATHS,
    Aggregation,
    DWConv,
    Global,
    GlobalAttention,
    NeighborhoodAttention,
    QKAttention,
    Sliding,
    StaticKernel,
    Window,
    WindowAttention,
)
from unifiedops.paths import Path
from unifiedops.testing import (
    aggregations,
    assert_matches_reference,
    feature_maps,
    inputs_for,
    neighbourhoods,
    randomize_,
    shapes,
    weight_sources,
)
from unifiedops.weights import ConvKernelSource, SameChannels

FAST = [p for p in PATHS if p != "reference"]


# --- a user-defined source, correct and broken ------------------------------------------------------


@dataclass(frozen=True)
class Separable(SameChannels, ConvKernelSource):
    """A depth-wise kernel that is the outer product of a column and a row: ``w[c] = u[c] v[c]^T``."""

    transpose: bool = False  # the bug: build the kernel as v u^T

    @property
    def weight_groups(self) -> int:
        return self.channels

    @property
    def conv_groups(self) -> int:
        return self.channels

    def build(self, module, neighbourhood):
        k = neighbourhood.slots
        module.u = nn.Parameter(torch.randn(self.channels, k))
        module.v = nn.Parameter(torch.randn(self.channels, k))

    def _kernel(self, module):
        return module.u[:, :, None] * module.v[:, None, :]  # (C, k, k)

    def conv_weight(self, module, x):
        kernel = self._kernel(module)
        return (kernel.transpose(1, 2) if self.transpose else kernel)[None, :, None]

    def reference(self, module, x, padded, lay):
        return padded.flatten(2), self._kernel(module).flatten(1)[None, :, None]


def test_custom_source_passes_and_its_bug_is_caught():
    good = Aggregation(Sliding(3), Separable(4))
    assert good.path == "conv"
    assert assert_matches_reference(good, input_shape=(2, 4, 5, 6)) < 1e-12
    bad = Aggregation(Sliding(3), Separable(4, transpose=True))
    with pytest.raises(AssertionError, match=r"current paths \(op='conv'\)"):
        assert_matches_reference(bad, input_shape=(2, 4, 5, 6))


class _IgnoresBorder(nn.Module):
    """A composite whose fast path pads with zeros where the neighbourhood reflects."""

    def __init__(self):
        super().__init__()
        self.agg = Aggregation(Sliding(3, border="reflect"), StaticKernel(4))

    def forward(self, x):
        if self.agg.path == "reference":
            return self.agg(x)
        return torch.nn.functional.conv2d(x, self.agg.weight, self.agg.bias, padding=1, groups=4)


def test_fast_path_ignoring_the_border_is_caught():
    with pytest.raises(AssertionError, match="output"):
        assert_matches_reference(randomize_(_IgnoresBorder()), input_shape=(1, 4, 5, 5))


@pytest.mark.parametrize("how", ["output", "input_grad", "param_grad"])
def test_small_perturbation_of_a_path_is_caught(monkeypatch, how):
    run = PATHS["conv"].run

    def perturbed(module, x):
        y = run(module, x)
        if how == "output":
            return y + 1e-6
        if how == "input_grad":
            return y + 1e-6 * (x - x.detach())
        return y + 1e-6 * sum((p - p.detach()).sum() for p in module.parameters())

    op = randomize_(DWConv(4, 3))
    assert_matches_reference(op, input_shape=(2, 4, 5, 5))
    monkeypatch.setitem(PATHS, "conv", Path("conv", PATHS["conv"].applies, perturbed))
    what = {"output": "the output", "input_grad": "the input gradient", "param_grad": "the gradient of"}[how]
    with pytest.raises(AssertionError, match=what):
        assert_matches_reference(op, input_shape=(2, 4, 5, 5))


# --- composites, paths, copies ------------------------------------------------------------------------


def _block():
    torch.manual_seed(0)
    return randomize_(nn.Sequential(DWConv(8, 3), nn.GELU(), NeighborhoodAttention(8, 2, 3), WindowAttention(8, 2, 2)))


@pytest.mark.parametrize("paths", [None, "all", "conv", ["halo_sdpa", "window_sdpa"]])
def test_composite_module(paths):
    worst = assert_matches_reference(_block(), input_shape=(2, 8, 5, 7), paths=paths)
    assert 0 <= worst < 1e-12


def test_all_names_the_failing_aggregation(monkeypatch):
    run = PATHS["halo_sdpa"].run
    monkeypatch.setitem(
        PATHS, "halo_sdpa", Path("halo_sdpa", PATHS["halo_sdpa"].applies, lambda m, x: run(m, x) * 1.01)
    )
    with pytest.raises(AssertionError, match="2 on path 'halo_sdpa'"):
        assert_matches_reference(_block(), input_shape=(1, 8, 4, 4), paths="all")


def test_callers_module_is_unchanged():
    op = _block().train()
    before = {k: v.clone() for k, v in op.state_dict().items()}
    paths = [m.path for m in op.modules() if isinstance(m, Aggregation)]
    assert_matches_reference(op, input_shape=(2, 8, 5, 5), paths="all")
    assert all(p.grad is None for p in op.parameters())
    assert all(p.dtype == torch.float32 for p in op.parameters())
    assert [m.path for m in op.modules() if isinstance(m, Aggregation)] == paths
    assert all(torch.equal(v, op.state_dict()[k]) for k, v in before.items())


def test_in_place_restores_paths_and_grads_after_failure(monkeypatch):
    op = _block().double()
    op[0].path = "reference"
    paths = [m.path for m in op.modules() if isinstance(m, Aggregation)]
    grad = torch.ones_like(op[0].weight)
    op[0].weight.grad = grad
    monkeypatch.setitem(PATHS, "window_sdpa", Path("window_sdpa", PATHS["window_sdpa"].applies, lambda m, x: x * 0))
    with pytest.raises(AssertionError):
        assert_matches_reference(op, input_shape=(1, 8, 4, 4), paths="all", copy=False)
    assert [m.path for m in op.modules() if isinstance(m, Aggregation)] == paths
    assert op[0].weight.grad is grad and op[2].qkv.weight.grad is None


def test_dropout_draws_the_same_mask_on_every_path():
    op = nn.Sequential(DWConv(4, 3), nn.Dropout(0.5)).train()
    assert_matches_reference(op, input_shape=(2, 4, 5, 5))


def test_float32_with_loose_tolerances():
    op = GlobalAttention(8, 2)
    assert assert_matches_reference(op, input_shape=(2, 8, 4, 4), dtype=None, rtol=1e-4, atol=1e-5) < 1e-4


def test_multiple_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = DWConv(4, 3), DWConv(4, 5)

        def forward(self, x):
            return {"a": self.a(x), "rest": [self.b(x), x]}

    assert_matches_reference(Two(), input_shape=(1, 4, 6, 6))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"no Aggregation.*Linear"):
        assert_matches_reference(nn.Linear(3, 3), input_shape=(2, 3))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        assert_matches_reference(lambda x: x, input_shape=(2, 3))
    with pytest.raises(ValueError, match="exactly one of x and input_shape"):
        assert_matches_reference(DWConv(4, 3))
    with pytest.raises(ValueError, match="exactly one of x and input_shape"):
        assert_matches_reference(DWConv(4, 3), torch.randn(1, 4, 3, 3), input_shape=(1, 4, 3, 3))
    with pytest.raises(ValueError, match="'conv' applies to no Aggregation"):
        assert_matches_reference(GlobalAttention(4, 2), input_shape=(1, 4, 3, 3), paths="conv")
    with pytest.raises(ValueError, match="fast paths from"):
        assert_matches_reference(DWConv(4, 3), input_shape=(1, 4, 3, 3), paths="reference")
    with pytest.raises(ValueError, match="nothing to compare"):
        assert_matches_reference(DWConv(4, 3, path="reference"), input_shape=(1, 4, 3, 3))
    with pytest.raises(ValueError, match="no Aggregation in op has a fast path"):
        assert_matches_reference(
            Aggregation(Global(), QKAttention(4, coord_pos_embed=True)), input_shape=(1, 4, 2, 2), paths="all"
        )
    with pytest.raises(ValueError, match="kinds"):
        neighbourhoods("hexagon")
    with pytest.raises(ValueError, match="odd"):
        neighbourhoods(kernel_sizes=(2,))
    with pytest.raises(ValueError, match="path"):
        aggregations(path="reference")
    with pytest.raises(ValueError, match="min_side"):
        shapes(4, min_side=0)


# --- the strategies draw valid configurations ---------------------------------------------------------


@settings(max_examples=60)
@given(data=st.data(), path=st.sampled_from([None, *FAST]))
def test_every_drawn_aggregation_runs(data, path):
    agg = data.draw(aggregations(path=path))
    if path is not None:
        assert agg.path == path
    x = data.draw(inputs_for(agg))
    assert x.dtype == torch.float64 and not agg.training
    y = agg(x)
    assert torch.isfinite(y).all()
    if agg.path != "reference":
        assert_matches_reference(agg, x, copy=False)


@settings(max_examples=30)
@given(nb=neighbourhoods(), data=st.data())
def test_sources_fit_the_neighbourhood(nb, data):
    source = data.draw(weight_sources(neighbourhood=nb))
    agg = Aggregation(nb, source).eval()
    h = w = 1 if not isinstance(nb, Sliding) or nb.border != "reflect" else nb.dilation * (nb.kernel_size // 2) + 1
    assert agg(torch.randn(1, source.channels, h, w)).shape[1] == source.out_channels


@settings(max_examples=30)
@given(shape=shapes(st.integers(2, 5), batch=2, min_side=3, max_side=4, channels_last=True), x=feature_maps(3))
def test_shapes_and_feature_maps(shape, x):
    assert shape[0] == 2 and 3 <= shape[1] <= 4 and 3 <= shape[2] <= 4 and 2 <= shape[3] <= 5
    assert x.shape[1] == 3 and x.dtype == torch.float64 and 1 <= x.shape[2] <= 13


@settings(max_examples=20)
@given(data=st.data())
def test_user_sources_plug_into_aggregations(data):
    agg = data.draw(aggregations(sources=st.builds(Separable, st.integers(1, 6)), channels_last=False))
    assert isinstance(agg.source, Separable)
    assert agg.neighbourhood.slots is not None  # never paired with Global
    if agg.path == "reference":  # no fast path runs a kernel source on a window or a clamped border
        assert isinstance(agg.neighbourhood, Window) or agg.neighbourhood.border == "clamp"
    else:
        assert_matches_reference(agg, data.draw(inputs_for(agg)), copy=False)


def test_window_shift_is_drawn():
    from hypothesis import find

    nb = find(neighbourhoods("window", window_sizes=(4,)), lambda nb: nb.shift == 3)
    assert nb == Window(4, 3)
