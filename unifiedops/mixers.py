"""Token mixers of UniFormer and MixFormer, composed from aggregations.

| mixer | aggregations | fast paths |
|---|---|---|
| `UniFormerLocalMHRA` | dense point -> static depth-wise ``5 x 5`` -> dense point | ``conv`` |
| `UniFormerGlobalMHRA` | global q.k attention | ``global_sdpa`` |
| `DynamicPositionEmbedding` | static depth-wise ``3 x 3``, plus the input | ``conv`` |
| `MixingAttention` | window q.k attention ‖ static depth-wise conv, gated across | ``window_sdpa``, ``conv`` |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unifiedops._checks import check_bool, check_divisible, check_input, check_int, check_number
from unifiedops.aggregation import Aggregation
from unifiedops.instances import DWConv
from unifiedops.neighbourhoods import Global, Point, Window
from unifiedops.weights import DenseKernel, QKAttention

__all__ = [
    "DynamicPositionEmbedding",
    "MixingAttention",
    "UniFormerGlobalMHRA",
    "UniFormerLocalMHRA",
    "convert_paddle_state_dict",
]


def _pointwise(in_channels: int, out_channels: int) -> Aggregation:
    """A ``1 x 1`` convolution as a dense point aggregation (``nn.Conv2d``'s ``weight``/``bias`` names)."""
    return Aggregation(Point(), DenseKernel(in_channels, out_channels))


# --- UniFormer -------------------------------------------------------------------------------------


class UniFormerLocalMHRA(nn.Module):
    """UniFormer's local multi-head relation aggregator (the token mixer of its ``CBlock``).

    From "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (Li et al.,
    TPAMI 2023; arXiv 2201.09450): ``conv2(attn(conv1(x)))`` with ``conv1``, ``conv2`` dense
    ``1 x 1`` convolutions and ``attn`` a ``5 x 5`` depth-wise convolution, the learnable local
    affinity, all with bias. The normalisation before it (BatchNorm) and the residual belong to the
    block. Parameter names are the official ``CBlock``'s (``conv1``, ``attn``, ``conv2``), so
    under a block that registers this module's children directly the official keys load unchanged.

    On the axes: sparsity, sliding ``k x k`` depth-wise between two channel-dense points; sharing,
    across positions and samples; dynamism, static. Every aggregation runs on the ``conv`` path.

    Args:
        dim: Channels ``C``.
        kernel_size: Odd size of the depth-wise affinity.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixers import UniFormerLocalMHRA
        >>> mhra = UniFormerLocalMHRA(64)
        >>> [name for name, _ in mhra.named_parameters()]
        ['conv1.weight', 'conv1.bias', 'attn.weight', 'attn.bias', 'conv2.weight', 'conv2.bias']
        >>> mhra(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(self, dim: int, kernel_size: int = 5) -> None:
        super().__init__()
        check_int("dim", dim, minimum=1)
        self.conv1 = _pointwise(dim, dim)
        self.attn = DWConv(dim, kernel_size)
        self.conv2 = _pointwise(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``.
        """
        return self.conv2(self.attn(self.conv1(x)))


class UniFormerGlobalMHRA(Aggregation):
    """UniFormer's global multi-head relation aggregator (the token mixer of its ``SABlock``).

    Multi-head self-attention over all positions with ``dim // head_dim`` heads, logit scale
    ``qk_scale`` or ``(dim // heads) ** -0.5``, a ``qkv`` Linear and an output ``proj`` Linear: the
    official ``Attention`` and its parameter names. The LayerNorm before it and the residual
    belong to the block. The official module takes tokens ``(B, N, C)`` (the map flattened
    row-major); pass them as ``x.view(B, N, 1, C)`` with ``channels_last=True``, or pass the map.

    From "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (Li et al.,
    TPAMI 2023; arXiv 2201.09450). On the axes: sparsity, global, per head; sharing, across the
    channels of a head; dynamism, per position (q.k). Fast path ``global_sdpa``.

    Args:
        dim: Channels ``C``.
        head_dim: Nominal channels per head; ``heads = dim // head_dim``, which must divide ``dim``.
        qkv_bias: Whether ``qkv`` has a bias (UniFormer's models use ``True``).
        qk_scale: Logit scale; ``None`` is ``(dim // heads) ** -0.5``.
        channels_last: Take and return ``(B, H, W, C)``.
        path: Execution path (``"auto"`` is ``"global_sdpa"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixers import UniFormerGlobalMHRA
        >>> mhra = UniFormerGlobalMHRA(128, head_dim=64)
        >>> mhra.source.heads, mhra.path
        (2, 'global_sdpa')
        >>> mhra(torch.randn(2, 128, 7, 7)).shape
        torch.Size([2, 128, 7, 7])
    """

    def __init__(
        self,
        dim: int,
        head_dim: int = 64,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ) -> None:
        check_int("dim", dim, minimum=1)
        check_int("head_dim", head_dim, minimum=1)
        if head_dim > dim:
            raise ValueError(f"head_dim must be <= dim (heads = dim // head_dim), got head_dim={head_dim}, dim={dim}")
        if dim % (dim // head_dim):
            raise ValueError(
                f"dim={dim} must be divisible by num_heads = dim // head_dim = {dim // head_dim} (head_dim={head_dim})"
            )
        check_bool("qkv_bias", qkv_bias)
        if qk_scale is not None:
            check_number("qk_scale", qk_scale)
        # The official `qk_scale or default` also maps 0 to the default.
        source = QKAttention(dim, heads=dim // head_dim, qkv_bias=qkv_bias, scale=qk_scale or None)
        super().__init__(Global(), source, path=path, channels_last=channels_last)


class DynamicPositionEmbedding(DWConv):
    """Dynamic position embedding (DPE) of UniFormer: ``x + DWConv3x3(x)``.

    The depth-wise convolution (with bias, zero padding) sees the zero border, which gives each
    position an implicit encoding of where it is. Registers ``weight`` and ``bias`` like an
    ``nn.Conv2d``: registered as a block's ``pos_embed`` it has the official keys
    ``pos_embed.weight``, ``pos_embed.bias``. The residual is part of this module (the official
    block computes ``x = x + pos_embed(x)``; with this module that is ``x = pos_embed(x)``).

    From "UniFormer: Unifying Convolution and Self-attention for Visual Recognition" (Li et al.,
    TPAMI 2023; arXiv 2201.09450), after CPVT's conditional position encoding. On the axes:
    sliding ``k x k``, depth-wise; shared across positions and samples; static. Fast path ``conv``.

    Args:
        dim: Channels ``C``.
        kernel_size: Odd kernel size.
        path: Execution path of the convolution (``"auto"`` is ``"conv"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixers import DynamicPositionEmbedding
        >>> dpe = DynamicPositionEmbedding(64)
        >>> sorted(dpe.state_dict())
        ['bias', 'weight']
        >>> dpe(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self, dim: int, kernel_size: int = 3, *, path: str = "auto") -> None:
        super().__init__(dim, kernel_size, path=path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus its depth-wise convolution.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, C, H, W)``.
        """
        return x + super().forward(x)


# --- MixFormer -------------------------------------------------------------------------------------


class MixingAttention(Aggregation):
    """MixFormer's mixing attention: window attention in parallel with a depth-wise convolution,
    each gating the other.

    From "MixFormer: Mixing Features across Windows and Dimensions" (Chen et al., CVPR 2022;
    official code: PaddleClas ``MixingAttention``). In the official order, on a map ``x`` of
    ``C`` channels:

    1. ``a = proj_attn_norm(proj_attn(x))`` (Linear ``C -> C/2``, LayerNorm);
       ``c = proj_cnn_norm(proj_cnn(x))`` (Linear ``C -> C``, LayerNorm);
    2. conv branch: ``c = dwconv3x3(c)`` (depth-wise ``k x k`` conv, BatchNorm, GELU);
       channel interaction ``g = sigmoid(channel_interaction(GAP(c)))`` (1x1 ``C -> C/8``, BN,
       GELU, 1x1 ``-> C/2``); ``c = projection(c)`` (1x1 ``C -> C/2``);
    3. attention branch: window attention (``w x w`` windows, no shift, relative-position bias,
       ``num_heads`` heads) on ``a``, its values ``v`` scaled by ``g``. The attention weights do not
       depend on ``v`` and ``g`` is constant over positions, so scaling ``v`` equals scaling the
       attention output per channel, which is what is computed;
    4. spatial interaction: ``c = conv_norm(sigmoid(spatial_interaction(a)) * c)`` (1x1
       ``C/2 -> C/16``, BN, GELU, 1x1 ``-> 1``; then BatchNorm);
    5. ``y = proj(concat(attn_norm(a), c))`` (LayerNorm on ``a``; Linear ``C -> C``).

    The window attention is this module's own aggregation
    (``Window(window_size)``, ``QKAttention(C/2, num_heads, rel_pos_bias=True, out_proj=False)``),
    so ``qkv`` and ``relative_position_bias_table`` sit at the top level next to the other layers
    and every parameter has its official name. The official buffer ``relative_position_index`` is
    not stored (it is computed); [`convert_paddle_state_dict`][unifiedops.mixers.convert_paddle_state_dict]
    drops it and converts Paddle's layouts.

    Input layout: the official module takes the windows of an already padded map,
    ``(B * nW, w*w, C)``, plus the padded ``H, W``; this one takes the map itself, ``(B, C, H, W)``
    or ``(B, H, W, C)``, which is the official windows put back by ``window_reverse``. A map
    whose sides are not multiples of ``w`` is zero-padded at the bottom and right before step 1
    and the output cropped, as the official ``MixingBlock`` does: the padded positions are not
    masked, so after the projections and LayerNorms they take part in the attention, the
    depth-wise conv, the global pool and the BatchNorm statistics. The result therefore equals
    the official block's mixer on the padded map, not a border-aware mixing of the unpadded one.

    On the axes: attention branch, window sparsity per head, shared across the channels of a
    head, per-position (q.k) weights, with a per-sample channel gate; conv branch, sliding
    depth-wise, static, with a per-position spatial gate. Fast paths ``window_sdpa`` (attention)
    and ``conv`` (depth-wise and ``projection``); the attention-dropout of the official module is
    not supported (MixFormer trains with 0).

    Args:
        dim: Channels ``C``; even and at least 16.
        num_heads: Attention heads; must divide ``C / 2``.
        window_size: Window size ``w``.
        dwconv_kernel_size: Odd kernel size of the depth-wise convolution.
        qkv_bias: Whether ``qkv`` has a bias.
        qk_scale: Logit scale; ``None`` is ``(C / 2 / num_heads) ** -0.5``.
        proj_drop: Dropout after ``proj``.
        channels_last: Take and return ``(B, H, W, C)``.
        path: Execution path of the window attention (``"auto"`` is ``"window_sdpa"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixers import MixingAttention
        >>> mix = MixingAttention(64, num_heads=2, window_size=7, channels_last=True)
        >>> mix.path
        'window_sdpa'
        >>> mix(torch.randn(2, 14, 14, 64)).shape
        torch.Size([2, 14, 14, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        dwconv_kernel_size: int = 3,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ) -> None:
        check_int("dim", dim, minimum=16)
        if dim % 2:
            raise ValueError(f"dim must be even (half the channels go to the attention branch), got dim={dim}")
        half = dim // 2
        check_int("num_heads", num_heads, minimum=1)
        check_divisible("dim // 2", half, "num_heads", num_heads)
        check_int("window_size", window_size, minimum=1)
        check_int("dwconv_kernel_size", dwconv_kernel_size, minimum=1)
        if dwconv_kernel_size % 2 == 0:
            raise ValueError(f"dwconv_kernel_size must be odd, got dwconv_kernel_size={dwconv_kernel_size}")
        check_bool("qkv_bias", qkv_bias)
        if qk_scale is not None:
            check_number("qk_scale", qk_scale)
        check_number("proj_drop", proj_drop, minimum=0, maximum=1)
        super().__init__(
            Window(window_size),
            QKAttention(
                half, heads=num_heads, qkv_bias=qkv_bias, rel_pos_bias=True, scale=qk_scale or None, out_proj=False
            ),
            path=path,
            channels_last=channels_last,
        )
        self.dim = dim
        self.proj_attn = nn.Linear(dim, half)
        self.proj_attn_norm = nn.LayerNorm(half)
        self.proj_cnn = nn.Linear(dim, dim)
        self.proj_cnn_norm = nn.LayerNorm(dim)
        self.dwconv3x3 = nn.Sequential(DWConv(dim, dwconv_kernel_size), nn.BatchNorm2d(dim), nn.GELU())
        self.channel_interaction = nn.Sequential(
            nn.Conv2d(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8), nn.GELU(), nn.Conv2d(dim // 8, half, 1)
        )
        self.projection = _pointwise(dim, half)
        self.conv_norm = nn.BatchNorm2d(half)
        self.spatial_interaction = nn.Sequential(
            nn.Conv2d(half, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(), nn.Conv2d(dim // 16, 1, 1)
        )
        self.attn_norm = nn.LayerNorm(half)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix.

        Args:
            x: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``.

        Returns:
            The same shape and layout.
        """
        check_input(x, self.dim, self.channels_last)
        x = x if self.channels_last else x.permute(0, 2, 3, 1)  # the Linear/LayerNorm layout
        _, h, w, _ = x.shape
        hp, wp = self.neighbourhood.padded_length(h), self.neighbourhood.padded_length(w)
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        a = self.proj_attn_norm(self.proj_attn(x)).permute(0, 3, 1, 2)
        c = self.dwconv3x3(self.proj_cnn_norm(self.proj_cnn(x)).permute(0, 3, 1, 2))
        gate = torch.sigmoid(self.channel_interaction(c.mean((2, 3), keepdim=True)))
        c = self.projection(c)
        a = self._run(self, a) * gate
        c = self.conv_norm(torch.sigmoid(self.spatial_interaction(a)) * c)
        y = torch.cat((self.attn_norm(a.permute(0, 2, 3, 1)), c.permute(0, 2, 3, 1)), -1)
        y = self.proj_drop(self.proj(y))[:, :h, :w]
        return y if self.channels_last else y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, {super().extra_repr()}"


def convert_paddle_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Convert a PaddlePaddle MixFormer ``state_dict`` to this library's names and layouts.

    Paddle's ``Linear`` stores its weight as ``(in, out)``; every 2-D ``*weight`` entry (in
    MixFormer, only Linear weights are 2-D) is transposed. Paddle's BatchNorm statistics ``_mean``
    and ``_variance`` become ``running_mean`` and ``running_var``. The ``relative_position_index``
    buffers are dropped (computed here). Other names are unchanged: they are the official ones.

    Args:
        state_dict: Names to arrays (``numpy`` arrays, Paddle tensors converted with ``.numpy()``,
            or torch tensors).

    Returns:
        A ``state_dict`` for ``load_state_dict``.

    Examples:
        >>> import numpy as np
        >>> from unifiedops.mixers import convert_paddle_state_dict
        >>> sd = convert_paddle_state_dict({"proj.weight": np.zeros((4, 6)), "conv_norm._mean": np.zeros(2)})
        >>> {k: tuple(v.shape) for k, v in sd.items()}
        {'proj.weight': (6, 4), 'conv_norm.running_mean': (2,)}
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if name.endswith("relative_position_index"):
            continue
        tensor = torch.as_tensor(value)
        prefix, _, leaf = name.rpartition(".")
        leaf = {"_mean": "running_mean", "_variance": "running_var"}.get(leaf, leaf)
        if leaf == "weight" and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        out[f"{prefix}.{leaf}" if prefix else leaf] = tensor
    return out
