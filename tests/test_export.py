"""Export: zoo models and presets through ``torch.export`` and ONNX (dynamo path), checked against eager.

What is exported, and why the reductions keep the property:

* One model per zoo family (``helpers.FAMILY_REPRESENTATIVES``), at depths ``(1, 1, 1, 1)`` (one block per row
  for the MobileNetV2s): ``torch.export``, then the exported program to ONNX, run
  with ONNX Runtime on the CPU. Export traces each block of a stage the same way, and deeper or wider
  variants of a family repeat the same blocks with other sizes, so one block per stage of one model
  per family exercises every operator of the family. (Exporting every distinct model as well took
  8.5 CPU minutes for this file, over its 4-minute budget; every one of the 40 models exported and
  matched eager exactly when tried, see the Reliability page.)
* Every preset's catalog example through ``torch.export``; to ONNX, the presets that no zoo family
  uses (the others are converted inside their family's model).
* Dynamic shapes: a symbolic batch and symbolic ``H = 32 h``, ``W = 32 w`` (the zoo's total stride)
  for a static-kernel and a per-sample-kernel model; the known failures as strict expected failures.

Inputs are ``2 x 3 x 64 x 64``: every model accepts it (MixFormer needs multiples of 32), and export
specialises on sizes, not values. Weights are re-drawn with fan-in-scaled noise and non-trivial
BatchNorm statistics and affine parameters: the default initialisations zero the last BatchNorm of
each KW MobileNetV2 block and scale ConvNeXt and Swin branches by ``1e-6``, which would make whole
blocks invisible to the comparison.

Tolerances: the exported program runs the same ATen kernels as eager and is compared at 1e-5
(measured: bit-identical, 0.0, for every model and preset). Eager and exported runs are both under
``torch.no_grad()``: with autograd enabled PyTorch's CPU SDPA dispatches to another kernel, which
moves a WindowAttention output of magnitude 1e2 by 5e-4. ONNX Runtime uses its own kernels and
fusions; its output is compared at ``1e-4 * max|eager|`` (measured worst: 4.3e-6 on outputs of
magnitude 4.7, i.e. 9e-7 of the magnitude, for the models, and 1.3e-6 of the magnitude for the
presets; a wrong graph moves the output by percents, which ``test_the_comparisons_catch_a_wrong_program``
shows for a weight moved by 0.01).

Expected failures are listed in ``EXPORT_FAILURES``, ``ONNX_FAILURES``, ``DYNAMIC_SIZE_FAILURES`` and
``DYNAMIC_BATCH_FAILURES`` with the reason; their tests are ``xfail(strict=True)``, so a model that
starts exporting fails the test until the list (and the Reliability page, which gives the same list)
is updated.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn
from torch._dynamo.exc import UserError
from torch.export import Dim

import zoo
from helpers import FAMILY_REPRESENTATIVES, calibrate_batch_norm_, shallow_kwargs
from unifiedops import NeighborhoodAttention, WindowAttention
from unifiedops.catalog import PRESETS, ZOO_FAMILIES, preset_entry, zoo_family
from unifiedops.testing import randomize_

MODELS = zoo.list_models()


EXPORT_FAILURES: dict[str, str] = {}
"""Zoo models or presets that ``torch.export`` cannot export, with the reason (none)."""

ONNX_FAILURES: dict[str, str] = {}
"""Zoo models or presets that cannot be exported to ONNX, with the reason (none)."""

_SIZE_KEYED_TABLES = (
    "window and halo attention build their masks and index tables in Python per input size and "
    "cache them by size (unifiedops._cache.cached_tables), which specialises a symbolic H or W to the "
    "example's size: the program then refuses any other size (AssertionError: Guard failed)"
)
DYNAMIC_SIZE_FAILURES: dict[str, str] = {
    "swin_tiny": _SIZE_KEYED_TABLES,
    "acmix_swin_tiny": _SIZE_KEYED_TABLES,
    "mixformer_b0": _SIZE_KEYED_TABLES,
    "acmix_resnet26": _SIZE_KEYED_TABLES,
}
"""Family representatives that cannot be exported with symbolic ``H, W``, with the reason."""

DYNAMIC_BATCH_FAILURES: dict[str, str] = {
    "acmix_resnet26": (
        "the halo_sdpa path loops over the samples in Python (it bounds memory), which specialises the batch size"
    ),
}
"""Family representatives that cannot be exported with a symbolic batch, with the reason."""

ONNX_RELATIVE_TOLERANCE = 1e-4


def _build(name: str, **kwargs) -> nn.Module:
    """The zoo model at one block per stage (per row for the MobileNetV2s)."""
    kwargs.update(shallow_kwargs(name))
    return timm.create_model(name, **kwargs)


@torch.no_grad()
def _randomize_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fan-in-scaled weights, biases ``N(0, 0.1^2)``, scales ``1 + N(0, 0.1^2)``, non-trivial BN statistics.

    ``unifiedops.testing.randomize_`` (noise of one scale for every parameter) suits one operator; over
    a network the activations would grow with each layer, so weights here keep them of order one.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.dim() >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif name.endswith("bias"):
            p.copy_(noise * 0.1)
        else:  # norm weights, layer scales
            p.copy_(1 + noise * 0.1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model.eval()


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _randomize_model(_build(name))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    if name.startswith("dcd_"):
        # With random statistics DCD's low-rank term, quadratic in its input, makes the network so
        # ill-conditioned that float32 itself is off float64 by 0.5% of the largest logit.
        calibrate_batch_norm_(model, x)
    return model, x


def _preset(entry) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = randomize_(entry.build()).eval()
    return module, torch.randn(entry.input_shape)


def _expected_failure(name: str, failures: dict[str, str], raises: type[Exception] | None = None):
    if name not in failures:
        return name
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=failures[name], raises=raises))


def _assert_exported_matches(
    module: nn.Module, x: torch.Tensor, expected_from: nn.Module | None = None
) -> torch.export.ExportedProgram:
    """Export ``module`` (before its first eager call), run the program, compare at 1e-5 with ``module``
    (or ``expected_from``) in eager mode."""
    with torch.no_grad():
        program = torch.export.export(module, (x,))
        actual = program.module()(x)
        expected = (expected_from or module)(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    return program


def _onnx_output(exported, x: torch.Tensor) -> torch.Tensor:
    """``exported`` (a module or an ExportedProgram) to ONNX, run with ONNX Runtime on the CPU."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    args = () if isinstance(exported, torch.export.ExportedProgram) else (x,)
    # optimize=False: the onnxscript optimiser takes 3x longer than the conversion on the larger graphs
    # (i_dynamic_dwnet_tiny: 33 s against 10 s); run with the default optimize=True, every model and
    # preset here converted and matched as closely.
    onnx_program = torch.onnx.export(exported, args, dynamo=True, optimize=False, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _assert_onnx_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol = ONNX_RELATIVE_TOLERANCE * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# --- which models ------------------------------------------------------------------------------


def test_one_representative_per_family():
    assert set(FAMILY_REPRESENTATIVES) == {family.name for family in ZOO_FAMILIES}
    for family, name in FAMILY_REPRESENTATIVES.items():
        assert name in MODELS and zoo_family(name).name == family


def test_failure_lists_name_known_models_and_presets():
    assert set(EXPORT_FAILURES) | set(ONNX_FAILURES) | set(DYNAMIC_SIZE_FAILURES) | set(DYNAMIC_BATCH_FAILURES) <= set(
        MODELS
    ) | {e.name for e in PRESETS}


# --- torch.export and ONNX --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [_expected_failure(n, {**EXPORT_FAILURES, **ONNX_FAILURES}) for n in FAMILY_REPRESENTATIVES.values()]
)
def test_torch_export_and_onnx_match_eager(name):
    """``torch.export`` matches eager at 1e-5; the program, converted to ONNX, matches in ONNX Runtime."""
    model, x = _model(name)
    program = _assert_exported_matches(model, x)
    with torch.no_grad():
        expected = model(x)
    _assert_onnx_close(_onnx_output(program, x), expected)


