"""Shared helpers and hypothesis strategies for the unifiedops test suite.

The comparison with the reference path, ``randomize_`` and the neighbourhood and weight-source
strategies are the public ones of ``unifiedops.testing``; this module adds the suite's tolerances
and the per-path ``Case`` strategies, which also draw the presets."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from unifiedops import (
    Aggregation,
    DWConv,
    DynamicDWConv,
    Global,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    Sliding,
    WindowAttention,
)
from unifiedops.dcd import DCDConv2d, DCDKernel
from unifiedops.testing import assert_matches_reference, neighbourhoods, randomize_, weight_sources
from zoo.blocks.mobilenetv2_layout import MOBILENETV2_ROWS

F64 = torch.float64
RTOL = 1e-6
ATOL = 1e-9

FAST_PATHS = ("conv", "decomposed", "batched_conv", "shifted_sum", "window_sdpa", "halo_sdpa", "global_sdpa")

FAMILY_REPRESENTATIVES = {
    "Swin": "swin_tiny",
    "ACmix-Swin": "acmix_swin_tiny",
    "DWNet": "dwnet_tiny",
    "dynamic DWNet": "dynamic_dwnet_tiny",
    "inhomogeneous dynamic DWNet": "i_dynamic_dwnet_tiny",
    "VAN": "van_b0",
    "ACmix-ResNet": "acmix_resnet26",
    "KW ResNet": "kw_resnet18_1x",
    "KW MobileNetV2": "kw_mobilenetv2_050_1x",
    "KW ConvNeXt": "kw_convnext_tiny_1x",
    "ODConv ResNet": "od_resnet18_1x",
    "ODConv MobileNetV2": "od_mobilenetv2_100_1x",
    "DCD ResNet": "dcd_resnet18",
    "DCD MobileNetV2": "dcd_mobilenetv2_100",
    "ConvNeXt": "uo_convnext_tiny",
    "UniFormer": "uniformer_small",
    "MixFormer": "mixformer_b0",
}
"""One model per zoo family, for the checks too slow to run on all 40 (export to ONNX, compile tracing);
``test_export.test_one_representative_per_family`` keeps it complete."""


def shallow_kwargs(name: str) -> dict:
    """Keyword arguments that build zoo model ``name`` with one block per stage (per row for the
    MobileNetV2s)."""
    if "mobilenetv2" in name:
        return {"rows": tuple((t, c, 1, s) for t, c, _, s in MOBILENETV2_ROWS)}
    return {"layers" if "resnet" in name else "depths": (1, 1, 1, 1)}


@torch.no_grad()
def calibrate_batch_norm_(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of the batch ``x`` (one train-mode forward with
    a cumulative average), and return ``model`` in eval mode.

    Random or initial statistics do not fit the activations they meet: the KW MobileNetV2s' shrink to
    exactly 0, and DCD's low-rank term, quadratic in its input, overflows.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = None
    model.train()(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def assert_gradcheck(module: nn.Module, x: torch.Tensor) -> None:
    """``gradcheck`` of ``module`` with respect to its float64 input ``x`` and, in fast mode, to every parameter."""
    from torch.autograd import gradcheck
    from torch.func import functional_call

    x = x.detach().requires_grad_(True)
    assert gradcheck(module, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())

    def with_parameters(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(with_parameters, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """``torch.testing.assert_close`` at the suite's float64 tolerances."""
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=(lambda m: f"{msg}: {m}") if msg else None)


