"""``torch.compile``: every preset and every zoo model is captured as one graph and matches eager.

Three levels, from cheap to expensive:

1. Every preset (its catalog example and input) is compiled with ``fullgraph=True`` (any graph
   break raises): on its automatic fast path with the ``aot_eager`` backend (Dynamo captures the
   forward, AOTAutograd traces forward and backward, the graphs run eagerly), and on the reference
   path with the ``eager`` backend (forward captured). Output, input gradient and every parameter
   gradient are compared with eager.
2. Inductor, the default backend, generates and compiles C++ for the forward and the backward of
   every preset on its fast path, compared with eager.
3. Zoo models, one block per stage at 64x64 (the KW MobileNetV2s one block per row, as their depth
   is a fixed table), in eval mode: one model per family (``helpers.FAMILY_REPRESENTATIVES``) is captured with
   ``fullgraph=True`` (``eager`` backend), and ``INDUCTOR_MODELS`` are compiled with Inductor.
   ``UNIFIEDOPS_COMPILE_ALL=1`` captures all 40 models and compiles all 40 with Inductor.

The reductions keep what is checked: a graph break or a wrong lowering comes from an operation,
and a shallower model at a smaller input runs the same operations (the blocks of a stage share one
code path; sizes are static, so Dynamo specialises on them either way); the variants of a family
differ in widths and depths, not in code. Inductor is what costs: 2-30 s per preset (forward and
backward, 3.8 minutes for all 20) and 15-42 s per model on a fresh 2-core machine (CI has no compile
cache). All 40 models take about 17 minutes, over this file's CI budget, so CI compiles three models
that between them run every layer kind of the zoo that the presets do not, and the full run is
reported on the Reliability page.

Tolerance: outputs 1e-5 absolute and relative, in float32 (Inductor fuses and reorders sums; outputs
reach ~20, hence the relative part). Gradients are sums over every position and sample, so they are
compared relative to the largest entry of the tensor; where eager's own float32 gradient is further
than that from the float64 one (through BatchNorm over two pooled samples), 10 times eager's float32
error is allowed instead, as any reordering of the sums moves the result by as much. Models whose
float32 logits are themselves off by more than 1e-5 are compiled and compared in float64 (see
``compare_compiled`` and ``compare_model``).
"""

from __future__ import annotations

import copy
import inspect
import os

import pytest
import timm
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn

import zoo
from helpers import FAMILY_REPRESENTATIVES, calibrate_batch_norm_, shallow_kwargs
from unifiedops import Aggregation, Sliding, StaticKernel, WindowAttention
from unifiedops.catalog import PRESETS, preset_entry

COMPILE_ALL = os.environ.get("UNIFIEDOPS_COMPILE_ALL") == "1"
TOL = 1e-5
MODELS = zoo.list_models()

# The models CI compiles with Inductor: between them they run every layer kind the presets do not (LayerNorm
# in both layouts, BatchNorm, GELU and ReLU MLPs, layer scale, patch merging, strided and pooled downsampling,
# warehouse assembly, the classifier heads). Inductor takes 18-42 s per model cold on 2 cores.
INDUCTOR_MODELS = MODELS if COMPILE_ALL else ("uo_convnext_tiny", "kw_resnet18_1x", "swin_tiny")
# The variants of a family run the same code with other widths and depths, so a graph break in one is a graph
# break in all: CI traces one model per family (5 s each; all 40 take 3 minutes).
TRACED_MODELS = MODELS if COMPILE_ALL else list(FAMILY_REPRESENTATIVES.values())


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each case compiles from scratch: no guard or cache entry of one case serves another."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def set_paths(module: nn.Module, path: str) -> list[str]:
    """Put every aggregation of ``module`` on ``path`` (parents first); return the paths they run."""
    aggs = [m for m in module.modules() if isinstance(m, Aggregation)]
    for agg in aggs:
        agg.path = path
    return [agg.path for agg in aggs]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, *, relative_to_max: bool = False) -> float:
    """Compare at ``TOL``; return the largest absolute difference."""
    scale = max(1.0, expected.abs().max().item()) if relative_to_max else 1.0
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL * scale, msg=lambda m: f"{what}: {m}")
    return (actual - expected).abs().max().item() if expected.numel() else 0.0