@pytest.mark.parametrize("entry", [_expected_failure(e.name, EXPORT_FAILURES) for e in PRESETS])
def test_preset_torch_export_matches_eager(entry):
    module, x = _preset(next(e for e in PRESETS if e.name == entry))
    _assert_exported_matches(module, x)


_IN_A_FAMILY = {mixer for family in ZOO_FAMILIES for mixer in family.mixers}


@pytest.mark.parametrize(
    "entry", [_expected_failure(e.name, ONNX_FAILURES) for e in PRESETS if e.name not in _IN_A_FAMILY]
)
def test_preset_onnx_matches_eager(entry):
    """The presets that no zoo family uses (the others are converted with their family's model)."""
    module, x = _preset(next(e for e in PRESETS if e.name == entry))
    with torch.no_grad():
        expected = module(x)
    _assert_onnx_close(_onnx_output(module, x), expected)


@pytest.mark.parametrize("make", [lambda: WindowAttention(8, 2, 7), lambda: NeighborhoodAttention(8, 2, 5)])
def test_export_builds_geometry_tables_outside_the_trace(make):
    # An input size no other test uses: the size-keyed table cache is cold, so export itself must build
    # the tables (traced on fake tensors, the builders' .item() calls failed with GuardOnDataDependentSymNode).
    torch.manual_seed(0)
    _assert_exported_matches(randomize_(make()).eval(), torch.randn(1, 8, 17, 19))


