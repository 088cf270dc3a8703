"""The benchmarked operators and their baselines, built for one configuration.

Both the timing loop (in the main process) and the memory probe (in a fresh process per
measurement) build their operators here, so they measure the same thing.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from unifiedops import (
    LKA,
    Aggregation,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    MixingAttention,
    NeighborhoodAttention,
    UniFormerGlobalMHRA,
    UniFormerLocalMHRA,
    WindowAttention,
    XVolution,
)
from unifiedops.acmix import ACmix, ACmixWindowAttention
from unifiedops.dcd import DCDConv2d
from unifiedops.mixture import CondConv, DYConv
from unifiedops.odconv import ODConv2d
from unifiedops.warehouse import Warehouse

__all__ = [
    "CONFIGS",
    "NATTEN_INSTALL",
    "SWEEP",
    "SWEEP_OPS",
    "Config",
    "Op",
    "build_ops",
    "missing_ops",
    "natten_status",
    "sweep_config",
]

SEED = 0
"""Seed of every module's initialisation, so that each process builds the same weights."""


@dataclass(frozen=True)
class Config:
    """One input shape and operator setting.

    Attributes:
        key: Short name used on the command line (``a`` to ``g``).
        suite: Which operators it builds: ``"single"`` (the one-aggregation presets),
            ``"composite"`` (LKA, ACmix, the UniFormer and MixFormer mixers, X-volution),
            ``"warehouse"`` (KernelWarehouse, CondConv, DY-Conv against the convolution they replace)
            or ``"natten"`` (``NeighborhoodAttention`` against NATTEN's module, when installed).
        title: What the configuration stands for.
        batch: Batch size ``B``.
        channels: Channels ``C``.
        size: Height and width of the feature map.
        heads: Attention heads.
        kernel: Kernel and window size ``k = w``.
        shift: Swin's cyclic shift.
        groups: Weight groups of the inhomogeneous dynamic depth-wise conv (DWNet: 32 in every stage).
        quick: Whether ``--quick`` runs it unless ``--sizes`` names it (NATTEN's CPU form takes
            seconds per call at the target's size, too long for a smoke run).
    """

    key: str
    suite: str
    title: str
    batch: int
    channels: int
    size: int
    heads: int
    kernel: int = 7
    shift: int = 3
    groups: int = 32
    quick: bool = True

    def describe(self) -> str:
        """One line giving every setting, as used in the report."""
        shape = f"({self.key}) {self.title}: B={self.batch}, C={self.channels}, {self.size}x{self.size}"
        if self.suite == "warehouse":
            return f"{shape}, {self.kernel}x{self.kernel} convolution {self.channels} -> {self.channels}"
        if self.suite == "natten":
            return (
                f"{shape}, heads={self.heads} (head_dim {self.channels // self.heads}), k={self.kernel}, "
                "border clamp, no relative-position bias"
            )
        return (
            f"{shape}, heads={self.heads} (head_dim {self.channels // self.heads}), k=w={self.kernel}, "
            f"shift={self.shift}" + (f", IDW groups={self.groups}" if self.suite == "single" else "")
        )


CONFIGS: dict[str, Config] = {
    c.key: c
    for c in (
        Config("a", "single", "Swin stage 1", batch=8, channels=96, size=56, heads=3),
        Config("b", "single", "Swin stage 3", batch=8, channels=384, size=14, heads=12),
        Config("c", "composite", "ResNet stage 1 (ACmix's 64 -> 64)", batch=8, channels=64, size=56, heads=4),
        Config("d", "warehouse", "ResNet-18 stage 3 conv", batch=8, channels=256, size=14, heads=1, kernel=3),
        Config("e", "warehouse", "ResNet-18 stage 3 conv, batch 1", batch=1, channels=256, size=14, heads=1, kernel=3),
        Config("f", "natten", "NATTEN peer, Swin stage 1", batch=8, channels=96, size=56, heads=3, quick=False),
        Config("g", "natten", "NATTEN peer, Swin stage 1, batch 1", batch=1, channels=96, size=56, heads=3),
    )
}
"""The benchmark's configurations by key."""

