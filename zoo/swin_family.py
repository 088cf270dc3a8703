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

from zoo.blocks import register_variants
from zoo.builder import BackboneSpec, SpecBackbone

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

register_variants(
    SpecBackbone,
    {"swin_tiny": dict(spec=SWIN_TINY), "swin_small": dict(spec=SWIN_SMALL), "swin_base": dict(spec=SWIN_BASE)},
    module=__name__,
    first_conv="patch_embed.proj",
    classifier="head.fc",
    paper="arXiv:2103.14030",
    license="mit",
)
register_variants(
    SpecBackbone,
    {"acmix_swin_tiny": dict(spec=ACMIX_SWIN_TINY), "acmix_swin_small": dict(spec=ACMIX_SWIN_SMALL)},
    module=__name__,
    first_conv="patch_embed.proj",
    classifier="head",
    paper="arXiv:2111.14556",
    license="mit",
)