def test_the_comparisons_catch_a_wrong_program():
    # The checks can fail: the programs of a module with one weight moved by 0.01 do not match it.
    module, x = _preset(PRESETS[0])
    wrong = copy.deepcopy(module)
    with torch.no_grad():
        wrong.weight.add_(0.01)
        expected = module(x)
    with pytest.raises(AssertionError):
        _assert_exported_matches(wrong, x, expected_from=module)
    with pytest.raises(AssertionError):
        _assert_onnx_close(_onnx_output(wrong, x), expected)


# --- dynamic shapes ----------------------------------------------------------------------------

_BATCH = Dim("batch", min=1, max=64)
_SIZE = {2: 32 * Dim("h", min=1, max=16), 3: 32 * Dim("w", min=1, max=16)}


def _assert_dynamic_export(name: str, dims: dict, shapes: list[tuple[int, ...]]) -> None:
    model, x = _model(name)
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes={"x": dims})
        for shape in shapes:
            other = torch.randn(shape)
            torch.testing.assert_close(program.module()(other), model(other), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dwnet_tiny", "kw_resnet18_1x"])
def test_dynamic_batch_and_size(name):
    """One program for any batch and any ``H, W`` that are multiples of 32 (a static and a per-sample
    kernel; the report lists every family)."""
    _assert_dynamic_export(name, {0: _BATCH, **_SIZE}, [(1, 3, 64, 64), (3, 3, 96, 128)])


@pytest.mark.parametrize(
    "name", [_expected_failure(n, DYNAMIC_BATCH_FAILURES, UserError) for n in ("swin_tiny", "acmix_resnet26")]
)
def test_dynamic_batch(name):
    _assert_dynamic_export(name, {0: _BATCH}, [(1, 3, 64, 64), (3, 3, 64, 64)])


# One model per cause of DYNAMIC_SIZE_FAILURES: the window tables (Swin) and the halo tables (ACmix-ResNet).
# ACmix-Swin and MixFormer fail through the same window tables; MixFormer alone takes 3.5 minutes to trace
# with symbolic sizes on 2 cores.
_DYNAMIC_SIZE_TESTED = {"window_sdpa": "swin_tiny", "halo_sdpa": "acmix_resnet26"}


@pytest.mark.parametrize(
    "name", [_expected_failure(n, DYNAMIC_SIZE_FAILURES, AssertionError) for n in _DYNAMIC_SIZE_TESTED.values()]
)
def test_dynamic_size(name):
    _assert_dynamic_export(name, _SIZE, [(2, 3, 96, 128)])


def test_dynamic_size_failures_have_a_tested_cause():
    """Every model listed in ``DYNAMIC_SIZE_FAILURES`` uses a table-driven path whose failure is tested above,
    and every family without such a path is not listed (``test_dynamic_batch_and_size`` exports two)."""
    table_paths = set(_DYNAMIC_SIZE_TESTED)
    for family in ZOO_FAMILIES:
        paths = {p for m in family.mixers for p in preset_entry(m).fast_path.split(" + ")}
        listed = FAMILY_REPRESENTATIVES[family.name] in DYNAMIC_SIZE_FAILURES
        assert listed == bool(paths & table_paths), family.name