SWEEP = Config("s", "single", "resolution sweep", batch=1, channels=96, size=56, heads=3)
"""Shapes of the time-vs-resolution sweep (Swin stage 1's width at batch 1; the size varies)."""

SWEEP_OPS = ("dwconv", "dynamic_dwconv", "inhomogeneous_dwconv", "window", "neighborhood", "global")
"""The single-aggregation presets timed by the sweep, each on its fast path (keys of the ``"single"`` suite)."""


def sweep_config(size: int) -> Config:
    """The sweep's configuration at ``size x size``."""
    return replace(SWEEP, size=size)


NATTEN_INSTALL = "pip install --no-build-isolation natten"
"""How to install NATTEN's pure-Python form on a CPU machine (in seconds, without downloading torch again)."""


def _natten() -> Any | None:
    """The ``natten`` module, or ``None`` when it cannot be imported."""
    try:
        return importlib.import_module("natten")
    except ImportError:
        return None


def natten_status(device: Any = "cpu") -> str:
    """What NATTEN runs here: its version and the backend ``na2d`` picks on ``device``, or that it is missing."""
    natten = _natten()
    if natten is None:
        return f"NATTEN not installed (`{NATTEN_INSTALL}`)"
    from natten.backends import choose_backend

    q = torch.empty(1, 8, 8, 1, 32, device=device)
    try:
        backend = choose_backend(q, q, q, torch_compile=False)
    except (NotImplementedError, ValueError) as error:  # no backend for this device
        backend = f"none ({error})"
    libnatten = getattr(natten, "HAS_LIBNATTEN", False)
    detail = (
        "compiled libnatten kernels"
        if libnatten
        else "pure-Python build, no libnatten: FlexAttention without torch.compile, which materialises "
        "every query's scores over the whole map and masks them to the neighbourhood"
    )
    return f"NATTEN {natten.__version__}, `na2d` backend `{backend}` ({detail})"


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
    """Build every benchmarked operator of ``config``'s suite on ``device``, in eval mode.

    Args:
        config: Shapes and settings.
        device: Where to build the modules and inputs.

    Returns:
        The operators by key.
    """
    builders = {"single": _single_ops, "composite": _composite_ops, "warehouse": _warehouse_ops, "natten": _natten_ops}
    return builders[config.suite](config, device)


def missing_ops(config: Config) -> dict[str, str]:
    """Operators of ``config``'s suite that cannot be built here, with the reason (by key)."""
    if config.suite == "natten" and _natten() is None:
        return {"natten": f"NATTEN not installed (`{NATTEN_INSTALL}`)"}
    return {}


