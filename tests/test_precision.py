"""Mixed precision: every preset and zoo model under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

The error measure is normwise and relative: ``||y_bf16 - y_fp32|| / ||y_fp32||`` over the whole output.

The bounds come from bfloat16's unit roundoff ``u = 2^-8 ~ 3.9e-3`` (8 significant bits). Autocast
rounds the inputs and weights of each matmul/convolution to bf16 (relative error ``u`` each),
accumulates in fp32 and rounds the result (``u``), so one well-conditioned layer is off by about
``3u`` at worst and ``~u`` on average; softmax, normalisations and reductions run in fp32.

* One preset (one to three products in a chain): bound ``PRESET_BOUND = 4u``; measured at most
  ``1.5u`` (5.9e-3, the KernelWarehouse conv).
* A reduced zoo model (stem, one block per stage, three downsamplings, head: 15 to 30 products):
  the per-layer errors add (normalisation layers rescale the signal but not the relative error), so
  the bound is ``MODEL_BOUND = 16u``; measured at most ``8.7u`` (3.4e-2, KW ConvNeXt) and at most
  ``2.3u`` for every other family.

Both are measured on models as built (default initialisation, eval mode), which is where training
starts; randomised weights with larger logits make attention softmaxes peakier and their error grows
with the logit size (scale-0.5 weights give ~6u for the attention presets).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo
from helpers import shallow_kwargs
from unifiedops import Aggregation, QKAttention
from unifiedops.catalog import PRESETS, preset_entry

U = 2.0**-8
"""Unit roundoff of bfloat16."""
PRESET_BOUND = 4 * U
MODEL_BOUND = 16 * U

ATTENTION_PRESETS = (
    "WindowAttention",
    "NeighborhoodAttention",
    "GlobalAttention",
    "ACmix",
    "ACmixWindowAttention",
    "MixingAttention",
    "UniFormerGlobalMHRA",
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64; 0 when both are exactly zero."""
    actual, expected = actual.double(), expected.double()
    diff = (actual - expected).norm().item()
    scale = expected.norm().item()
    return 0.0 if diff == 0 else diff / scale


