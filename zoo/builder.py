"""Custom backbones from a spec: a stem, stages of blocks around a chosen mixer, a head.

A [`BackboneSpec`][zoo.builder.BackboneSpec] describes a hierarchical backbone as data: a patch-embedding
stem, a tuple of [`StageSpec`][zoo.builder.StageSpec] (depth, width, mixer preset and its options, block
preset, norm, MLP ratio, downsampling), macro norms and a classifier. [`SpecBackbone`][zoo.builder.SpecBackbone]
builds it on the shared [`Backbone`][zoo.blocks.Backbone] interface, and
[`register_backbone`][zoo.builder.register_backbone] registers it with timm under a name of your choice.

The defaults are Swin's macro in timm's layout (patch embedding ``conv 4/4 + LN``, stages of pre-norm
MetaFormer blocks with window attention, patch merging at the start of stages 2-4, a final LN, ``head.fc``),
so timm's Swin checkpoints load into ``BackboneSpec.pyramid(96, (2, 2, 6, 2))``; the published families in
``zoo`` are specs too, and differ from each other in a few fields.

Mixers come from a registry of factories ``factory(dim, site, **options) -> nn.Module`` (see
[`MIXERS`][zoo.builder.MIXERS] and [`register_mixer`][zoo.builder.register_mixer]); blocks from a registry
of block presets ([`BLOCKS`][zoo.builder.BLOCKS], [`register_block`][zoo.builder.register_block]).

Examples:
    >>> import torch
    >>> from zoo.builder import BackboneSpec, SpecBackbone
    >>> spec = BackboneSpec.pyramid(32, (1, 1, 1, 1), stage=dict(mixer="dwconv", mixer_kwargs={"kernel_size": 5}))
    >>> model = SpecBackbone(spec, num_classes=10).eval()
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import LayerNorm2d, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from unifiedops import (
    LKA,
    ACmixWindowAttention,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    WindowAttention,
)
from zoo.blocks import (
    LAYOUTS,
    Backbone,
    BatchNormChannelsLast,
    Block,
    Branch,
    PatchEmbed,
    PatchMerging,
    Stage,
    build_backbone,
    pretrained_cfg,
)

__all__ = [
    "BLOCKS",
    "DOWNSAMPLES",
    "MIXERS",
    "NORMS",
    "BackboneSpec",
    "MixerSite",
    "SpecBackbone",
    "StageSpec",
    "create_from_spec",
    "make_norm",
    "mlp_branch",
    "register_backbone",
    "register_block",
    "register_mixer",
]

# timm's register_model reads the pretrained configs of models registered from this module here.
default_cfgs: dict[str, Any] = {}


# -- norms ----------------------------------------------------------------------------------------------------------

NORMS: dict[str, tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]]] = {
    "layernorm": (nn.LayerNorm, LayerNorm2d),
    "batchnorm": (BatchNormChannelsLast, nn.BatchNorm2d),
}
"""Norm names: each maps to its channels-last and channels-first constructor (called with the width)."""


def make_norm(name: str | None, dim: int, layout: str = "NHWC") -> nn.Module:
    """A norm layer by name, for maps in ``layout``.

    Args:
        name: A key of [`NORMS`][zoo.builder.NORMS], or ``None`` for ``nn.Identity``.
        dim: Channels.
        layout: ``"NHWC"`` or ``"NCHW"``: the layout of the maps it normalises.

    Returns:
        The norm.
    """
    if name is None:
        return nn.Identity()
    if name not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)} or None, got {name!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return NORMS[name][0 if layout == "NHWC" else 1](dim)


# -- mixers ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixerSite:
    """Where a mixer sits: what a mixer factory may need beyond the width.

    Attributes:
        stage: Stage index, from 0.
        block: Block index within the stage, from 0 (Swin shifts the windows of odd blocks).
        resolution: ``(H, W)`` of the stage's maps at the spec's reference ``img_size`` (timm and the
            official Swin shrink the window to it and drop the shift when the map is no larger than the
            window).
        channels_last: Whether the block hands the mixer ``(B, H, W, C)`` maps; a factory may build a
            channels-last mixer then, or ignore it (the block converts to what the mixer reads).
    """

    stage: int
    block: int
    resolution: tuple[int, int]
    channels_last: bool


MixerFactory = Callable[..., nn.Module]
MIXERS: dict[str, MixerFactory] = {}
"""Mixer presets by name: ``factory(dim, site, **options) -> nn.Module`` with ``site`` a
[`MixerSite`][zoo.builder.MixerSite]. Add your own with [`register_mixer`][zoo.builder.register_mixer]."""


def register_mixer(name: str, factory: MixerFactory, *, overwrite: bool = False) -> MixerFactory:
    """Register a mixer factory under ``name`` for use in a [`StageSpec`][zoo.builder.StageSpec].

    Args:
        name: The preset name (``StageSpec(mixer=name)``).
        factory: ``factory(dim, site, **options) -> nn.Module``; the module maps ``(B, C, H, W)`` (or
            channels-last, see [`MixerSite`][zoo.builder.MixerSite]) to the same shape.
        overwrite: Replace an existing entry instead of raising.

    Returns:
        ``factory`` (so this works as a decorator through ``functools.partial``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if name in MIXERS and not overwrite:
        raise ValueError(f"mixer {name!r} is already registered; pass overwrite=True to replace it")
    MIXERS[name] = factory
    return factory


def _num_heads(mixer: str, dim: int, num_heads: int | None, head_dim: int | None) -> int:
    if (num_heads is None) == (head_dim is None):
        raise ValueError(f"{mixer}: give exactly one of num_heads or head_dim")
    if head_dim is not None:
        if dim % head_dim:
            raise ValueError(f"{mixer}: head_dim={head_dim} does not divide the stage width {dim}")
        return dim // head_dim
    return num_heads


def _window(site: MixerSite, window_size: int, shift: bool, fit_window: bool) -> tuple[int, int]:
    """Window and shift of a Swin block: shifted on odd blocks; timm's clamp to small maps."""
    shift_size = window_size // 2 if shift and site.block % 2 else 0
    if fit_window and min(site.resolution) <= window_size:
        return min(site.resolution), 0
    return window_size, shift_size


def _windowed(preset: type[nn.Module], mixer: str) -> MixerFactory:
    """A factory for a Swin-style window preset: shifted on odd blocks, window fitted to small maps."""

    def factory(
        dim: int,
        site: MixerSite,
        *,
        window_size: int = 7,
        num_heads: int | None = None,
        head_dim: int | None = None,
        shift: bool = True,
        fit_window: bool = True,
        qkv_bias: bool = True,
    ) -> nn.Module:
        window, shift_size = _window(site, window_size, shift, fit_window)
        heads = _num_heads(mixer, dim, num_heads, head_dim)
        return preset(dim, heads, window, shift_size, qkv_bias, channels_last=site.channels_last)

    factory.__name__ = factory.__qualname__ = f"_{mixer}"
    return factory


def _neighborhood_attention(
    dim: int,
    site: MixerSite,
    *,
    kernel_size: int = 7,
    num_heads: int | None = None,
    head_dim: int | None = None,
    dilation: int = 1,
    rel_pos_bias: bool = True,
    qkv_bias: bool = True,
) -> nn.Module:
    heads = _num_heads("neighborhood_attention", dim, num_heads, head_dim)
    return NeighborhoodAttention(
        dim,
        heads,
        kernel_size,
        dilation,
        rel_pos_bias=rel_pos_bias,
        qkv_bias=qkv_bias,
        channels_last=site.channels_last,
    )


def _global_attention(
    dim: int, site: MixerSite, *, num_heads: int | None = None, head_dim: int | None = None, qkv_bias: bool = True
) -> nn.Module:
    heads = _num_heads("global_attention", dim, num_heads, head_dim)
    return GlobalAttention(dim, heads, qkv_bias, channels_last=site.channels_last)


def _dwconv(dim: int, site: MixerSite, *, kernel_size: int = 7, dilation: int = 1, bias: bool = True) -> nn.Module:
    return DWConv(dim, kernel_size, dilation, bias)


def _dynamic_dwconv(
    dim: int, site: MixerSite, *, kernel_size: int = 7, reduction: int = 4, bias: bool = True
) -> nn.Module:
    return DynamicDWConv(dim, kernel_size, reduction, bias)


def _inhomogeneous_dwconv(
    dim: int,
    site: MixerSite,
    *,
    kernel_size: int = 7,
    groups: int | None = None,
    group_channels: int | None = None,
    reduction: int = 4,
) -> nn.Module:
    if (groups is None) == (group_channels is None):
        raise ValueError("inhomogeneous_dwconv: give exactly one of groups or group_channels")
    if group_channels is not None:
        if dim % group_channels:
            raise ValueError(f"inhomogeneous_dwconv: group_channels={group_channels} does not divide {dim}")
        groups = dim // group_channels
    return InhomogeneousDWConv(dim, kernel_size, groups=groups, reduction=reduction)


def _lka(dim: int, site: MixerSite, *, kernel_size: int = 21, dilation: int = 3) -> nn.Module:
    return LKA(dim, kernel_size, dilation, channels_last=site.channels_last)


for _name, _factory in {
    "window_attention": _windowed(WindowAttention, "window_attention"),
    "acmix_window": _windowed(ACmixWindowAttention, "acmix_window"),
    "neighborhood_attention": _neighborhood_attention,
    "global_attention": _global_attention,
    "dwconv": _dwconv,
    "dynamic_dwconv": _dynamic_dwconv,
    "inhomogeneous_dwconv": _inhomogeneous_dwconv,
    "lka": _lka,
}.items():
    register_mixer(_name, _factory)


# -- blocks ---------------------------------------------------------------------------------------------------------

BlockFactory = Callable[..., nn.Module]
BLOCKS: dict[str, BlockFactory] = {}
"""Block presets by name: ``factory(stage, mixer, *, drop_path, layout, **options) -> nn.Module``.

``stage`` is the [`StageSpec`][zoo.builder.StageSpec], ``mixer(channels_last) -> nn.Module`` builds this
block's mixer, ``layout`` is the stream layout between blocks. Add your own with
[`register_block`][zoo.builder.register_block]."""


def register_block(name: str, factory: BlockFactory, *, overwrite: bool = False) -> BlockFactory:
    """Register a block preset under ``name`` for use in a [`StageSpec`][zoo.builder.StageSpec].

    Args:
        name: The preset name (``StageSpec(block=name)``).
        factory: ``factory(stage, mixer, *, drop_path, layout, **options) -> nn.Module``.
        overwrite: Replace an existing entry instead of raising.

    Returns:
        ``factory``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if name in BLOCKS and not overwrite:
        raise ValueError(f"block {name!r} is already registered; pass overwrite=True to replace it")
    BLOCKS[name] = factory
    return factory


def mlp_branch(
    stage: StageSpec,
    *,
    drop_path: float,
    layout: str,
    norm_name: str = "norm2",
    mlp_name: str = "mlp",
    layer_scale_name: str = "layer_scale_2",
) -> Branch:
    """The channel-MLP residual branch shared by the block presets: ``x + DropPath(Mlp(norm(x)))``.

    Args:
        stage: The stage (its ``dim``, ``norm``, ``mlp_ratio``, ``layer_scale``).
        drop_path: Stochastic-depth rate.
        layout: Stream layout.
        norm_name: State-dict name of the pre-norm.
        mlp_name: State-dict name of the MLP (timm's ``Mlp``: ``fc1``, GELU, ``fc2``).
        layer_scale_name: Name of the layer-scale parameter, when ``stage.layer_scale`` is set.

    Returns:
        The branch.
    """
    scale = None if stage.layer_scale is None else (layer_scale_name, stage.layer_scale)
    return Branch(
        [
            (norm_name, make_norm(stage.norm, stage.dim, layout)),
            (mlp_name, Mlp(stage.dim, int(stage.dim * stage.mlp_ratio))),
        ],
        layer_scale=scale,
        drop_path=drop_path,
    )


def _metaformer_block(
    stage: StageSpec,
    mixer: Callable[[bool], nn.Module],
    *,
    drop_path: float,
    layout: str,
    mixer_name: str = "attn",
    norm_names: tuple[str, str] = ("norm1", "norm2"),
) -> nn.Module:
    """``x + DropPath(mixer(norm1(x)))``, then ``x + DropPath(mlp(norm2(x)))`` (Swin's and timm's names)."""
    scale = None if stage.layer_scale is None else ("layer_scale_1", stage.layer_scale)
    return Block(
        Branch(
            [(norm_names[0], make_norm(stage.norm, stage.dim, layout)), (mixer_name, mixer(layout == "NHWC"))],
            layer_scale=scale,
            drop_path=drop_path,
        ),
        mlp_branch(stage, drop_path=drop_path, layout=layout, norm_name=norm_names[1]),
        dim=stage.dim,
        layout=layout,
    )


register_block("metaformer", _metaformer_block)


# -- downsampling ---------------------------------------------------------------------------------------------------


def _patch_merging(in_dim: int, out_dim: int, norm: str | None) -> nn.Module:
    return PatchMerging(in_dim, out_dim, norm_layer=lambda d: make_norm(norm, d, "NHWC"), pad_odd=True)


def _conv_downsample(in_dim: int, out_dim: int, norm: str | None) -> nn.Module:
    return PatchEmbed(in_dim, out_dim, 3, stride=2, padding=1, norm_layer=lambda d: make_norm(norm, d, "NCHW"))


DOWNSAMPLES: dict[str, Callable[[int, int, str | None], nn.Module]] = {
    "patch_merging": _patch_merging,
    "conv": _conv_downsample,
}
"""Downsampling layers between stages: ``factory(in_dim, out_dim, norm) -> nn.Module``, halving ``H`` and ``W``.

``"patch_merging"``: Swin's ``2 x 2`` concatenation, ``norm``, ``reduction`` (odd sizes are zero-padded);
``"conv"``: a ``3 x 3`` stride-2 convolution ``proj`` then ``norm``."""


# -- specs ----------------------------------------------------------------------------------------------------------

_LAYOUT_POSITIONS = ("leading", "trailing")


def _frozen_mapping(name: str, value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {key!r}")
    return types.MappingProxyType(dict(value))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks of width ``dim`` around the mixer ``mixer``.

    Args:
        depth: Number of blocks.
        dim: Channels of the stage.
        mixer: A key of [`MIXERS`][zoo.builder.MIXERS].
        mixer_kwargs: Options of the mixer factory (e.g. ``head_dim``, ``window_size``, ``kernel_size``).
        block: A key of [`BLOCKS`][zoo.builder.BLOCKS]: ``"metaformer"`` (pre-norm mixer and MLP branches);
            families add their own (DWNet's ``"dwnet"``).
        block_kwargs: Options of the block factory (e.g. ``mixer_name`` for the mixer's state-dict name).
        norm: The blocks' norm, a key of [`NORMS`][zoo.builder.NORMS] or ``None``.
        mlp_ratio: Hidden width of the MLP over ``dim``.
        layer_scale: Initial value of per-channel layer scales on both branches (``None``: none).
        downsample: The layer that brings the stream into this stage (a key of
            [`DOWNSAMPLES`][zoo.builder.DOWNSAMPLES], or ``None`` to keep the resolution); ignored for the
            first stage, which the stem feeds. Where it is registered (end of the previous stage, or start of
            this one) is [`BackboneSpec.downsample_position`][zoo.builder.BackboneSpec].
    """

    depth: int
    dim: int
    mixer: str = "window_attention"
    mixer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    block: str = "metaformer"
    block_kwargs: Mapping[str, Any] = field(default_factory=dict)
    norm: str | None = "layernorm"
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    downsample: str | None = "patch_merging"

    def __post_init__(self) -> None:
        _positive_int("depth", self.depth)
        _positive_int("dim", self.dim)
        for name in ("mixer", "block"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        object.__setattr__(self, "mixer_kwargs", _frozen_mapping("mixer_kwargs", self.mixer_kwargs))
        object.__setattr__(self, "block_kwargs", _frozen_mapping("block_kwargs", self.block_kwargs))
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)} or None, got {self.norm!r}")
        if self.downsample is not None and self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {sorted(DOWNSAMPLES)} or None, got {self.downsample!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")

    def to_dict(self) -> dict[str, Any]:
        """The stage as a plain dict (the inverse of ``StageSpec(**d)``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["mixer_kwargs"] = dict(self.mixer_kwargs)
        out["block_kwargs"] = dict(self.block_kwargs)
        return out


_STAGE_FIELDS = {f.name for f in dataclasses.fields(StageSpec)}


@dataclass(frozen=True)
class BackboneSpec:
    """A hierarchical backbone: patch-embedding stem, stages, final norm, pooled linear classifier.

    Args:
        stages: The stages, in order.
        patch_size: Kernel and stride of the stem convolution ``patch_embed.proj``.
        macro_norm: The norm outside the blocks: after the stem (``patch_embed.norm``), inside patch merging
            and at the end (``norm``); a key of [`NORMS`][zoo.builder.NORMS] or ``None``.
        downsample_position: ``"leading"``: each stage starts with the layer that brings the stream in
            (``layers.{i}.downsample`` for ``i >= 1``, timm's Swin); ``"trailing"``: each stage ends with the
            layer into the next (``i <= n - 2``, the official Swin, DWNet and ACmix code).
        classifier: Dotted name of the classifier ``Linear``: ``"head.fc"`` (timm) or ``"head"`` (official).
        global_pool: Pooling before the classifier (timm's ``SelectAdaptivePool2d`` type).
        drop_path_rate: Stochastic depth, rising linearly over all blocks from 0 to this.
        img_size: Reference input size: the stage resolutions that mixers may adapt to (Swin's window clamp)
            are computed for it. Other sizes still run.
        layout: Layout of the stream between blocks and of ``forward_features``' output.
        ignore_keys: Leaf names of buffers that official checkpoints carry but that this model derives (the
            official ACmix-Swin's ``attn_mask``); ``load_state_dict`` drops them, so those checkpoints load
            with ``strict=True``.
    """

    stages: tuple[StageSpec, ...]
    patch_size: int = 4
    macro_norm: str | None = "layernorm"
    downsample_position: str = "leading"
    classifier: str = "head.fc"
    global_pool: str = "avg"
    drop_path_rate: float = 0.1
    img_size: int | tuple[int, int] = 224
    layout: str = "NHWC"
    ignore_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stages = tuple(self.stages) if isinstance(self.stages, Iterable) else self.stages
        if not isinstance(stages, tuple) or not stages:
            raise ValueError("stages must be a non-empty sequence of StageSpec")
        stages = tuple(StageSpec(**s) if isinstance(s, Mapping) else s for s in stages)
        for s in stages:
            if not isinstance(s, StageSpec):
                raise TypeError(f"stages must hold StageSpec objects or dicts, got {type(s).__name__}")
        object.__setattr__(self, "stages", stages)
        _positive_int("patch_size", self.patch_size)
        if self.macro_norm is not None and self.macro_norm not in NORMS:
            raise ValueError(f"macro_norm must be one of {sorted(NORMS)} or None, got {self.macro_norm!r}")
        if self.downsample_position not in _LAYOUT_POSITIONS:
            raise ValueError(
                f"downsample_position must be one of {_LAYOUT_POSITIONS}, got {self.downsample_position!r}"
            )
        if not isinstance(self.classifier, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", self.classifier):
            raise ValueError(f"classifier must be a dotted attribute name, got {self.classifier!r}")
        if not isinstance(self.drop_path_rate, (int, float)) or not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"img_size must be a positive int or a pair of them, got {self.img_size!r}")
        object.__setattr__(self, "img_size", size)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "ignore_keys", tuple(self.ignore_keys))
        for i, (prev, cur) in enumerate(itertools.pairwise(stages), start=1):
            if cur.downsample is None and cur.dim != prev.dim:
                raise ValueError(f"stage {i} changes the width from {prev.dim} to {cur.dim} but has no downsample")

    # -- construction helpers -----------------------------------------------------------------------------------

    @classmethod
    def pyramid(
        cls, embed_dim: int, depths: Sequence[int], *, stage: Mapping[str, Any] | None = None, **fields: Any
    ) -> BackboneSpec:
        """Stages whose width doubles from ``embed_dim`` (Swin's widths), all alike otherwise.

        Args:
            embed_dim: Width of the first stage.
            depths: Blocks per stage.
            stage: Other [`StageSpec`][zoo.builder.StageSpec] fields, the same for every stage.
            **fields: Other [`BackboneSpec`][zoo.builder.BackboneSpec] fields.

        Returns:
            The spec.
        """
        _positive_int("embed_dim", embed_dim)
        stage = dict(stage or {})
        clash = {"depth", "dim"} & set(stage)
        if clash:
            raise ValueError(f"stage must not set {sorted(clash)}: they come from depths and embed_dim")
        stages = tuple(StageSpec(depth, embed_dim * 2**i, **stage) for i, depth in enumerate(depths))
        return cls(stages, **fields)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BackboneSpec:
        """A spec from a plain dict (e.g. parsed from YAML or JSON).

        Either ``"stages"``, a list of [`StageSpec`][zoo.builder.StageSpec] field dicts, or ``"depths"`` with
        ``"dims"`` (or ``"embed_dim"``, doubled per stage) and any ``StageSpec`` field at the top level, which
        then applies to every stage. Every other key is a ``BackboneSpec`` field.

        Args:
            config: The dict.

        Returns:
            The spec.

        Examples:
            >>> from zoo.builder import BackboneSpec
            >>> spec = BackboneSpec.from_dict(
            ...     {"depths": [2, 2, 6, 2], "embed_dim": 96, "mixer": "dwconv", "mixer_kwargs": {"kernel_size": 7}}
            ... )
            >>> spec.dims, spec.stages[0].mixer
            ((96, 192, 384, 768), 'dwconv')
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        config = dict(config)
        spec_fields = {f.name for f in dataclasses.fields(cls)}
        shared = {k: config.pop(k) for k in list(config) if k in _STAGE_FIELDS - {"depth", "dim"}}
        if "stages" in config:
            if shared or {"depths", "dims", "embed_dim"} & set(config):
                raise ValueError("give either 'stages' or 'depths' with 'dims'/'embed_dim' and shared stage fields")
            stages = config.pop("stages")
            if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
                raise TypeError("stages must be a list of dicts")
            stages = [dict(s) for s in stages]
        else:
            if "depths" not in config:
                raise ValueError("config needs 'stages', or 'depths' with 'dims' or 'embed_dim'")
            depths = list(config.pop("depths"))
            if ("dims" in config) == ("embed_dim" in config):
                raise ValueError("give exactly one of 'dims' or 'embed_dim' with 'depths'")
            dims = (
                list(config.pop("dims"))
                if "dims" in config
                else [config["embed_dim"] * 2**i for i in range(len(depths))]
            )
            config.pop("embed_dim", None)
            if len(dims) != len(depths):
                raise ValueError(f"dims has {len(dims)} entries, depths {len(depths)}")
            stages = [dict(depth=d, dim=c, **shared) for d, c in zip(depths, dims, strict=True)]
        unknown = set(config) - spec_fields
        if unknown:
            raise ValueError(f"unknown BackboneSpec fields {sorted(unknown)}; known: {sorted(spec_fields)}")
        for s in stages:
            bad = set(s) - _STAGE_FIELDS
            if bad:
                raise ValueError(f"unknown StageSpec fields {sorted(bad)}; known: {sorted(_STAGE_FIELDS)}")
        if "ignore_keys" in config:
            config["ignore_keys"] = tuple(config["ignore_keys"])
        return cls(stages=tuple(StageSpec(**s) for s in stages), **config)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict; ``BackboneSpec.from_dict(spec.to_dict()) == spec``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["stages"] = [s.to_dict() for s in self.stages]
        out["img_size"] = list(self.img_size)
        out["ignore_keys"] = list(self.ignore_keys)
        return out

    # -- variations -----------------------------------------------------------------------------------------------

    def with_mixer(self, mixer: str, *, stages: Iterable[int] | None = None, **mixer_kwargs: Any) -> BackboneSpec:
        """The same backbone with another mixer (and its options) in every stage, or in ``stages``.

        Args:
            mixer: A key of [`MIXERS`][zoo.builder.MIXERS].
            stages: Indices of the stages to change (``None``: all).
            **mixer_kwargs: The new mixer's options (they replace the old ones).

        Returns:
            The new spec.
        """
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {mixer!r}")
        picked = set(range(len(self.stages))) if stages is None else set(stages)
        bad = picked - set(range(len(self.stages)))
        if bad:
            raise ValueError(f"stages must be indices below {len(self.stages)}, got {sorted(bad)}")
        new = tuple(
            dataclasses.replace(s, mixer=mixer, mixer_kwargs=mixer_kwargs) if i in picked else s
            for i, s in enumerate(self.stages)
        )
        return dataclasses.replace(self, stages=new)

    def with_stages(self, **changes: Any) -> BackboneSpec:
        """The same backbone with ``StageSpec`` fields changed in every stage.

        Sequence values of ``depth`` or ``dim`` (alias ``depths``, ``dims``) give one entry per stage;
        other values apply to every stage.

        Args:
            **changes: ``StageSpec`` fields.

        Returns:
            The new spec.
        """
        per_stage = {}
        for alias, name in (("depths", "depth"), ("dims", "dim")):
            if alias in changes:
                changes[name] = changes.pop(alias)
            if name in changes and isinstance(changes[name], Sequence):
                values = tuple(changes.pop(name))
                if len(values) != len(self.stages):
                    raise ValueError(f"{name} needs {len(self.stages)} entries, got {len(values)}")
                per_stage[name] = values
        bad = set(changes) - _STAGE_FIELDS
        if bad:
            raise ValueError(f"unknown StageSpec fields {sorted(bad)}")
        new = tuple(
            dataclasses.replace(s, **changes, **{k: v[i] for k, v in per_stage.items()})
            for i, s in enumerate(self.stages)
        )
        return dataclasses.replace(self, stages=new)

    @property
    def depths(self) -> tuple[int, ...]:
        """Blocks per stage."""
        return tuple(s.depth for s in self.stages)

    @property
    def dims(self) -> tuple[int, ...]:
        """Width per stage."""
        return tuple(s.dim for s in self.stages)

    @property
    def reductions(self) -> tuple[int, ...]:
        """Stride of each stage's map relative to the input."""
        out, r = [], self.patch_size
        for i, s in enumerate(self.stages):
            if i and s.downsample is not None:
                r *= 2
            out.append(r)
        return tuple(out)

    def resolutions(self) -> tuple[tuple[int, int], ...]:
        """``(H, W)`` of each stage's map at ``img_size`` (a stride-2 layer rounds up, as padding does)."""
        h, w = (v // self.patch_size for v in self.img_size)
        out = []
        for i, s in enumerate(self.stages):
            if i and s.downsample is not None:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            out.append((h, w))
        return tuple(out)


# -- the model ------------------------------------------------------------------------------------------------------


def _init_linear(module: nn.Module) -> None:
    # Swin, DWNet and ACmix initialise every Linear this way; convs and preset tables keep their own init.
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SpecBackbone(Backbone):
    """A backbone built from a [`BackboneSpec`][zoo.builder.BackboneSpec].

    State-dict names: ``patch_embed.{proj,norm}``, ``layers.{i}.downsample`` (leading or trailing),
    ``layers.{i}.blocks.{j}.<block's names>``, ``norm``, and the classifier at ``spec.classifier``.

    Args:
        spec: The architecture.
        in_chans: Input channels.
        num_classes: Classes (``0``: ``forward`` returns pooled features).
        global_pool: Pooling type (``None``: the spec's).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth (``None``: the spec's).
        depths: Blocks per stage, replacing the spec's (e.g. a shallow copy for tests).
        img_size: Reference input size, replacing the spec's.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; ``forward_features`` returns the map in ``spec.layout``.
        Odd map sizes are zero-padded at the bottom and right before patch merging, as in timm.
    """

    stage_attr = "layers"
    norm_attr = "norm"
    no_weight_decay_keys = ("relative_position_bias_table", "layer_scale_1", "layer_scale_2")

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        depths: Sequence[int] | None = None,
        img_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(spec, BackboneSpec):
            raise TypeError(f"spec must be a BackboneSpec, got {type(spec).__name__}")
        if depths is not None:
            spec = spec.with_stages(depths=tuple(depths))
        overrides = {k: v for k, v in dict(drop_path_rate=drop_path_rate, img_size=img_size).items() if v is not None}
        spec = dataclasses.replace(spec, **overrides)
        self.spec = spec
        self.in_chans = _positive_int("in_chans", in_chans)
        self.output_fmt = spec.layout
        layout = spec.layout
        trailing = spec.downsample_position == "trailing"

        self.patch_embed = PatchEmbed(
            in_chans,
            spec.dims[0],
            spec.patch_size,
            norm_layer=lambda d: make_norm(spec.macro_norm, d, layout),
            output_fmt=layout,
        )
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths), device="cpu").tolist()
        resolutions = spec.resolutions()
        layers, k = [], 0
        n = len(spec.stages)
        for i, stage in enumerate(spec.stages):
            blocks = []
            for j in range(stage.depth):
                blocks.append(self._block(stage, MixerSite(i, j, resolutions[i], layout == "NHWC"), rates[k], layout))
                k += 1
            if trailing:
                nxt = spec.stages[i + 1] if i + 1 < n else None
                down = self._downsample(nxt.downsample, stage.dim, nxt.dim) if nxt is not None else None
            else:
                prev = spec.stages[i - 1] if i else None
                down = self._downsample(stage.downsample, prev.dim, stage.dim) if prev is not None else None
            layers.append(Stage(blocks, down, downsample_last=trailing))
        self.layers = nn.ModuleList(layers)
        self.norm = make_norm(spec.macro_norm, spec.dims[-1], layout)
        self.init_head(
            spec.dims[-1],
            num_classes,
            spec.global_pool if global_pool is None else global_pool,
            drop_rate,
            classifier=spec.classifier,
        )
        self.set_feature_info(spec.dims, spec.reductions, [f"layers.{i}" for i in range(n)])
        self.apply(_init_linear)
        if spec.ignore_keys:
            self._register_load_state_dict_pre_hook(self._drop_ignored_keys)

    def _block(self, stage: StageSpec, site: MixerSite, drop_path: float, layout: str) -> nn.Module:
        if stage.mixer not in MIXERS:
            raise ValueError(f"stage {site.stage}: mixer must be one of {sorted(MIXERS)}, got {stage.mixer!r}")
        if stage.block not in BLOCKS:
            raise ValueError(f"stage {site.stage}: block must be one of {sorted(BLOCKS)}, got {stage.block!r}")
        factory = MIXERS[stage.mixer]

        def mixer(channels_last: bool) -> nn.Module:
            return factory(stage.dim, dataclasses.replace(site, channels_last=channels_last), **stage.mixer_kwargs)

        return BLOCKS[stage.block](stage, mixer, drop_path=drop_path, layout=layout, **stage.block_kwargs)

    def _downsample(self, kind: str | None, in_dim: int, out_dim: int) -> nn.Module | None:
        return None if kind is None else DOWNSAMPLES[kind](in_dim, out_dim, self.spec.macro_norm)

    def _drop_ignored_keys(self, state_dict: dict, prefix: str, *args: Any) -> None:
        own = set(self.state_dict(keep_vars=True))
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix) :]
            if local.rsplit(".", 1)[-1] in self.spec.ignore_keys and local not in own:
                del state_dict[key]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding: ``(B, in_chans, H, W)`` to the first stage's map in ``spec.layout``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if min(x.shape[2:]) < self.spec.patch_size:
            raise ValueError(f"x must be at least {self.spec.patch_size} pixels high and wide, got {tuple(x.shape)}")
        return self.patch_embed(x)


# -- timm registration ----------------------------------------------------------------------------------------------


def create_from_spec(spec: BackboneSpec, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered spec model through timm (``features_only``, ``pretrained_cfg``, ``out_indices``).

    Family entrypoints call this from their ``@register_model`` functions.

    Args:
        spec: The architecture.
        variant: The registered model name.
        pretrained: Load the weights the pretrained config names (a ``file`` in ``pretrained_cfg_overlay``).
        **kwargs: [`SpecBackbone`][zoo.builder.SpecBackbone] arguments and timm's.

    Returns:
        The model, or its feature wrapper.
    """
    return build_backbone(SpecBackbone, variant, pretrained, spec=spec, **kwargs)


def register_backbone(name: str, spec: BackboneSpec, *, paper: str = "", **cfg: Any) -> Callable[..., nn.Module]:
    """Register ``spec`` with timm as ``name``: then ``timm.create_model(name, ...)`` builds it.

    Args:
        name: A Python identifier that timm does not know yet (timm would silently replace its own entry).
        spec: The architecture.
        paper: What the architecture comes from, for the pretrained config.
        **cfg: Other pretrained-config fields (``mean``, ``std``, ``crop_pct``, ...).

    Returns:
        The timm entrypoint.

    Examples:
        >>> import timm
        >>> from zoo.builder import BackboneSpec, register_backbone
        >>> spec = BackboneSpec.pyramid(32, (1, 1, 2, 1), stage=dict(mixer="dwconv"))
        >>> _ = register_backbone("doc_tiny_dwconv_net", spec)
        >>> [f["num_chs"] for f in timm.create_model("doc_tiny_dwconv_net", features_only=True).feature_info]
        [32, 64, 128, 256]
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a BackboneSpec, got {type(spec).__name__}")
    if timm.is_model(name):
        raise ValueError(f"timm already has a model named {name!r}; choose another name (e.g. 'uo_{name}')")
    for stage in spec.stages:
        if stage.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {stage.mixer!r}")
        if stage.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {stage.block!r}")

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_from_spec(spec, name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"Backbone {name!r} built from a BackboneSpec."
    default_cfgs.update(
        generate_default_cfgs(
            {name: pretrained_cfg(first_conv="patch_embed.proj", classifier=spec.classifier, paper=paper, **cfg)}
        )
    )
    register_model(entrypoint)
    # register_model lists the entrypoint in this module's __all__, where it is no attribute.
    if name in __all__:
        __all__.remove(name)
    return entrypoint
