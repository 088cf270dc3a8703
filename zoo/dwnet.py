"""DWNet: Swin with each window attention replaced by a depth-wise convolution block.

From Han et al., "On the Connection between Local Attention and Dynamic Depth-wise Convolution", ICLR 2022
(arXiv 2106.04263; official code Atten4Vis/DemystifyLocalViT). The macro is Swin's (patch embedding
``conv 4/4 + LN``, patch merging at the end of stages 1-3, final LN, a bare ``head``), with no shift, no
heads and no relative bias. A block is ``x + DropPath(attn2conv(x))`` with no pre-norm, then
``x + DropPath(mlp(bn(x)))`` with BatchNorm; ``attn2conv`` is ``1x1 -> BN -> ReLU -> 7x7 depth-wise -> BN ->
ReLU -> 1x1 -> BN`` (the two ``1x1`` play the roles of Swin's ``qkv`` and ``proj``).

The three published variants are one spec with three mixers in the ``7x7`` slot:

* ``dwnet_tiny`` / ``dwnet_base``: static depth-wise conv ([`DWConv`][unifiedops.DWConv]);
* ``dynamic_dwnet_tiny`` / ``dynamic_dwnet_base``: one kernel per sample predicted from the pooled map
  ([`DynamicDWConv`][unifiedops.DynamicDWConv]). (The official repository's last commit builds a static
  conv for this configuration by accident; its first commit, the paper's parameter counts and this module
  build the dynamic one.)
* ``i_dynamic_dwnet_tiny`` / ``i_dynamic_dwnet_base``: one kernel per position and group predicted from the
  centre feature ([`InhomogeneousDWConv`][unifiedops.InhomogeneousDWConv]) with 32 groups in every stage
  (the official code passes its per-stage head counts as channels per group).

The state-dict keys are the official ones (``layers.{i}.blocks.{j}.attn2conv.{conv0,bn0,conv,bn,conv2,bn2}``,
``layers.{i}.blocks.{j}.bn``, ``layers.{i}.blocks.{j}.mlp.{fc1,fc2}``, ``layers.{i}.downsample``,
``norm``, ``head``), so official checkpoints load unchanged. Unlike the official code (which asserts even
maps), odd maps are zero-padded before patch merging, so any input size of at least 32 runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from zoo.blocks import Block, Branch, register_variants
from zoo.builder import BackboneSpec, SpecBackbone, StageSpec, mlp_branch, register_block

__all__ = [
    "DWNET_BASE",
    "DWNET_TINY",
    "DYNAMIC_DWNET_BASE",
    "DYNAMIC_DWNET_TINY",
    "I_DYNAMIC_DWNET_BASE",
    "I_DYNAMIC_DWNET_TINY",
    "dwnet_block",
]


def dwnet_block(stage: StageSpec, mixer: Callable[[bool], nn.Module], *, drop_path: float, layout: str) -> nn.Module:
    """DWNet's block around ``mixer``: ``x + attn2conv(x)``, then ``x + mlp(bn(x))``.

    ``attn2conv`` = ``conv0`` (1x1, no bias) -> ``bn0`` -> ReLU -> ``conv`` (the mixer) -> ``bn`` -> ReLU ->
    ``conv2`` (1x1, no bias) -> ``bn2``, channels-first. Registered as the block preset ``"dwnet"``.

    Args:
        stage: The stage; ``stage.norm`` is the norm before the MLP (DWNet: ``"batchnorm"``).
        mixer: Builds the spatial mixer in the ``conv`` slot (called with ``channels_last=False``).
        drop_path: Stochastic-depth rate of both residuals.
        layout: Stream layout between blocks.

    Returns:
        The block.
    """
    dim = stage.dim
    attn2conv = nn.Sequential(
        OrderedDict(
            conv0=nn.Conv2d(dim, dim, 1, bias=False),
            bn0=nn.BatchNorm2d(dim),
            act0=nn.ReLU(),
            conv=mixer(False),
            bn=nn.BatchNorm2d(dim),
            act1=nn.ReLU(),
            conv2=nn.Conv2d(dim, dim, 1, bias=False),
            bn2=nn.BatchNorm2d(dim),
        )
    )
    attn2conv.layout = "NCHW"
    return Block(
        Branch([("attn2conv", attn2conv)], drop_path=drop_path),
        mlp_branch(stage, drop_path=drop_path, layout=layout, norm_name="bn"),
        dim=dim,
        layout=layout,
    )


register_block("dwnet", dwnet_block)

_OFFICIAL_SWIN = dict(downsample_position="trailing", classifier="head")

DWNET_TINY = BackboneSpec.pyramid(
    96,
    (2, 2, 6, 2),
    stage=dict(block="dwnet", mixer="dwconv", mixer_kwargs={"kernel_size": 7}, norm="batchnorm"),
    drop_path_rate=0.2,
    **_OFFICIAL_SWIN,
)
"""DWNet-T: widths 96-768, depths 2, 2, 6, 2, static 7x7 depth-wise conv."""

DWNET_BASE = BackboneSpec.pyramid(
    128,
    (2, 2, 18, 2),
    stage=dict(block="dwnet", mixer="dwconv", mixer_kwargs={"kernel_size": 7}, norm="batchnorm"),
    drop_path_rate=0.5,
    **_OFFICIAL_SWIN,
)
"""DWNet-B: widths 128-1024, depths 2, 2, 18, 2, static 7x7 depth-wise conv."""

DYNAMIC_DWNET_TINY = DWNET_TINY.with_mixer("dynamic_dwconv", kernel_size=7)
"""Dynamic DWNet-T: DWNet-T with per-sample (homogeneous) dynamic kernels."""
DYNAMIC_DWNET_BASE = DWNET_BASE.with_mixer("dynamic_dwconv", kernel_size=7)
"""Dynamic DWNet-B: DWNet-B with per-sample (homogeneous) dynamic kernels."""
I_DYNAMIC_DWNET_TINY = DWNET_TINY.with_mixer("inhomogeneous_dwconv", kernel_size=7, groups=32)
"""I-dynamic DWNet-T: DWNet-T with per-position (inhomogeneous) dynamic kernels, 32 groups per stage."""
I_DYNAMIC_DWNET_BASE = DWNET_BASE.with_mixer("inhomogeneous_dwconv", kernel_size=7, groups=32)
"""I-dynamic DWNet-B: DWNet-B with per-position (inhomogeneous) dynamic kernels, 32 groups per stage."""

_SPECS = {
    "dwnet_tiny": DWNET_TINY,
    "dwnet_base": DWNET_BASE,
    "dynamic_dwnet_tiny": DYNAMIC_DWNET_TINY,
    "dynamic_dwnet_base": DYNAMIC_DWNET_BASE,
    "i_dynamic_dwnet_tiny": I_DYNAMIC_DWNET_TINY,
    "i_dynamic_dwnet_base": I_DYNAMIC_DWNET_BASE,
}

register_variants(
    SpecBackbone,
    {name: dict(spec=spec) for name, spec in _SPECS.items()},
    module=__name__,
    first_conv="patch_embed.proj",
    classifier="head",
    paper="arXiv:2106.04263",
    license="mit",
)