def _single_ops(config: Config, device: torch.device) -> dict[str, Op]:
    """The one-aggregation presets.

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


def _composite_ops(config: Config, device: torch.device) -> dict[str, Op]:
    """The composite presets on one ``(B, C, H, W)`` map; ACmix also on its reference path (the
    literal gather of every key and value, as the official unfold does), sharing its weights."""
    torch.manual_seed(SEED)
    c, heads, k = config.channels, config.heads, config.kernel
    x = torch.randn(config.batch, c, config.size, config.size, device=device)
    acmix = _ready(ACmix(c, c, kernel_att=k, head=heads), device)
    acmix_reference = _ready(_copy(ACmix(c, c, kernel_att=k, head=heads, path="reference"), acmix), device)
    modules = {
        "acmix": (f"ACmix(C, C, {k}, head={heads})", acmix),
        "acmix_reference": (f"ACmix(C, C, {k}, head={heads})", acmix_reference),
        "acmix_swin": (
            f"ACmixWindowAttention(C, {heads}, {k}, shift_size={config.shift})",
            ACmixWindowAttention(c, heads, k, config.shift),
        ),
        "lka": ("LKA(C)", LKA(c)),
        "uniformer_local": ("UniFormerLocalMHRA(C)", UniFormerLocalMHRA(c)),
        "uniformer_global": (f"UniFormerGlobalMHRA(C, head_dim={c // heads})", UniFormerGlobalMHRA(c, c // heads)),
        "mixing_attention": (f"MixingAttention(C, {heads}, {k})", MixingAttention(c, heads, k)),
        "xvolution": ("XVolution(C, C)", XVolution(c, c)),
    }
    return {
        key: Op(key, label, getattr(module, "path", "composite"), functools.partial(_ready(module, device), x))
        for key, (label, module) in modules.items()
    }


def _warehouse_ops(config: Config, device: torch.device) -> dict[str, Op]:
    """A KernelWarehouse conv at 1x (cell_num_ratio 1: as many parameters as the conv), CondConv,
    DY-Conv, ODConv 1x and DCD, against the ``nn.Conv2d`` they replace."""
    torch.manual_seed(SEED)
    c, k = config.channels, config.kernel
    x = torch.randn(config.batch, c, config.size, config.size, device=device)
    conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
    net = nn.Module()
    net.warehouse_manager = Warehouse(cell_num_ratio=1)
    net.conv = net.warehouse_manager.reserve(c, c, k, bias=False, warehouse_name="stage2_layer0_conv0")
    net.warehouse_manager.build(net)
    net = _ready(net, device)
    modules = {
        "conv": (f"nn.Conv2d(C, C, {k})", conv),
        "kw": (f"KWConv2d(C, C, {k}), 1x", net.conv),
        "condconv": (f"CondConv(C, C, {k}, num_experts=8)", CondConv(c, c, k, num_experts=8, bias=False)),
        "dyconv": (f"DYConv(C, C, {k}, num_kernels=4)", DYConv(c, c, k, num_kernels=4, bias=False)),
        "odconv": (f"ODConv2d(C, C, {k}), 1x", ODConv2d(c, c, k, kernel_num=1)),
        "dcd": (f"DCDConv2d(C, C, {k})", DCDConv2d(c, c, k)),
    }
    return {
        key: Op(key, label, getattr(module, "path", "baseline"), functools.partial(_ready(module, device), x))
        for key, (label, module) in modules.items()
    }


def _quiet(run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run without the warnings FlexAttention gives once per process (its unfused CPU form,
    ``return_lse`` deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return run()


def _natten_ops(config: Config, device: torch.device) -> dict[str, Op]:
    """``NeighborhoodAttention`` (border ``"clamp"``, no relative-position bias, on its fast path)
    and, when NATTEN is importable, NATTEN's ``NeighborhoodAttention2D`` with the same weights.

    Both are whole modules on a ``(B, H, W, C)`` input: the ``qkv`` projection, neighbourhood
    attention (NATTEN's is ``na2d``) and the output projection. NATTEN's module loads our module's
    ``qkv`` and ``proj`` weights, so the two outputs are the same function of the input.
    """
    torch.manual_seed(SEED)
    c, heads, k = config.channels, config.heads, config.kernel
    x = torch.randn(config.batch, config.size, config.size, c, device=device)
    ours = _ready(NeighborhoodAttention(c, heads, k, border="clamp", rel_pos_bias=False, channels_last=True), device)
    ops = {"neighborhood_nobias": _preset("neighborhood_nobias", f"NeighborhoodAttention(C, {heads}, {k})", ours, x)}
    natten = _natten()
    if natten is not None:
        from natten.backends import choose_backend

        peer = _ready(_copy(natten.NeighborhoodAttention2D(c, heads, k), ours), device)
        q = torch.empty(config.batch, config.size, config.size, heads, c // heads, device=device)
        backend = choose_backend(q, q, q, torch_compile=False)
        label = f"NATTEN {natten.__version__} NeighborhoodAttention2D (qkv, na2d, proj)"
        ops["natten"] = Op("natten", label, f"natten {backend}", functools.partial(_quiet, functools.partial(peer, x)))
    return ops