def run(module: nn.Module, x: torch.Tensor, cotangent: torch.Tensor | None):
    """Output, input gradient and parameter gradients (by name) of one forward and backward."""
    x = x.clone().requires_grad_(cotangent is not None)
    module.zero_grad(set_to_none=True)
    y = module(x)
    if cotangent is None:
        return y.detach(), None, {}
    y.backward(cotangent)
    module = getattr(module, "_orig_mod", module)  # a compiled module's parameters, under their own names
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def compare_compiled(
    module: nn.Module, x: torch.Tensor, backend: str, grad: bool = True, float64_floor: bool = False
) -> float:
    """Compile a copy of ``module`` with ``fullgraph=True`` and compare it with ``module`` in eager mode.

    With ``float64_floor``, a gradient may differ from eager by up to 10 times eager's own float32 error
    (against a float64 run), where that exceeds ``TOL``: through a BatchNorm over two pooled samples
    (the dynamic kernels' predictors) eager float32 gradients are themselves off by up to 4e-4 of
    their largest entry, and any reordering of the sums moves them by as much.
    """
    torch.manual_seed(0)
    compiled = torch.compile(copy.deepcopy(module), backend=backend, fullgraph=True, dynamic=False)
    cotangent = None
    if grad:
        with torch.no_grad():
            cotangent = torch.randn_like(module(x))
    y, gx, gp = run(module, x, cotangent)
    yc, gxc, gpc = run(compiled, x, cotangent)
    worst = assert_close(yc, y, "output")
    if not grad:
        return worst
    assert gpc.keys() == gp.keys()
    grads = {"input gradient": (gxc, gx), **{f"gradient of {n}": (gpc[n], gp[n]) for n in gp}}
    floor = dict.fromkeys(grads, 0.0)
    if float64_floor:
        _, gx64, gp64 = run(copy.deepcopy(module).double(), x.double(), cotangent.double())
        exact = [gx64, *(gp64[n] for n in gp)]
        for (what, (_, g32)), g64 in zip(grads.items(), exact, strict=True):
            floor[what] = ((g32.double() - g64).abs().max() / max(1.0, g64.abs().max().item())).item()
    for what, (actual, expected) in grads.items():
        scale = max(1.0, expected.abs().max().item())
        tol = max(TOL, 10 * floor[what]) * scale
        torch.testing.assert_close(actual, expected, rtol=0, atol=tol, msg=lambda m, w=what: f"{w}: {m}")
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


# --- presets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("entry", PRESETS, ids=lambda e: e.name)
def test_preset_is_one_graph_forward_and_backward(entry, path):
    """The fast path's forward and backward are traced (``aot_eager``); the reference path's forward only
    (``eager``, gradients by autograd through the captured graph), which halves its cost."""
    torch.manual_seed(0)
    module = entry.build()
    paths = set_paths(module, path)
    if path == "auto":
        assert " + ".join(dict.fromkeys(paths)) == entry.fast_path  # the catalog's fast path is the one compiled
    compare_compiled(module, torch.randn(entry.input_shape), "aot_eager" if path == "auto" else "eager")


@pytest.mark.parametrize("name", [e.name for e in PRESETS])
def test_preset_compiles_with_inductor(name):
    entry = preset_entry(name)
    torch.manual_seed(0)
    module = entry.build()
    set_paths(module, "auto")
    worst = compare_compiled(module, torch.randn(entry.input_shape), "inductor", float64_floor=True)
    print(f"{name}: max |compiled - eager| = {worst:.2g}")  # shown by pytest -rP


def test_changing_the_path_recompiles():
    """``path`` is a module attribute: Dynamo guards on it, so a compiled module follows a change."""
    counter = torch._dynamo.testing.CompileCounter()
    module = WindowAttention(8, 2, 4, shift_size=2)
    compiled = torch.compile(module, backend=counter, fullgraph=True, dynamic=False)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        fast = compiled(x)
        module.path = "reference"
        reference = compiled(x)
        torch.testing.assert_close(reference, module(x), rtol=0, atol=0)
    torch.testing.assert_close(fast, reference, rtol=TOL, atol=TOL)
    assert counter.frame_count == 2


