"""VAN: the Visual Attention Network, built from the [`LKA`][unifiedops.LKA] preset.

From "Visual Attention Network" (Guo, Lu, Liu, Liu, Hu; arXiv 2202.09741; official code
Visual-Attention-Network/VAN-Classification, Apache-2.0). Four stages, each an overlapping
patch embedding (a strided convolution and BatchNorm), a run of blocks and a LayerNorm. A block is

* ``x + layer_scale_1 * attn(norm1(x))`` with BatchNorm ``norm1`` and ``attn`` the attention
  wrapper ``proj_1 (1x1) -> GELU -> LKA -> proj_2 (1x1)`` plus its own shortcut;
* ``x + layer_scale_2 * mlp(norm2(x))`` with BatchNorm ``norm2`` and
  ``mlp = fc1 (1x1) -> depth-wise 3x3 -> GELU -> fc2 (1x1)``.

Every parameter and buffer sits under the official name (``patch_embed{i}``, ``block{i}.{j}``,
``norm{i}``, ``head``), so an official checkpoint's ``state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from unifiedops import DWConv
from unifiedops.lka import LKA
from zoo.blocks import Block, Branch, FlatBackbone, PatchEmbed, drop_path_rates, register_variants

__all__ = ["VAN", "van_block"]


def van_block(
    dim: int,
    mlp_ratio: float = 4.0,
    *,
    kernel_size: int = 21,
    dilation: int = 3,
    layer_scale_init: float = 1e-2,
    drop_path: float = 0.0,
    proj_drop: float = 0.0,
) -> Block:
    """One VAN block under the official parameter names.

    Args:
        dim: Width of the block (input, output, attention and LKA channels).
        mlp_ratio: Expansion of ``fc1``: the MLP is ``int(dim * mlp_ratio)`` wide.
        kernel_size: The large kernel the [`LKA`][unifiedops.LKA] decomposes.
        dilation: The dilation of its second depth-wise convolution.
        layer_scale_init: Initial value of ``layer_scale_1`` and ``layer_scale_2``.
        drop_path: Stochastic depth applied to the attention and MLP residuals.
        proj_drop: Dropout after the GELU and after ``fc2`` (the official ``drop_rate``).

    Returns:
        A [`Block`][zoo.blocks.Block], ``(B, C, H, W) -> (B, C, H, W)``.
    """
    # The attention wrapper carries a shortcut of its own inside the block's residual.
    attn = Block(
        Branch(
            [
                ("proj_1", nn.Conv2d(dim, dim, 1)),
                ("activation", nn.GELU()),
                ("spatial_gating_unit", LKA(dim, kernel_size, dilation)),
                ("proj_2", nn.Conv2d(dim, dim, 1)),
            ]
        ),
        dim=dim,
    )
    hidden = int(dim * mlp_ratio)
    # The official depth-wise conv is wrapped in a module of its own: its key is `mlp.dwconv.dwconv`.
    mlp = nn.Sequential(
        OrderedDict(
            fc1=nn.Conv2d(dim, hidden, 1),
            dwconv=nn.Sequential(OrderedDict(dwconv=DWConv(hidden, 3))),
            act=nn.GELU(),
            drop1=nn.Dropout(proj_drop),
            fc2=nn.Conv2d(hidden, dim, 1),
            drop2=nn.Dropout(proj_drop),
        )
    )
    return Block(
        Branch(
            [("norm1", nn.BatchNorm2d(dim)), ("attn", attn)],
            layer_scale=("layer_scale_1", layer_scale_init),
            drop_path=drop_path,
        ),
        Branch(
            [("norm2", nn.BatchNorm2d(dim)), ("mlp", mlp)],
            layer_scale=("layer_scale_2", layer_scale_init),
            drop_path=drop_path,
        ),
        dim=dim,
    )


class VAN(FlatBackbone):
    """Visual Attention Network (Guo et al., arXiv 2202.09741).

    Args:
        embed_dims: Channels of each stage.
        depths: Blocks per stage.
        mlp_ratios: MLP expansion of each stage.
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        global_pool: Pooling before the classifier (timm's ``SelectAdaptivePool2d`` type).
        drop_rate: Dropout before the classifier (timm's meaning; the official model has none).
        proj_drop_rate: Dropout inside the MLPs (the official ``drop_rate``).
        drop_path_rate: Stochastic depth of the last block, rising linearly from 0.
        kernel_size: The large kernel of every [`LKA`][unifiedops.LKA].
        dilation: The dilation of its dilated depth-wise convolution.
        layer_scale_init: Initial layer scale.
        norm_eps: Epsilon of the stage-end LayerNorms.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; any ``H, W`` (stage ``i`` has
        ``ceil(H / 4 / 2^i)`` rows).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 3, 12, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kernel_size: int = 21,
        dilation: int = 3,
        layer_scale_init: float = 1e-2,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.check_stage_args(embed_dims, depths=depths, mlp_ratios=mlp_ratios)
        rates = drop_path_rates(drop_path_rate, depths)
        block = partial(
            van_block,
            kernel_size=kernel_size,
            dilation=dilation,
            layer_scale_init=layer_scale_init,
            proj_drop=proj_drop_rate,
        )
        for i, dim in enumerate(embed_dims):
            # Overlapping embeddings: 7x7 stride 4 into the first stage, 3x3 stride 2 between stages.
            patch, source = (7, in_chans) if i == 0 else (3, embed_dims[i - 1])
            embed = PatchEmbed(
                source, dim, patch, stride=4 if i == 0 else 2, padding=patch // 2, norm_layer=nn.BatchNorm2d
            )
            self.add_stage(
                [
                    (f"patch_embed{i + 1}", embed),
                    (f"block{i + 1}", [block(dim, mlp_ratios[i], drop_path=rate) for rate in rates[i]]),
                    (f"norm{i + 1}", nn.LayerNorm(dim, eps=norm_eps)),
                ]
            )
        self.finish_stages(embed_dims, num_classes, global_pool, drop_rate)
        self.apply(_init_weights)


@torch.no_grad()
def _init_weights(module: nn.Module) -> None:
    # The official initialisation: N(0, sqrt(2 / fan_out)) for convolutions, truncated normal for Linear
    # (the head); norms keep PyTorch's ones and zeros.
    init_weights_vit_timm(module, needs_reset=False)
    weight = module._parameters.get("weight")
    if weight is None or weight.dim() != 4:
        return
    # Aggregations keep no `groups`: a weight with one input channel per output is depth-wise.
    groups = module.groups if isinstance(module, nn.Conv2d) else (weight.shape[0] if weight.shape[1] == 1 else 1)
    fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3] // groups
    weight.normal_(0, math.sqrt(2.0 / fan_out))
    bias = module._parameters.get("bias")
    if bias is not None:
        bias.zero_()


_VARIANTS = {
    "van_b0": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2)),
    "van_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2)),
    "van_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3)),
    "van_b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3)),
}

register_variants(
    VAN,
    _VARIANTS,
    module=__name__,
    first_conv="patch_embed1.proj",
    classifier="head",
    paper="arXiv:2202.09741",
    license="apache-2.0",
)
