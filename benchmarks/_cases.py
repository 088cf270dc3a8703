"""The benchmarked operators and their baselines, built for one configuration.

Both the timing loop (in the main process) and the memory probe (in a fresh process per
measurement) build their operators here, so they measure the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from unifiedops import (
    Aggregation,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    WindowAttention,
)

__all__ = ["CONFIGS", "Config", "Op", "build_ops"]

SEED = 0
"""Seed of every module's initialisation, so that each process builds the same weights."""


@dataclass(frozen=True)
class Config:
    """One input shape and operator setting.

    Attributes:
        key: Short name used on the command line (``a``, ``b``).
        title: What the configuration stands for.
        batch: Batch size ``B``.
        channels: Channels ``C``.
        size: Height and width of the feature map.
        heads: Attention heads.
        kernel: Kernel and window size ``k = w``.
        shift: Swin's cyclic shift.
        groups: Weight groups of the inhomogeneous dynamic depth-wise conv (DWNet: 32 in every stage).
    """

    key: str
    title: str
    batch: int
    channels: int
    size: int
    heads: int
    kernel: int = 7
    shift: int = 3
    groups: int = 32

    def describe(self) -> str:
        """One line giving every setting, as used in the report."""
        return (
            f"({self.key}) {self.title}: B={self.batch}, C={self.channels}, {self.size}x{self.size}, "
            f"heads={self.heads} (head_dim {self.channels // self.heads}), k=w={self.kernel}, "
            f"shift={self.shift}, IDW groups={self.groups}"
        )


CONFIGS: dict[str, Config] = {
    c.key: c
    for c in (
        Config("a", "Swin stage 1", batch=8, channels=96, size=56, heads=3),
        Config("b", "Swin stage 3", batch=8, channels=384, size=14, heads=12),
    )
}


@dataclass(frozen=True)
class Op:
    """One forward pass to measure.

    Attributes:
        key: Identifier used by the benchmark's loops and ratios.
        label: Name shown in the report.
        path: The execution path it runs (for presets), or ``"baseline"``.
        run: Runs the forward pass on the configuration's input and returns its output.
    """

    key: str
    label: str
    path: str
    run: Callable[[], torch.Tensor]


M = TypeVar("M", bound=nn.Module)


def _ready(module: M, device: torch.device) -> M:
    return module.to(device).eval()


def _copy(module: M, source: nn.Module) -> M:
    module.load_state_dict(source.state_dict())
    return module


def _preset(key: str, label: str, module: Aggregation, x: torch.Tensor) -> Op:
    return Op(key, label, module.path, functools.partial(module, x))


def build_ops(config: Config, device: torch.device) -> dict[str, Op]:
    """Build every benchmarked operator for ``config`` on ``device``, in eval mode.

    Operators compared with each other share their weights: the raw ``F.conv2d`` uses the
    ``DWConv`` preset's, the ``WindowAttention`` preset loads timm's Swin block's attention, and
    the reference-path ``NeighborhoodAttention`` is a copy of the fast one.

    Args:
        config: Shapes and settings.
        device: Where to build the modules and inputs.

    Returns:
        The operators by key; each closes over its input, ``(B, C, H, W)`` for the convolutions and
        ``(B, H, W, C)`` for the attentions (``channels_last=True``, Swin's layout).
    """
    torch.manual_seed(SEED)
    c, heads, k = config.channels, config.heads, config.kernel
    x = torch.randn(config.batch, c, config.size, config.size, device=device)
    x_nhwc = torch.randn(config.batch, config.size, config.size, c, device=device)

    dw = _ready(DWConv(c, k), device)
    dynamic = _ready(DynamicDWConv(c, k), device)
    inhomogeneous = _ready(InhomogeneousDWConv(c, k, groups=config.groups), device)
    swin = _ready(
        SwinTransformerBlock(
            c, input_resolution=(config.size, config.size), num_heads=heads, window_size=k, shift_size=config.shift
        ),
        device,
    )
    window = _ready(_copy(WindowAttention(c, heads, k, shift_size=config.shift, channels_last=True), swin.attn), device)
    neighborhood = _ready(NeighborhoodAttention(c, heads, k, channels_last=True), device)
    reference = _ready(_copy(NeighborhoodAttention(c, heads, k, channels_last=True), neighborhood), device)
    reference.path = "reference"
    global_attention = _ready(GlobalAttention(c, heads, channels_last=True), device)

    ops = (
        _preset("dwconv", f"DWConv(C, {k})", dw, x),
        Op(
            "conv2d",
            f"F.conv2d(groups=C, padding={k // 2})",
            "baseline",
            functools.partial(F.conv2d, x, dw.weight, dw.bias, padding=k // 2, groups=c),
        ),
        _preset("dynamic_dwconv", f"DynamicDWConv(C, {k})", dynamic, x),
        _preset("inhomogeneous_dwconv", f"InhomogeneousDWConv(C, {k}, groups={config.groups})", inhomogeneous, x),
        _preset("window", f"WindowAttention(C, {heads}, {k}, shift_size={config.shift})", window, x_nhwc),
        Op("timm_swin", "timm SwinTransformerBlock._attn", "baseline", functools.partial(swin._attn, x_nhwc)),
        _preset("neighborhood", f"NeighborhoodAttention(C, {heads}, {k})", neighborhood, x_nhwc),
        _preset("neighborhood_reference", f"NeighborhoodAttention(C, {heads}, {k})", reference, x_nhwc),
        _preset("global", f"GlobalAttention(C, {heads})", global_attention, x_nhwc),
    )
    return {op.key: op for op in ops}
