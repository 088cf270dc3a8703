"""The builder's building parts: norms, mixers, blocks and downsampling layers, each a registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timm.layers import LayerNorm2d, Mlp
from torch import nn

from unifiedops import (
    LKA,
    ACmix,
    ACmixWindowAttention,
    DCDConv2d,
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    ODConv2d,
    WindowAttention,
)
from unifiedops.catalog import WarehouseExample
from zoo.blocks import (
    LAYOUTS,
    BatchNormChannelsLast,
    Block,
    Branch,
    PatchEmbed,
    PatchMerging,
)

if TYPE_CHECKING:
    from zoo.builder.spec import StageSpec

__all__ = [
    "BLOCKS",
    "DOWNSAMPLES",
    "MIXERS",
    "NORMS",
    "MixerSite",
    "make_norm",
    "mlp_branch",
    "register_block",
    "register_mixer",
]

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


def _acmix(dim: int, site: MixerSite, *, kernel_att: int = 7, kernel_conv: int = 3, num_heads: int = 4) -> nn.Module:
    return ACmix(dim, dim, kernel_att=kernel_att, head=num_heads, kernel_conv=kernel_conv)


def _odconv(
    dim: int, site: MixerSite, *, kernel_size: int = 3, kernel_num: int = 1, reduction: float = 0.0625
) -> nn.Module:
    return ODConv2d(dim, dim, kernel_size, kernel_num=kernel_num, reduction=reduction)


def _dcd(dim: int, site: MixerSite, *, kernel_size: int = 3, pool: int = 1) -> nn.Module:
    return DCDConv2d(dim, dim, kernel_size, pool=pool)


def _kernelwarehouse(dim: int, site: MixerSite, *, kernel_size: int = 3) -> nn.Module:
    # One warehouse per layer (cell_num_ratio 1: as many cells as the kernel it replaces); sharing
    # across layers needs a network-level warehouse, which the spec builder does not hold.
    return WarehouseExample(dim, dim, kernel_size)


for _name, _factory in {
    "window_attention": _windowed(WindowAttention, "window_attention"),
    "acmix_window": _windowed(ACmixWindowAttention, "acmix_window"),
    "neighborhood_attention": _neighborhood_attention,
    "global_attention": _global_attention,
    "dwconv": _dwconv,
    "dynamic_dwconv": _dynamic_dwconv,
    "inhomogeneous_dwconv": _inhomogeneous_dwconv,
    "lka": _lka,
    "acmix": _acmix,
    "odconv": _odconv,
    "dcd": _dcd,
    "kernelwarehouse": _kernelwarehouse,
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
