"""Swin Transformer and ACmix-Swin, as specs of the custom-backbone builder.

Swin: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(arXiv 2103.14030). ACmix: Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022
(arXiv 2111.14556), whose Swin variant puts [`ACmixWindowAttention`][unifiedops.ACmixWindowAttention] in
every block.

* ``swin_tiny``, ``swin_small``, ``swin_base``: timm's layout (patch merging at the start of stages 2-4,
  ``head.fc``), so the state dict of timm's ``swin_*_patch4_window7_224`` loads unchanged.
* ``acmix_swin_tiny``, ``acmix_swin_small``: the official ACmix code's layout (official Swin: patch merging
  at the end of stages 1-3, ``head``); its checkpoints load unchanged (their derived ``attn_mask`` buffers
  are dropped on load).

Like timm and the official code, a block shrinks its window to the map and drops the shift where the map is
no larger than the window at the reference size 224 (stage 4, ``7 x 7``). Other input sizes run: maps are
zero-padded at the bottom and right to a multiple of the window before the cyclic shift, and odd maps before
patch merging (the official Swin detection code's order; timm shifts before it pads, so at sizes whose maps
are not window multiples its outputs differ slightly from ours).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from zoo.blocks import pretrained_cfg
from zoo.builder import BackboneSpec, create_from_spec

__all__ = ["ACMIX_SWIN_SMALL", "ACMIX_SWIN_TINY", "SWIN_BASE", "SWIN_SMALL", "SWIN_TINY"]

SWIN_TINY = BackboneSpec.pyramid(
    96,
    (2, 2, 6, 2),
    stage=dict(mixer="window_attention", mixer_kwargs={"head_dim": 32, "window_size": 7}),
    drop_path_rate=0.2,
)
"""Swin-T: widths 96-768, depths 2, 2, 6, 2, heads of 32 channels (3-24), window 7; timm's layout."""

SWIN_SMALL = dataclasses.replace(SWIN_TINY.with_stages(depths=(2, 2, 18, 2)), drop_path_rate=0.3)
"""Swin-S: Swin-T with 18 blocks in stage 3."""

SWIN_BASE = dataclasses.replace(SWIN_SMALL.with_stages(dims=(128, 256, 512, 1024)), drop_path_rate=0.5)
"""Swin-B: Swin-S at widths 128-1024 (4-32 heads)."""

# The official ACmix code is the official Swin code: trailing patch merging, a bare `head`, and an
# `attn_mask` buffer in every shifted block that the model derives anyway.
_OFFICIAL_SWIN = dict(downsample_position="trailing", classifier="head", ignore_keys=("attn_mask",))

ACMIX_SWIN_TINY = dataclasses.replace(
    SWIN_TINY.with_mixer("acmix_window", head_dim=32, window_size=7), **_OFFICIAL_SWIN
)
"""ACmix-Swin-T: Swin-T with ACmix's window attention plus shift convolution in every block."""

ACMIX_SWIN_SMALL = dataclasses.replace(
    SWIN_SMALL.with_mixer("acmix_window", head_dim=32, window_size=7), **_OFFICIAL_SWIN
)
"""ACmix-Swin-S: Swin-S with ACmix's window attention plus shift convolution in every block."""

_SWIN_PAPER = "arXiv:2103.14030"
_ACMIX_PAPER = "arXiv:2111.14556"

default_cfgs = generate_default_cfgs(
    {
        **{
            name: pretrained_cfg(first_conv="patch_embed.proj", classifier="head.fc", paper=_SWIN_PAPER, license="mit")
            for name in ("swin_tiny", "swin_small", "swin_base")
        },
        **{
            name: pretrained_cfg(first_conv="patch_embed.proj", classifier="head", paper=_ACMIX_PAPER, license="mit")
            for name in ("acmix_swin_tiny", "acmix_swin_small")
        },
    }
)


@register_model
def swin_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-T (28M parameters, 4.5 GFLOPs); timm's ``swin_tiny_patch4_window7_224`` weights load unchanged."""
    return create_from_spec(SWIN_TINY, "swin_tiny", pretrained, **kwargs)


@register_model
def swin_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-S (50M parameters, 8.7 GFLOPs); timm's ``swin_small_patch4_window7_224`` weights load unchanged."""
    return create_from_spec(SWIN_SMALL, "swin_small", pretrained, **kwargs)


@register_model
def swin_base(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B (88M parameters, 15.4 GFLOPs); timm's ``swin_base_patch4_window7_224`` weights load unchanged."""
    return create_from_spec(SWIN_BASE, "swin_base", pretrained, **kwargs)


@register_model
def acmix_swin_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ACmix-Swin-T (30M parameters, 4.6 GFLOPs); official ACmix checkpoints load unchanged."""
    return create_from_spec(ACMIX_SWIN_TINY, "acmix_swin_tiny", pretrained, **kwargs)


@register_model
def acmix_swin_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ACmix-Swin-S (51M parameters, 9.0 GFLOPs); official ACmix checkpoints load unchanged."""
    return create_from_spec(ACMIX_SWIN_SMALL, "acmix_swin_small", pretrained, **kwargs)
