"""MixFormer B0-B3, built from the [`MixingAttention`][unifiedops.mixers.MixingAttention] preset.

From "MixFormer: Mixing Features across Windows and Dimensions" (Chen, Wu, Wang, Hu, Hu, Ding, Cheng,
Wang; CVPR 2022, arXiv 2204.02557). The official code is PaddlePaddle (PaddleClas, ``MixFormer``
in ``ppcls/arch/backbone/model_zoo/mixformer.py``, only on pull request #1820). The macro, with
the official parameter names:

* ``patch_embed``: three ``3 x 3`` conv-BN-GELU (the first of stride 2, to ``C/2`` channels),
  ``proj`` (``2 x 2`` stride-2 conv to ``C``), ``norm`` (LayerNorm). An input whose sides are not
  multiples of 4 is zero-padded at the bottom and right first, as officially.
* ``layers.i``: ``blocks.j`` of pre-norm mixing attention and pre-norm MLP (ratio 4), each with a
  residual; ``downsample`` (after the blocks, stages 1-3) is BatchNorm then a ``2 x 2`` stride-2
  conv doubling the channels.
* ``norm`` (LayerNorm), then the head: ``last_proj`` (Linear to 1280) and GELU on every position,
  average pooling, ``head``.

Windows are ``7 x 7`` without shift; a stage whose map is not a multiple of 7 is padded inside
[`MixingAttention`][unifiedops.mixers.MixingAttention] exactly as the official block pads. The
official patch merging asserts an even map, so an input works only if its sides, rounded up to a
multiple of 4, are multiples of 32 (224, or 222 x 254; not 200 x 232): other sizes raise a
``ValueError`` naming the size.

Official Paddle weights load with [`convert_paddle_state_dict`][unifiedops.mixers.convert_paddle_state_dict]
(``model.load_state_dict(convert_paddle_state_dict(paddle_sd))``): the names are the official ones
for the whole model, so the mixer's converter serves it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models import generate_default_cfgs, register_model
from torch import nn

from unifiedops.mixers import MixingAttention
from zoo.blocks import Backbone, Block, Branch, PatchEmbed, Stage, build_backbone, pretrained_cfg

__all__ = ["ConvEmbed", "ConvMerging", "MixFormer", "mixing_block"]

_PAPER = "arXiv:2204.02557"
_HEAD_DIM = 1280


class ConvEmbed(PatchEmbed):
    """MixFormer's stem: three ``3 x 3`` conv-BN-GELU (``stem``), then ``proj`` and ``norm``.

    Args:
        in_chans: Input channels.
        embed_dim: Output channels ``C`` (the stem works on ``C/2``).
        patch_size: Total stride; the first stem conv takes half of it, ``proj`` the other half.

    Shape:
        ``(B, in_chans, H, W) -> (B, H', W', C)`` (channels-last) with ``H' = ceil(H/p)``,
        ``W' = ceil(W/p)``, ``p = patch_size``; the input is zero-padded at the bottom and right to a
        multiple of ``patch_size``.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f"patch_size must be an even number >= 2, got {patch_size}")
        half = embed_dim // 2
        super().__init__(half, embed_dim, patch_size // 2, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        for index in range(3):
            stride = patch_size // 2 if index == 0 else 1
            layers += [nn.Conv2d(in_chans if index == 0 else half, half, 3, stride, 1), nn.BatchNorm2d(half), nn.GELU()]
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to a multiple of ``patch_size``, then stem, ``proj`` and ``norm``; channels-last out.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The embedded map ``(B, H', W', C)``, ``H' = ceil(H/p)``, ``W' = ceil(W/p)``, ``C = embed_dim``.
        """
        pad_h, pad_w = (-x.shape[-2]) % self.patch_size, (-x.shape[-1]) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return super().forward(self.stem(x))


class ConvMerging(nn.Module):
    """MixFormer's downsampling: BatchNorm ``norm``, then a ``2 x 2`` stride-2 conv ``reduction``.

    Args:
        dim: Input channels.
        out_dim: Output channels.

    Shape:
        ``(B, C, H, W) -> (B, C_out, H/2, W/2)`` with ``C = dim``, ``C_out = out_dim``; ``H`` and ``W``
        must be even (the official layer asserts it and pads nothing), otherwise a ``ValueError``.
    """

    layout = "NCHW"

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.reduction = nn.Conv2d(dim, out_dim, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise, then halve the map with the stride-2 ``reduction``.

        Args:
            x: A channels-first map ``(B, C, H, W)`` with even ``H`` and ``W``.

        Returns:
            ``(B, C_out, H/2, W/2)``.

        Raises:
            ValueError: If ``H`` or ``W`` is odd.
        """
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(
                f"MixFormer's patch merging needs an even map, got {h}x{w}: the input's sides, rounded up to a "
                "multiple of 4, must be multiples of 32 (e.g. 224x224 or 222x254)"
            )
        return self.reduction(self.norm(x))


def mixing_block(
    dim: int,
    num_heads: int,
    window_size: int = 7,
    dwconv_kernel_size: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    proj_drop: float = 0.0,
    drop_path: float = 0.0,
) -> Block:
    """One MixFormer block: ``x + DropPath(attn(norm1(x)))``, then ``x + DropPath(mlp(norm2(x)))``.

    Args:
        dim: Channels.
        num_heads: Attention heads of the mixing attention (on ``dim / 2`` channels).
        window_size: Attention window.
        dwconv_kernel_size: Kernel of the depth-wise convolution branch.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        qkv_bias: Bias of the ``qkv`` projection.
        qk_scale: Attention logit scale (``None``: ``head_dim ** -0.5``).
        proj_drop: Dropout after the mixer's ``proj`` and in the MLP (official ``drop_rate``).
        drop_path: Stochastic-depth rate of both residuals.

    Returns:
        A channels-last [`Block`][zoo.blocks.Block] with keys ``norm1``, ``attn``, ``norm2``, ``mlp``.
    """
    attn = MixingAttention(
        dim, num_heads, window_size, dwconv_kernel_size, qkv_bias, qk_scale, proj_drop, channels_last=True
    )
    mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
    return Block(
        Branch([("norm1", nn.LayerNorm(dim)), ("attn", attn)], drop_path=drop_path),
        Branch([("norm2", nn.LayerNorm(dim)), ("mlp", mlp)], drop_path=drop_path),
        dim=dim,
        layout="NHWC",
    )


class MixFormer(Backbone):
    """MixFormer (Chen et al., CVPR 2022): conv stem, four stages of mixing blocks, projection head.

    ``forward_features`` returns the final LayerNorm's map (``num_features = 8C`` channels,
    channels-last); ``forward_head`` applies ``last_proj`` and GELU at every position, pools, and
    classifies (``head_hidden_size = 1280``), which is the official order.

    Args:
        embed_dim: Channels ``C`` of stage 1; stage ``i`` has ``C * 2**i``.
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        global_pool: timm pooling type.
        head_dim: Width of ``last_proj`` (1280 officially; ``None``: no projection).
        drop_rate: Dropout before the classifier (timm's convention; the official model has none).
        proj_drop_rate: Dropout after the stem, after each mixer and in each MLP (the official
            ``drop_rate``).
        drop_path_rate: Stochastic depth, increasing linearly over the blocks to this value.
        **block_kwargs: Options of every [`mixing_block`][zoo.mixformer.mixing_block]:
            ``window_size`` (7), ``dwconv_kernel_size`` (3), ``mlp_ratio`` (4), ``qkv_bias``, ``qk_scale``.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``.
    """

    output_fmt = "NHWC"
    stage_attr = "layers"
    no_weight_decay_keys = ("relative_position_bias_table",)
    min_input_multiple = 32
    """Input sides that always work (the stem also pads a side up to 3 short of one)."""

    def __init__(
        self,
        embed_dim: int = 32,
        depths: Sequence[int] = (1, 2, 6, 6),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        head_dim: int | None = _HEAD_DIM,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads must have one entry per stage, got {depths} and {num_heads}")
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {embed_dim}")
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = ConvEmbed(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(proj_drop_rate)
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.layers = nn.ModuleList()
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads, strict=True)):
            first = sum(depths[:i])
            blocks = [
                mixing_block(dim, heads, proj_drop=proj_drop_rate, drop_path=rates[first + j], **block_kwargs)
                for j in range(depth)
            ]
            # The official stage merges after its blocks; its feature map is taken before the merge.
            merge = ConvMerging(dim, dims[i + 1]) if i + 1 < len(dims) else None
            self.layers.append(Stage(blocks, merge, downsample_last=True))
        self.norm = nn.LayerNorm(dims[-1])
        self.last_proj = nn.Linear(dims[-1], head_dim) if head_dim else nn.Identity()
        self.activate = nn.GELU() if head_dim else nn.Identity()
        self.init_head(head_dim or dims[-1], num_classes, global_pool, drop_rate, classifier="head")
        self.num_features = dims[-1]
        self.set_feature_info(dims, [4 * 2**i for i in range(len(dims))], [f"layers.{i}" for i in range(len(dims))])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The official initialisation: truncated normal (std 0.02, cut at 2 std) for every Linear.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stem and its dropout; a channels-last map of stride 4.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The first stage's input ``(B, H/4, W/4, C)`` (sides rounded up, ``C = embed_dim``).
        """
        return self.pos_drop(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``last_proj`` and GELU at every position, then pooling, dropout and ``head``.

        Args:
            x: The output of ``forward_features``, channels-last ``(B, h, w, num_features)``
                (``num_features = 8C``).
            pre_logits: Return the pooled ``head_hidden_size`` features before ``head``.

        Returns:
            Logits ``(B, num_classes)``, or with ``pre_logits`` the pooled features ``(B, 1280)``
            (``(B, head_hidden_size)``; ``(B, 8C)`` without ``last_proj``).
        """
        return super().forward_head(self.activate(self.last_proj(x)), pre_logits)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """Replace ``head``; with ``reset_other`` also drop ``last_proj`` (as when pruning).

        Args:
            num_classes: New number of classes (``0``: none).
            global_pool: New pooling type (``None``: unchanged).
            reset_other: Remove ``last_proj`` and its activation too.
        """
        if reset_other:
            self.last_proj, self.activate = nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
        super().reset_classifier(num_classes, global_pool, reset_other)


_VARIANTS: dict[str, dict[str, Any]] = {
    # drop_path_rate as in the official factories (a training setting; eval outputs do not use it).
    "mixformer_b0": dict(embed_dim=24, depths=(1, 2, 6, 6), num_heads=(3, 6, 12, 24), drop_path_rate=0.0),
    "mixformer_b1": dict(embed_dim=32, depths=(1, 2, 6, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.0),
    "mixformer_b2": dict(embed_dim=32, depths=(2, 2, 8, 8), num_heads=(2, 4, 8, 16), drop_path_rate=0.05),
    "mixformer_b3": dict(embed_dim=48, depths=(2, 2, 8, 6), num_heads=(3, 6, 12, 24), drop_path_rate=0.1),
}

default_cfgs = generate_default_cfgs(
    {
        name: pretrained_cfg(first_conv="patch_embed.stem.0", classifier="head", paper=_PAPER, license="apache-2.0")
        for name in _VARIANTS
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MixFormer:
    return build_backbone(MixFormer, variant, pretrained, **{**_VARIANTS[variant], **kwargs})


@register_model
def mixformer_b0(pretrained: bool = False, **kwargs: Any) -> MixFormer:
    """MixFormer-B0: C 24, depths 1-2-6-6, heads 3-6-12-24 (5.10 M parameters, 0.4 G MACs).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`MixFormer`][zoo.mixformer.MixFormer] arguments, replacing the variant's, and timm's
            (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("mixformer_b0", pretrained, **kwargs)


@register_model
def mixformer_b1(pretrained: bool = False, **kwargs: Any) -> MixFormer:
    """MixFormer-B1: C 32, depths 1-2-6-6, heads 2-4-8-16 (7.89 M parameters, 0.7 G MACs).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`MixFormer`][zoo.mixformer.MixFormer] arguments, replacing the variant's, and timm's
            (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("mixformer_b1", pretrained, **kwargs)


@register_model
def mixformer_b2(pretrained: bool = False, **kwargs: Any) -> MixFormer:
    """MixFormer-B2: C 32, depths 2-2-8-8, heads 2-4-8-16 (9.89 M parameters, 0.9 G MACs).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`MixFormer`][zoo.mixformer.MixFormer] arguments, replacing the variant's, and timm's
            (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("mixformer_b2", pretrained, **kwargs)


@register_model
def mixformer_b3(pretrained: bool = False, **kwargs: Any) -> MixFormer:
    """MixFormer-B3: C 48, depths 2-2-8-6, heads 3-6-12-24 (16.75 M parameters, 1.9 G MACs).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`MixFormer`][zoo.mixformer.MixFormer] arguments, replacing the variant's, and timm's
            (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("mixformer_b3", pretrained, **kwargs)
