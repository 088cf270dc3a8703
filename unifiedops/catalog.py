"""The catalog: every preset, and every family of the zoo, with its point on the three axes.

Library data for ``unifiedops list`` (the page on the command shows the table) and for anyone who
wants the table in code. Each [`PresetEntry`][unifiedops.catalog.PresetEntry] names a preset
class, builds an example instance of it (the Swin stage-1 setting where it applies: ``C = 96``,
``k = w = 7``, 3 heads), and says where it sits on the three axes (see Concepts):

* **sparsity**: which positions a position reads (``sliding k×k``, ``window w×w``, ``global``,
  ``point``) and how channels mix (``depth-wise``, ``heads``, ``dense``);
* **shared over**: what one weight is reused across (positions, samples, the channels of a group
  or head, and for KernelWarehouse the layers of a warehouse);
* **dynamism**: where the weights come from (``static``, ``per sample``, ``per position``, or
  ``attention``, per position from query-key products).

The axes are written with the symbols of the presets page (``k``, ``w``, ``G``) so they hold for
any argument values. Each [`ZooFamily`][unifiedops.catalog.ZooFamily] maps zoo model names (a
shell pattern) to the presets that do their token mixing. This module imports neither ``zoo`` nor
``timm``.

Examples:
    >>> from unifiedops.catalog import PRESETS, preset_entry
    >>> entry = preset_entry("DWConv")
    >>> entry.example, entry.dynamism, entry.fast_path, entry.parameter_count()
    ('DWConv(96, 7)', 'static', 'conv', 4800)
    >>> len(PRESETS) >= 17
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unifiedops.acmix import ACmix, ACmixWindowAttention
from unifiedops.dcd import DCDConv2d, DCDLinear
from unifiedops.instances import (
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    WindowAttention,
)
from unifiedops.lka import LKA
from unifiedops.mixers import DynamicPositionEmbedding, MixingAttention, UniFormerGlobalMHRA, UniFormerLocalMHRA
from unifiedops.mixture import CondConv, DYConv
from unifiedops.odconv import ODConv2d
from unifiedops.warehouse import KWConv1d, KWConv2d, KWLinear, Warehouse
from unifiedops.xvolution import MergedXVolution, XVolution

__all__ = [
    "NOT_PRESETS",
    "PRESETS",
    "ZOO_FAMILIES",
    "PresetEntry",
    "WarehouseExample",
    "ZooFamily",
    "preset_classes",
    "preset_entry",
    "zoo_family",
]

# --- presets ------------------------------------------------------------------------------------


class WarehouseExample(nn.Module):
    """A KernelWarehouse layer together with its [`Warehouse`][unifiedops.Warehouse].

    A KW layer holds only its attention and bias; its kernel cells live in the warehouse, which a
    network keeps as a submodule. The example instance of a KW preset is this pair, so that its
    parameter count includes the cells (at ``cell_num_ratio = 1`` exactly the parameters of the
    kernel it replaces).

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        kernel_size: Kernel size (ignored for ``"linear"``).
        layer_type: ``"conv2d"``, ``"conv1d"`` or ``"linear"``.

    Attributes:
        warehouse_manager: The warehouse.
        layer: The KW layer ([`KWConv2d`][unifiedops.KWConv2d], [`KWConv1d`][unifiedops.KWConv1d]
            or [`KWLinear`][unifiedops.KWLinear]).

    Shape:
        That of the layer: ``(B, C, H, W) -> (B, O, H, W)`` (``"conv2d"``), ``(B, C, L) -> (B, O, L)``
        (``"conv1d"``) or ``(B, ..., C) -> (B, ..., O)`` (``"linear"``).
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 1, layer_type: str = "conv2d") -> None:
        super().__init__()
        self.warehouse_manager = Warehouse()
        self.layer = self.warehouse_manager.reserve(
            in_planes, out_planes, kernel_size, warehouse_name="stage0_layer0_conv0", layer_type=layer_type
        )
        self.warehouse_manager.build(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the layer.

        Args:
            x: The layer's input: ``(B, C, H, W)``, ``(B, C, L)`` or ``(B, ..., C)``.

        Returns:
            The layer's output: ``(B, O, H, W)``, ``(B, O, L)`` or ``(B, ..., O)``.
        """
        return self.layer(x)


def _merged_xvolution(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Module:
    return XVolution(in_channels, out_channels, kernel_size).eval().merge()


@dataclass(frozen=True)
class PresetEntry:
    """One preset: its class, an example instance, and its point on the three axes.

    Attributes:
        name: The class name, as exported by ``unifiedops``.
        cls: The preset class.
        args: Positional arguments of the example.
        kwargs: Keyword arguments of the example.
        sparsity: Neighbourhood and channel mixing (``"sliding k×k, depth-wise"``).
        sharing: What one weight is shared over (``"positions, samples"``).
        dynamism: ``"static"``, ``"per sample"``, ``"per position"`` or ``"attention"``; a composite
            joins its parts with ``" + "``.
        paper: Where the operator comes from.
        fast_path: The execution path(s) the example runs on, its aggregations' paths in module
            order joined with ``" + "``.
        input_shape: An input the example accepts.
        constructor: What builds the example, when it is not ``cls`` itself (a KW layer with its
            warehouse, a merged X-volution).
        call: How the example is written, when it is not ``name(*args, **kwargs)``.
    """

    name: str
    cls: type[nn.Module]
    args: tuple[Any, ...]
    sparsity: str
    sharing: str
    dynamism: str
    paper: str
    fast_path: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (2, 96, 14, 14)
    constructor: Callable[..., nn.Module] | None = None
    call: str | None = None

    @property
    def example(self) -> str:
        """The example as a call, e.g. ``"DWConv(96, 7)"``."""
        if self.call is not None:
            return self.call
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"

    def build(self) -> nn.Module:
        """A fresh example instance (for KW layers a [`WarehouseExample`][unifiedops.catalog.WarehouseExample]).

        Returns:
            The module, in training mode (eval mode for the merged X-volution).
        """
        return (self.constructor or self.cls)(*self.args, **self.kwargs)

    def parameter_count(self, module: nn.Module | None = None) -> int:
        """Parameters of the example instance (shared parameters counted once).

        Args:
            module: An instance from [`build`][unifiedops.catalog.PresetEntry.build]; ``None``
                builds one on the ``meta`` device, which allocates nothing.

        Returns:
            The number of parameters.
        """
        if module is None:
            import torch

            with torch.device("meta"):
                module = self.build()
        return sum(p.numel() for p in module.parameters())


_DWNET = "DWNet (Han et al., ICLR 2022), arXiv:2106.04263"
_SWIN = "Swin (Liu et al., ICCV 2021), arXiv:2103.14030"
_ACMIX = "ACmix (Pan et al., CVPR 2022), arXiv:2111.14556"
_KW = "KernelWarehouse (Li & Yao, ICML 2024), arXiv:2308.08361"
_UNIFORMER = "UniFormer (Li et al., TPAMI 2023), arXiv:2201.09450"
_ODCONV = "ODConv (Li, Zhou & Yao, ICLR 2022), arXiv:2209.07947"
_DCD = "DCD (Li et al., ICLR 2021), arXiv:2103.08756"
_XVOLUTION = "X-volution (Chen et al., 2021), arXiv:2106.02253"

PRESETS: tuple[PresetEntry, ...] = (
    PresetEntry(
        "DWConv",
        DWConv,
        (96, 7),
        sparsity="sliding k×k, depth-wise",
        sharing="positions, samples",
        dynamism="static",
        paper="MobileNets (Howard et al., 2017), arXiv:1704.04861; DWNet's 7×7",
        fast_path="conv",
    ),
    PresetEntry(
        "DynamicDWConv",
        DynamicDWConv,
        (96, 7),
        sparsity="sliding k×k, depth-wise",
        sharing="positions",
        dynamism="per sample",
        paper=_DWNET,
        fast_path="batched_conv",
    ),
    PresetEntry(
        "InhomogeneousDWConv",
        InhomogeneousDWConv,
        (96, 7),
        kwargs={"groups": 32},
        sparsity="sliding k×k, depth-wise",
        sharing="the C/G channels of a group",
        dynamism="per position",
        paper=_DWNET,
        fast_path="shifted_sum",
    ),
    PresetEntry(
        "WindowAttention",
        WindowAttention,
        (96, 3, 7),
        sparsity="window w×w (shifted), heads",
        sharing="the channels of a head",
        dynamism="attention",
        paper=_SWIN,
        fast_path="window_sdpa",
    ),
    PresetEntry(
        "NeighborhoodAttention",
        NeighborhoodAttention,
        (96, 3, 7),
        sparsity="sliding k×k (clamped), heads",
        sharing="the channels of a head",
        dynamism="attention",
        paper="NAT (Hassani et al., CVPR 2023), arXiv:2204.07143",
        fast_path="halo_sdpa",
    ),
    PresetEntry(
        "GlobalAttention",
        GlobalAttention,
        (96, 3),
        sparsity="global, heads",
        sharing="the channels of a head",
        dynamism="attention",
        paper="ViT (Dosovitskiy et al., ICLR 2021), arXiv:2010.11929",
        fast_path="global_sdpa",
    ),
    PresetEntry(
        "LKA",
        LKA,
        (96, 21, 3),
        sparsity="point (x ⊙ a), a from DW (2d−1)² → dilated DW ⌈K/d⌉² → 1×1: a K×K field",
        sharing="— (one weight per channel and position)",
        dynamism="per position",
        paper="VAN (Guo et al., CVMJ 2023), arXiv:2202.09741",
        fast_path="shifted_sum + conv",
    ),
    PresetEntry(
        "ACmix",
        ACmix,
        (96, 96, 7, 3),
        sparsity="sliding k×k (reflect), heads ∥ shift conv 3×3",
        sharing="the channels of a head ∥ positions, samples",
        dynamism="attention + static",
        paper=_ACMIX,
        fast_path="halo_sdpa + conv",
    ),
    PresetEntry(
        "ACmixWindowAttention",
        ACmixWindowAttention,
        (96, 3, 7),
        sparsity="window w×w (shifted), heads ∥ shift conv 3×3",
        sharing="the channels of a head ∥ positions, samples",
        dynamism="attention + static",
        paper=_ACMIX,
        fast_path="window_sdpa + conv",
    ),
    PresetEntry(
        "KWConv2d",
        KWConv2d,
        (96, 96, 3),
        sparsity="sliding k×k, dense (in cells)",
        sharing="positions; cells across the layers of a warehouse",
        dynamism="per sample",
        paper=_KW,
        fast_path="batched_conv",
        constructor=WarehouseExample,
        call="Warehouse().reserve(96, 96, 3)",
    ),
    PresetEntry(
        "KWConv1d",
        KWConv1d,
        (96, 96, 3),
        kwargs={"layer_type": "conv1d"},
        sparsity="sliding k (1-D), dense (in cells)",
        sharing="positions; cells across the layers of a warehouse",
        dynamism="per sample",
        paper=_KW,
        fast_path="batched_conv",
        input_shape=(2, 96, 56),
        constructor=WarehouseExample,
        call="Warehouse().reserve(96, 96, 3, layer_type='conv1d')",
    ),
    PresetEntry(
        "KWLinear",
        KWLinear,
        (96, 96),
        kwargs={"layer_type": "linear"},
        sparsity="point (tokens), dense (in cells)",
        sharing="tokens; cells across the layers of a warehouse",
        dynamism="per sample",
        paper=_KW,
        fast_path="batched_conv",
        input_shape=(2, 49, 96),
        constructor=WarehouseExample,
        call="Warehouse().reserve(96, 96, layer_type='linear')",
    ),
    PresetEntry(
        "CondConv",
        CondConv,
        (96, 96, 3),
        sparsity="sliding k×k, dense",
        sharing="positions",
        dynamism="per sample",
        paper="CondConv (Yang et al., NeurIPS 2019), arXiv:1904.04971",
        fast_path="batched_conv",
    ),
    PresetEntry(
        "DYConv",
        DYConv,
        (96, 96, 3),
        sparsity="sliding k×k, dense",
        sharing="positions",
        dynamism="per sample",
        paper="Dynamic convolution (Chen et al., CVPR 2020), arXiv:1912.03458",
        fast_path="batched_conv",
    ),
    PresetEntry(
        "ODConv2d",
        ODConv2d,
        (96, 96, 3),
        sparsity="sliding k×k, dense",
        sharing="positions",
        dynamism="per sample",
        paper=_ODCONV,
        fast_path="batched_conv",
    ),
    PresetEntry(
        "DCDConv2d",
        DCDConv2d,
        (96, 96, 3),
        sparsity="sliding k×k, dense",
        sharing="positions",
        dynamism="per sample",
        paper=_DCD,
        fast_path="decomposed",
    ),
    PresetEntry(
        "DCDLinear",
        DCDLinear,
        (96, 96),
        sparsity="point, dense",
        sharing="— (one weight per sample and class)",
        dynamism="per sample",
        paper=_DCD + " (its dynamic classifier)",
        fast_path="decomposed",
        input_shape=(2, 96),
    ),
    PresetEntry(
        "UniFormerLocalMHRA",
        UniFormerLocalMHRA,
        (96, 5),
        sparsity="sliding k×k, depth-wise, between 1×1 dense layers",
        sharing="positions, samples",
        dynamism="static",
        paper=_UNIFORMER,
        fast_path="conv",
    ),
    PresetEntry(
        "UniFormerGlobalMHRA",
        UniFormerGlobalMHRA,
        (96,),
        kwargs={"head_dim": 32},
        sparsity="global, heads",
        sharing="the channels of a head",
        dynamism="attention",
        paper=_UNIFORMER,
        fast_path="global_sdpa",
    ),
    PresetEntry(
        "DynamicPositionEmbedding",
        DynamicPositionEmbedding,
        (96, 3),
        sparsity="sliding k×k, depth-wise (plus the identity)",
        sharing="positions, samples",
        dynamism="static",
        paper=_UNIFORMER + " (after CPVT)",
        fast_path="conv",
    ),
    PresetEntry(
        "MixingAttention",
        MixingAttention,
        (96, 3, 7),
        sparsity="window w×w, heads ∥ sliding 3×3, depth-wise",
        sharing="the channels of a head ∥ positions, samples",
        dynamism="attention + static, each branch gating the other",
        paper="MixFormer (Chen et al., CVPR 2022), arXiv:2204.02557",
        fast_path="window_sdpa + conv",
    ),
    PresetEntry(
        "XVolution",
        XVolution,
        (96, 96, 3),
        sparsity="sliding k×k, dense ∥ sliding 3×3 dilated by L, one group",
        sharing="positions, samples ∥ all channels",
        dynamism="static + per position",
        paper=_XVOLUTION,
        fast_path="conv + shifted_sum",
    ),
    PresetEntry(
        "MergedXVolution",
        MergedXVolution,
        (96, 96, 3),
        sparsity="sliding k×k, dense",
        sharing="— (one kernel per position)",
        dynamism="per position",
        paper=_XVOLUTION + " (merged for inference)",
        fast_path="reference",
        constructor=_merged_xvolution,
        call="XVolution(96, 96, 3).eval().merge()",
    ),
)
"""Every preset, in the order of the presets page: the one-aggregation presets, then the composites."""

NOT_PRESETS: Mapping[str, str] = {
    "Aggregation": "the generic operator, configured by a neighbourhood and a weight source",
    "Warehouse": "the parameter store of KernelWarehouse layers; it computes nothing",
}
"""The ``nn.Module`` classes exported by ``unifiedops`` that are not presets, with the reason.

The rule: a preset is a class in ``unifiedops.__all__`` that subclasses ``nn.Module`` and is not
listed here. Every preset has an entry in [`PRESETS`][unifiedops.catalog.PRESETS] (the test suite
checks it, so a new preset cannot ship without its point on the axes)."""


def preset_classes() -> dict[str, type[nn.Module]]:
    """The preset classes exported by ``unifiedops``, by name (see [`NOT_PRESETS`][unifiedops.catalog.NOT_PRESETS]).

    Returns:
        Name to class, in the order of ``unifiedops.__all__``.
    """
    import unifiedops

    found = {}
    for name in unifiedops.__all__:
        obj = getattr(unifiedops, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and name not in NOT_PRESETS:
            found[name] = obj
    return found


def preset_entry(name: str) -> PresetEntry:
    """The catalog entry of one preset.

    Args:
        name: A preset class name (``"DWConv"``).

    Returns:
        Its entry.

    Raises:
        ValueError: If ``name`` is not in the catalog.
    """
    for entry in PRESETS:
        if entry.name == name:
            return entry
    raise ValueError(f"name must be a preset in the catalog, got name={name!r}; known: {[e.name for e in PRESETS]}")


# --- zoo families -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooFamily:
    """A family of zoo models and the presets that do its token mixing.

    Attributes:
        name: The family, as the docs name it.
        pattern: Shell-style pattern over model names (``"van_*"``).
        mixers: Catalog names of the presets that mix tokens, in the order the stages use them.
        paper: The paper the family comes from.
    """

    name: str
    pattern: str
    mixers: tuple[str, ...]
    paper: str

    def matches(self, model: str) -> bool:
        """Whether a model name belongs to this family.

        Args:
            model: A model name (``"van_b0"``).

        Returns:
            Whether it matches ``pattern`` (case-sensitive shell pattern).
        """
        return fnmatch.fnmatchcase(model, self.pattern)

    def axes(self) -> tuple[str, str, str]:
        """The family's point on the three axes, from the catalog entries of its mixers.

        Returns:
            ``(sparsity, sharing, dynamism)``, each joined with ``" / "`` over the mixers.
        """
        entries = [preset_entry(m) for m in self.mixers]
        return (
            " / ".join(e.sparsity for e in entries),
            " / ".join(e.sharing for e in entries),
            " / ".join(e.dynamism for e in entries),
        )


ZOO_FAMILIES: tuple[ZooFamily, ...] = (
    ZooFamily("Swin", "swin_*", ("WindowAttention",), _SWIN),
    ZooFamily("ACmix-Swin", "acmix_swin_*", ("ACmixWindowAttention",), _ACMIX),
    ZooFamily("DWNet", "dwnet_*", ("DWConv",), _DWNET),
    ZooFamily("dynamic DWNet", "dynamic_dwnet_*", ("DynamicDWConv",), _DWNET),
    ZooFamily("inhomogeneous dynamic DWNet", "i_dynamic_dwnet_*", ("InhomogeneousDWConv",), _DWNET),
    ZooFamily("VAN", "van_*", ("LKA",), "VAN (Guo et al., CVMJ 2023), arXiv:2202.09741"),
    ZooFamily("ACmix-ResNet", "acmix_resnet*", ("ACmix",), _ACMIX),
    ZooFamily("KW ResNet", "kw_resnet*", ("KWConv2d",), _KW),
    ZooFamily("KW MobileNetV2", "kw_mobilenetv2_*", ("KWConv2d",), _KW),
    ZooFamily("KW ConvNeXt", "kw_convnext_*", ("KWConv2d",), _KW),
    ZooFamily("ODConv ResNet", "od_resnet*", ("ODConv2d",), _ODCONV),
    ZooFamily("ODConv MobileNetV2", "od_mobilenetv2_*", ("ODConv2d",), _ODCONV),
    ZooFamily("DCD ResNet", "dcd_resnet*", ("DCDConv2d", "DCDLinear"), _DCD),
    ZooFamily("DCD MobileNetV2", "dcd_mobilenetv2_*", ("DCDConv2d", "DCDLinear"), _DCD),
    ZooFamily("ConvNeXt", "uo_convnext_*", ("DWConv",), "ConvNeXt (Liu et al., CVPR 2022), arXiv:2201.03545"),
    ZooFamily("UniFormer", "uniformer_*", ("UniFormerLocalMHRA", "UniFormerGlobalMHRA"), _UNIFORMER),
    ZooFamily("MixFormer", "mixformer_*", ("MixingAttention",), "MixFormer (Chen et al., CVPR 2022), arXiv:2204.02557"),
)
"""The zoo's families; every zoo model matches exactly one (the test suite checks it)."""


def zoo_family(model: str) -> ZooFamily | None:
    """The family of a zoo model name.

    Args:
        model: A model name (``"van_b0"``).

    Returns:
        Its family, or ``None`` if no family pattern matches.
    """
    return next((family for family in ZOO_FAMILIES if family.matches(model)), None)