@torch.no_grad()
def bf16_error(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The autocast output and its relative error against the fp32 output of the same module."""
    expected = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = module(x)
    return actual, relative_error(actual, expected)


def to_reference(module: nn.Module) -> nn.Module:
    for m in module.modules():  # parents first: a composite's setter runs before its parts'
        if isinstance(m, Aggregation):
            m.path = "reference"
    return module


def test_the_error_measure_catches_a_module_that_loses_precision():
    """A module that adds a large offset before a convolution and removes it after loses the input's
    digits once autocast rounds ``x + 1000`` to bf16 (spacing 4 there): its error is O(1)."""

    class Cancelling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            offset = self.conv(torch.full_like(x, 1000.0))
            return self.conv(x + 1000.0) - offset

    torch.manual_seed(0)
    _, error = bf16_error(Cancelling(), torch.randn(1, 8, 8, 8))
    assert error > PRESET_BOUND * 10


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("entry", PRESETS, ids=lambda e: e.name)
def test_preset_under_bf16_autocast(entry, path):
    """The catalog example at its input shape, on its automatic paths and on the reference path."""
    torch.manual_seed(0)
    module = entry.build().eval()
    if path == "reference":
        to_reference(module)
    x = torch.randn(entry.input_shape)
    y, error = bf16_error(module, x)
    assert torch.isfinite(y).all()
    assert error <= PRESET_BOUND, f"{entry.name} on {path}: relative error {error:.2e} > {PRESET_BOUND:.2e}"


def _build(name: str) -> nn.Module:
    """One block per stage (per row for the MobileNetV2s)."""
    return timm.create_model(name, **shallow_kwargs(name))


def _distinct_models() -> list[str]:
    """Zoo models whose reduced builds differ: at one block per stage, e.g. ``swin_tiny`` and
    ``swin_small`` are the same network (they differ only in depth), and one stands for both. The
    KW MobileNetV2s, whose activations vanish at initialisation, are left to
    ``test_kw_mobilenetv2_under_bf16_autocast``."""
    seen: dict[tuple, str] = {}
    for name in zoo.list_models():
        if name.startswith("kw_mobilenetv2"):
            continue
        with torch.device("meta"):
            signature = tuple((k, tuple(v.shape)) for k, v in _build(name).state_dict().items())
        seen.setdefault(signature, name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", _distinct_models())
def test_zoo_model_under_bf16_autocast(name):
    """A reduced model (one block per stage) on a 32x32 input, batch 1, in eval mode.

    Rounding errors arise per product and are carried through the chain, so the per-layer error and
    its accumulation over the stem, the four stages and the head are what is measured; more blocks
    per stage or a larger input repeat the same layers. ACmix-ResNet needs 64x64 (its 7x7 reflected
    neighbourhood needs a map larger than 3 at stride 16).
    """
    torch.manual_seed(0)
    model = _build(name).eval()
    size = 64 if name.startswith("acmix_resnet") else 32
    y, error = bf16_error(model, torch.randn(1, 3, size, size))
    assert torch.isfinite(y).all()
    assert error <= MODEL_BOUND, f"{name}: relative error {error:.2e} > {MODEL_BOUND:.2e}"


def test_kw_mobilenetv2_under_bf16_autocast():
    """One KW MobileNetV2 runs as built, and only finiteness is checked.

    As built, in eval mode (BatchNorm statistics at their initial values), its activations shrink
    by ~1e3 per block and are exactly zero after the third row, in fp32 as in bf16, so an error
    relative to the output means nothing at initialisation. In train mode on a batch of two noise
    images, the BatchNorms of the pooled attention vectors divide by the spread of two nearly equal
    vectors and the relative error is O(1), in any precision below fp32.
    """
    torch.manual_seed(0)
    model = timm.create_model("kw_mobilenetv2_050_1d2x").eval()
    y, _ = bf16_error(model, torch.randn(1, 3, 32, 32))
    assert torch.isfinite(y).all()


def _max_logit(module: nn.Module, x: torch.Tensor) -> float:
    """The largest ``|scale * q_i . k_j|`` over all pairs, of every attention aggregation in ``module``."""
    largest = 0.0
    inputs: dict[nn.Module, torch.Tensor] = {}
    attentions = [m for m in module.modules() if isinstance(m, Aggregation) and isinstance(m.source, QKAttention)]
    for agg in attentions:  # record what each attention's path receives, (B, C, H, W)

        def run(mod, inp, _run=agg._run, **kwargs):
            inputs.setdefault(mod, inp)
            return _run(mod, inp, **kwargs)

        agg._run = run
    try:
        with torch.no_grad():
            module(x)
    finally:
        for agg in attentions:
            agg.path = agg.path  # restores _run
    with torch.no_grad():
        for agg, inp in inputs.items():
            q, k, _ = agg.source.project(agg, inp.permute(0, 2, 3, 1)).flatten(2, 3)  # (B, N, G, D)
            logits = torch.einsum("bngd,bmgd->bgnm", q, k) * agg.source.logit_scale
            largest = max(largest, logits.abs().max().item())
    return largest


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("name", ATTENTION_PRESETS)
def test_attention_softmax_is_stable_for_large_logits(name, path, autocast):
    """Inputs scaled by 1e4 drive the logits far past 88.7, where ``exp`` overflows in fp32 and bf16:
    a softmax that does not subtract the row maximum returns NaN. Every path must stay finite.

    MixingAttention normalises its input (LayerNorm) before the attention; there the LayerNorm's gain
    is scaled by 1e4 instead, which scales the attention's input the same way."""
    entry = preset_entry(name)
    torch.manual_seed(0)
    module = entry.build().eval()
    if path == "reference":
        to_reference(module)
    x = torch.randn(entry.input_shape) * 1e4
    if name == "MixingAttention":
        # its attention reads a LayerNorm of the input, which undoes the input's scale: scale the gain
        with torch.no_grad():
            module.proj_attn_norm.weight.mul_(1e4)
    if path == "auto" and not autocast:
        assert _max_logit(module, x) > 1e3  # the check is meaningful: a naive softmax overflows
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    assert torch.isfinite(y).all(), f"{name} on {path}: non-finite output for inputs scaled by 1e4"
