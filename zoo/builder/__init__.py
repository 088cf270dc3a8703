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

from zoo.builder.model import SpecBackbone, create_from_spec, register_backbone
from zoo.builder.parts import (
    BLOCKS,
    DOWNSAMPLES,
    MIXERS,
    NORMS,
    MixerSite,
    make_norm,
    mlp_branch,
    register_block,
    register_mixer,
)
from zoo.builder.spec import BackboneSpec, StageSpec

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