@pytest.mark.parametrize("name", ["NeighborhoodAttention", "MergedXVolution"])
def test_a_new_input_size_recompiles_without_graph_breaks(name):
    """Geometry tables are built per input size. From the second size on, torch.compile's default turns
    on dynamic shapes; the sizes are then specialised where a table is looked up, so each size gets one
    graph of its own (``fullgraph=True``: a break would raise)."""
    counter = torch._dynamo.testing.CompileCounter()
    module = preset_entry(name).build()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    with torch.no_grad():
        for size in (9, 14, 21):
            x = torch.randn(2, 96, size, size)
            torch.testing.assert_close(compiled(x), module(x), rtol=TOL, atol=TOL)
    assert counter.frame_count == 3


def test_a_graph_break_fails_the_check(monkeypatch):
    """The check can fail: a data-dependent branch, and a table builder that Dynamo would trace, break the graph."""

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(torch._dynamo.exc.Unsupported):
        compare_compiled(Branchy(), torch.randn(2, 3), "aot_eager", grad=False)
    torch._dynamo.reset()
    from unifiedops import paths

    # Without its constant marking, Dynamo would trace the cached table builder: its torch.device
    # context and .item() break the graph.
    cached = inspect.getclosurevars(paths._window_tables).nonlocals["constant"]
    monkeypatch.setattr(cached, "_dynamo_marked_constant", False)
    compare_compiled(Aggregation(Sliding(3), StaticKernel(4)), torch.randn(1, 4, 6, 6), "aot_eager")  # a control
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compare_compiled(WindowAttention(8, 2, 4, shift_size=2), torch.randn(1, 8, 8, 8), "aot_eager", grad=False)


# --- zoo ------------------------------------------------------------------------------------------------------


def shallow_model(name: str) -> nn.Module:
    """``name`` with one block per stage (per row for the MobileNetV2s), in eval mode.

    BatchNorm statistics are first set to those of a random batch: with the initial ones the KW
    MobileNetV2s' activations shrink to exactly 0. Eval mode, because BatchNorm in train mode over a
    batch of two magnifies float32 rounding (eager itself is then off by ~1e-4 in the logits).
    """
    model = timm.create_model(name, **shallow_kwargs(name))
    return calibrate_batch_norm_(model, torch.randn(4, 3, 64, 64))


def compare_model(name: str, backend: str) -> float:
    """Compile ``name`` (shallow, eval mode) and compare its logits with eager at ``TOL``.

    In float32, unless eager's own float32 logits are further than ``TOL`` from the float64 ones: then
    the model is ill-conditioned at this input (the KW ResNets and MobileNetV2s, whose BatchNorm statistics
    rescale nearly vanished activations: a 1e-7 change of the input moves a KW MobileNetV2's logits by
    7e-3), any reordering of float32 sums moves the logits by more than ``TOL``, and the model is compiled
    and compared in float64 instead, where a wrong lowering still shows and rounding does not.
    """
    torch.manual_seed(0)
    model = shallow_model(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert expected.abs().max() > 1e-2  # a vanishing output would make the comparison meaningless
        model64, x64 = copy.deepcopy(model).double(), x.double()
        expected64 = model64(x64)
        if (expected.double() - expected64).abs().max() > TOL:
            model, x, expected = model64, x64, expected64
        compiled = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True, dynamic=False)
        return assert_close(compiled(x), expected, f"{name} output ({x.dtype})")


@pytest.mark.parametrize("name", TRACED_MODELS)
def test_zoo_model_is_one_graph(name):
    compare_model(name, "eager")


@pytest.mark.parametrize("name", INDUCTOR_MODELS)
def test_zoo_model_compiles_with_inductor(name):
    print(f"{name}: max |compiled - eager| = {compare_model(name, 'inductor'):.2g}")  # shown by pytest -rP