def batch_norm_eval(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm`` in eval mode, written functionally (for re-statements of a block's layer order)."""
    return torch.nn.functional.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
    )


def assert_grad_checkpointing_is_exact(model: nn.Module, x: torch.Tensor) -> None:
    """Gradients with ``model.set_grad_checkpointing()`` equal those without (same random stream)."""
    torch.manual_seed(1)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    torch.manual_seed(1)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def assert_path_matches_reference(module: nn.Module, x: torch.Tensor, path: str) -> None:
    """The fast ``path`` and the reference path agree on output, input gradient and every parameter gradient.

    ``module`` is left on ``path`` (a composite's setter chooses the paths of its parts, as ACmix's does).
    """
    assert path in module.paths, (path, module.paths)
    module.path = path
    assert module.path == path
    assert_matches_reference(
        module, x, dtype=None, rtol=RTOL, atol=ATOL, seed=int(torch.randint(2**31, ())), copy=False
    )


# --- cases ---------------------------------------------------------------------------------------


@dataclass
class Case:
    """A module constructor plus an input geometry; ``repr`` shows everything hypothesis drew."""

    make: Callable[[], nn.Module]
    batch: int
    height: int
    width: int
    channels: int
    channels_last: bool = False
    halo_tile: int | None = None
    nhwc_memory: bool = False  # feed a channels_last-*memory-format* NCHW tensor

    def build(self, seed: int) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(seed)
        module = self.make()
        module = randomize_(module.double()).eval()
        if self.halo_tile is not None:
            module.set_halo_tile(self.halo_tile)
        if self.channels_last:
            shape = (self.batch, self.height, self.width, self.channels)
        else:
            shape = (self.batch, self.channels, self.height, self.width)
        x = torch.randn(shape, dtype=F64)
        if self.nhwc_memory and not self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module, x


seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(1, 13)
batches = st.integers(1, 3)
odd_kernels = st.sampled_from([1, 3, 5, 7])
dilations = st.integers(1, 3)


@st.composite
def _channels(draw, max_groups: int = 4, max_width: int = 3) -> tuple[int, int]:
    """``(C, G)``: ``G`` groups (heads) of ``C // G`` channels."""
    groups = draw(st.integers(1, max_groups))
    return groups * draw(st.integers(1, max_width)), groups


# Sliding windows the convolution paths run (every border but clamp, with strides), and Point 1 time in 5.
_conv_neighbourhood = neighbourhoods(
    ("point", "sliding", "sliding", "sliding", "sliding"), borders=("zeros", "reflect", "mask"), strides=(1, 1, 2, 3)
)


@st.composite
def _geometry(draw, nb=None) -> dict:
    """Batch and image size; long enough for a reflecting neighbourhood ``nb`` to fit."""
    low = 1
    if isinstance(nb, Sliding) and nb.border == "reflect":
        low = nb.dilation * (nb.kernel_size // 2) + 1
    return dict(
        batch=draw(batches),
        height=draw(st.integers(low, max(low, 13))),
        width=draw(st.integers(low, max(low, 13))),
        nhwc_memory=draw(st.booleans()),
    )


@st.composite
def conv_cases(draw) -> Case:
    """StaticKernel cases: DWConv and generic static kernels, also grouped (``G < C``) and on Point;
    DenseKernel cases (channel-mixing, grouped, with a different number of outputs)."""
    c, g = draw(_channels())
    if draw(st.booleans()):
        make = functools.partial(DWConv, c, draw(odd_kernels), draw(dilations), draw(st.booleans()))
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    nb = draw(_conv_neighbourhood)
    source = draw(weight_sources(c, ("static", "dense"), groups=g))
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


@st.composite
def batched_conv_cases(draw) -> Case:
    """SampleKernel cases: DynamicDWConv and generic per-sample kernels (grouped, Point)."""
    c, g = draw(_channels())
    if draw(st.booleans()):
        reduction = draw(st.sampled_from([r for r in range(1, min(c, 4) + 1) if c % r == 0]))
        make = functools.partial(DynamicDWConv, c, draw(odd_kernels), reduction, draw(st.booleans()))
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    source = draw(weight_sources(c, "sample", groups=g))
    nb = draw(_conv_neighbourhood)
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


@st.composite
def decomposed_cases(draw) -> Case:
    """DCD cases: DCDConv2d and generic DCD kernels on zero-padded Sliding neighbourhoods (any stride,
    dilation, latent size, context pooling, with or without the static bias)."""
    c, o = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    k, dilation, stride = draw(odd_kernels), draw(dilations), draw(st.sampled_from([1, 1, 2, 3]))
    latent, squeeze, pool = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    if draw(st.booleans()):
        make = functools.partial(DCDConv2d, c, o, k, stride, dilation, pool=pool, latent=latent, squeeze=squeeze)
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    source = DCDKernel(c, o, latent, squeeze, pool, bias=draw(st.booleans()))
    make = functools.partial(Aggregation, Sliding(k, dilation, stride=stride), source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry()))


@st.composite
def shifted_sum_cases(draw) -> Case:
    """PositionKernel cases: InhomogeneousDWConv and generic per-position kernels (dilated, masked, Point)."""
    c, g = draw(_channels())
    if draw(st.booleans()):
        reduction = draw(st.sampled_from([r for r in range(1, min(c, 4) + 1) if c % r == 0]))
        make = functools.partial(InhomogeneousDWConv, c, draw(odd_kernels), groups=g, reduction=reduction)
        return Case(make, channels=c, **draw(_geometry()))
    last = draw(st.booleans())
    source = draw(weight_sources(c, "position", groups=g))
    nb = draw(_conv_neighbourhood)
    make = functools.partial(Aggregation, nb, source, channels_last=last)
    return Case(make, channels=c, channels_last=last, **draw(_geometry(nb)))


def _qk_source(c: int, heads: int, nb):
    """Attention sources over every option (``weight_sources``): bias table where ``nb`` has a fixed
    size, ACmix's coordinate embedding on Sliding, a different value width, both projection layouts,
    with and without the output projection, a custom scale."""
    return weight_sources(c, "attention", groups=heads, neighbourhood=nb)


_window_neighbourhood = neighbourhoods("window")


@st.composite
def window_cases(draw) -> Case:
    """Window attention: WindowAttention and generic Window (zeros and mask borders, any shift)."""
    c, heads = draw(_channels())
    nb = draw(_window_neighbourhood)
    last = draw(st.booleans())
    geo = draw(_geometry())
    if draw(st.booleans()):
        flag = draw(st.booleans())
        make = functools.partial(WindowAttention, c, heads, nb.size, nb.shift, flag, channels_last=last)
    else:
        make = functools.partial(Aggregation, nb, draw(_qk_source(c, heads, nb)), channels_last=last)
    return Case(make, channels=c, channels_last=last, **geo)


# the halo path takes a stride or a dilation, not both
_halo_neighbourhood = neighbourhoods("sliding", strides=(1, 2, 3)).map(
    lambda nb: nb if nb.dilation == 1 else dataclasses.replace(nb, stride=1)
)


@st.composite
def halo_cases(draw) -> Case:
    """Sliding attention: NeighborhoodAttention and generic Sliding (every border, dilation, tile)."""
    c, heads = draw(_channels())
    nb = draw(_halo_neighbourhood)
    last = draw(st.booleans())
    tile = draw(st.sampled_from([None, 1, 2, 3, 4]))
    if draw(st.booleans()):
        nb = Sliding(nb.kernel_size, nb.dilation, "clamp" if nb.border == "reflect" else nb.border)
        flags = draw(st.booleans()), draw(st.booleans())
        make = functools.partial(
            NeighborhoodAttention, c, heads, nb.kernel_size, nb.dilation, nb.border, *flags, channels_last=last
        )
    else:
        make = functools.partial(Aggregation, nb, draw(_qk_source(c, heads, nb)), channels_last=last)
    return Case(make, channels=c, channels_last=last, halo_tile=tile, **draw(_geometry(nb)))


@st.composite
def global_cases(draw) -> Case:
    """Global attention: GlobalAttention and generic Global + QKAttention (custom scale)."""
    c, heads = draw(_channels())
    last = draw(st.booleans())
    geo = draw(_geometry())
    if draw(st.booleans()):
        make = functools.partial(GlobalAttention, c, heads, draw(st.booleans()), channels_last=last)
    else:
        make = functools.partial(Aggregation, Global(), draw(_qk_source(c, heads, Global())), channels_last=last)
    return Case(make, channels=c, channels_last=last, **geo)


CASES = {
    "conv": conv_cases,
    "decomposed": decomposed_cases,
    "batched_conv": batched_conv_cases,
    "shifted_sum": shifted_sum_cases,
    "window_sdpa": window_cases,
    "halo_sdpa": halo_cases,
    "global_sdpa": global_cases,
}
