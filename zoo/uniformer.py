"""UniFormer: convolution-style local and attention-style global relation aggregators in one network.

From "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (Li, Wang, Song,
Gao, Liu, Qiao; IEEE TPAMI 2023, arXiv 2201.09450; official code Sense-X/UniFormer,
``image_classification/models/uniformer.py``, Apache-2.0). Four stages, each a non-overlapping
patch embedding (a strided convolution and LayerNorm) and a run of blocks; a final BatchNorm.

* Stages 1-2, ``CBlock``: ``x = pos_embed(x)`` (the [`DynamicPositionEmbedding`][unifiedops.DynamicPositionEmbedding]
  ``x + DWConv3x3(x)``), ``x + local_MHRA(BN(x))`` with the
  [`UniFormerLocalMHRA`][unifiedops.UniFormerLocalMHRA] preset (``conv1 -> 5x5 depth-wise attn -> conv2``,
  registered inline so its keys sit on the block), ``x + CMlp(BN(x))`` (1x1, GELU, 1x1).
* Stages 3-4, ``SABlock``: ``x = pos_embed(x)``, ``x + global_MHRA(LN(x))`` with the
  [`UniFormerGlobalMHRA`][unifiedops.UniFormerGlobalMHRA] preset (``qkv``, ``proj``; ``dim // head_dim``
  heads), ``x + Mlp(LN(x))``.

Every parameter and buffer sits under the official name (``patch_embed{i}``, ``blocks{i}.{j}``,
``norm``, ``head``), so an official checkpoint's ``state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from unifiedops.mixers import DynamicPositionEmbedding, UniFormerGlobalMHRA, UniFormerLocalMHRA
from zoo.blocks import INLINE, Block, Branch, FlatBackbone, PatchEmbed, drop_path_rates, register_variants

__all__ = ["UniFormer", "uniformer_attention_block", "uniformer_conv_block"]


def uniformer_conv_block(dim: int, mlp_ratio: float = 4.0, *, drop_path: float = 0.0, proj_drop: float = 0.0) -> Block:
    """UniFormer's ``CBlock`` (local MHRA) under the official parameter names.

    Args:
        dim: Channels ``C``.
        mlp_ratio: Hidden channels of the MLP over ``C``.
        drop_path: Stochastic-depth rate of both residuals.
        proj_drop: Dropout inside the MLP.

    Returns:
        A channels-first [`Block`][zoo.blocks.Block], ``(B, C, H, W) -> (B, C, H, W)``.
    """
    return Block(
        # The position embedding carries its own residual: the branch has none.
        Branch([("pos_embed", DynamicPositionEmbedding(dim))], residual=False),
        Branch([("norm1", nn.BatchNorm2d(dim)), (INLINE, UniFormerLocalMHRA(dim))], drop_path=drop_path),
        Branch(
            [("norm2", nn.BatchNorm2d(dim)), ("mlp", Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, use_conv=True))],
            drop_path=drop_path,
        ),
        dim=dim,
    )


def uniformer_attention_block(
    dim: int,
    mlp_ratio: float = 4.0,
    *,
    head_dim: int = 64,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    layer_scale_init: float | None = None,
    norm_eps: float = 1e-6,
    drop_path: float = 0.0,
    proj_drop: float = 0.0,
) -> Block:
    """UniFormer's ``SABlock`` (global MHRA) under the official parameter names.

    Args:
        dim: Channels ``C``.
        mlp_ratio: Hidden channels of the MLP over ``C``.
        head_dim: Channels per head; ``dim // head_dim`` heads.
        qkv_bias: Whether ``qkv`` has a bias.
        qk_scale: Attention logit scale (``None``: ``(C / heads) ** -0.5``).
        layer_scale_init: Initial ``gamma_1``/``gamma_2`` (``None``: no layer scale, as in
            ``uniformer_small`` and ``uniformer_base``; the official ``_ls`` models use ``1e-6``).
        norm_eps: Epsilon of the LayerNorms.
        drop_path: Stochastic-depth rate of both residuals.
        proj_drop: Dropout inside the MLP.

    Returns:
        A channels-last [`Block`][zoo.blocks.Block], ``(B, H, W, C) -> (B, H, W, C)``.
    """
    scale = (lambda name: (name, layer_scale_init)) if layer_scale_init is not None else (lambda name: None)
    norm = partial(nn.LayerNorm, eps=norm_eps)
    attn = UniFormerGlobalMHRA(dim, head_dim, qkv_bias, qk_scale, channels_last=True)
    return Block(
        Branch([("pos_embed", DynamicPositionEmbedding(dim))], residual=False),
        Branch([("norm1", norm(dim)), ("attn", attn)], layer_scale=scale("gamma_1"), drop_path=drop_path),
        Branch(
            [("norm2", norm(dim)), ("mlp", Mlp(dim, int(dim * mlp_ratio), drop=proj_drop))],
            layer_scale=scale("gamma_2"),
            drop_path=drop_path,
        ),
        dim=dim,
        layout="NHWC",
    )


class UniFormer(FlatBackbone):
    """UniFormer (Li et al., TPAMI 2023), with the default (non-overlapping) patch embeddings.

    Args:
        depths: Blocks per stage.
        embed_dims: Channels of each stage.
        head_dim: Channels per attention head.
        mlp_ratio: MLP expansion.
        global_stages: How many of the last stages use global MHRA; the others use local MHRA.
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        global_pool: Pooling before the classifier (timm's ``SelectAdaptivePool2d`` type).
        qkv_bias: Whether the attention ``qkv`` has a bias.
        qk_scale: Attention logit scale (``None``: ``head_dim ** -0.5``).
        layer_scale_init: Layer scale of the attention blocks (``None``: none).
        drop_rate: Dropout before the classifier (timm's meaning; the official model has none).
        proj_drop_rate: Dropout after the first patch embedding and inside the MLPs (the official ``drop_rate``).
        drop_path_rate: Stochastic depth of the last block, rising linearly from 0.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; ``H, W`` of at least 32 (each patch embedding
        floors: stage ``i`` has ``floor(H / 4 / 2^i)`` rows).
    """

    norm_attr = "norm"

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 8, 3),
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        global_stages: int = 2,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        layer_scale_init: float | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.check_stage_args(embed_dims, depths=depths)
        if not 0 <= global_stages <= len(embed_dims):
            raise ValueError(f"global_stages must be between 0 and {len(embed_dims)}, got {global_stages}")
        for dim in embed_dims[len(embed_dims) - global_stages :]:
            # Heads are `dim // head_dim`, as in the official code; they must split `dim` evenly.
            if not 1 <= head_dim <= dim or dim % (dim // head_dim):
                raise ValueError(
                    f"head_dim={head_dim} does not split the {dim} channels of an attention stage into heads"
                )
        rates = drop_path_rates(drop_path_rate, depths)
        local = partial(uniformer_conv_block, mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate)
        attention = partial(
            uniformer_attention_block,
            mlp_ratio=mlp_ratio,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            layer_scale_init=layer_scale_init,
            proj_drop=proj_drop_rate,
        )
        for i, dim in enumerate(embed_dims):
            # Non-overlapping embeddings: 4x4 into the first stage, 2x2 between stages.
            source = embed_dims[i - 1] if i else in_chans
            make = attention if i >= len(embed_dims) - global_stages else local
            layers = [
                (f"patch_embed{i + 1}", PatchEmbed(source, dim, 2 if i else 4, norm_layer=nn.LayerNorm)),
                (f"blocks{i + 1}", [make(dim, drop_path=r) for r in rates[i]]),
            ]
            if i == 0:
                layers.insert(1, ("pos_drop", nn.Dropout(proj_drop_rate)))
            self.add_stage(layers)
        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self.finish_stages(embed_dims, num_classes, global_pool, drop_rate)
        # The official initialisation touches only Linear layers: truncated normal (std 0.02), zero bias.
        self.apply(partial(init_weights_vit_timm, needs_reset=False))

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input is large enough for the four patch embeddings (the identity otherwise).

        Args:
            x: Images ``(B, 3, H, W)`` (3 is ``in_chans``).

        Returns:
            ``x`` unchanged: stage 0 starts with its own patch embedding.

        Raises:
            ValueError: If ``H`` or ``W`` is below the last stage's stride (32 with four stages).
        """
        reduction = self.feature_info[-1]["reduction"]
        if x.shape[-1] < reduction or x.shape[-2] < reduction:
            raise ValueError(f"UniFormer needs an input of at least {reduction}x{reduction}, got {tuple(x.shape[-2:])}")
        return x


_VARIANTS = {
    "uniformer_small": dict(depths=(3, 4, 8, 3)),
    "uniformer_base": dict(depths=(5, 8, 20, 7)),
}

register_variants(
    UniFormer,
    _VARIANTS,
    module=__name__,
    first_conv="patch_embed1.proj",
    classifier="head",
    paper="arXiv:2201.09450",
    license="apache-2.0",
)
