"""The published operators as presets: each is one point on the axes, built by ``Aggregation``.

| preset | neighbourhood | weights | fast path |
|---|---|---|---|
| `DWConv` | Sliding k x k, zeros | static, per channel | ``conv`` |
| `DynamicDWConv` | Sliding k x k, zeros | per sample, per channel | ``batched_conv`` |
| `InhomogeneousDWConv` | Sliding k x k, zeros | per position, per group | ``shifted_sum`` |
| `WindowAttention` | Window w x w, shift | per position, per head (q.k) | ``window_sdpa`` |
| `NeighborhoodAttention` | Sliding k x k, clamp | per position, per head (q.k) | ``halo_sdpa`` |
| `GlobalAttention` | Global | per position, per head (q.k) | ``global_sdpa`` |
"""

from __future__ import annotations

from unifiedops._checks import check_bool, check_heads, check_int
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Global, Sliding, Window
from unifiedops.weights import PositionKernel, QKAttention, SampleKernel, StaticKernel

__all__ = [
    "DWConv",
    "DynamicDWConv",
    "GlobalAttention",
    "InhomogeneousDWConv",
    "NeighborhoodAttention",
    "WindowAttention",
]


def _check_window_args(
    dim: object, num_heads: object, window_size: object, shift_size: object, qkv_bias: object
) -> None:
    """The arguments of a Swin-style window attention, by their preset names."""
    check_heads("dim", dim, "num_heads", num_heads)
    check_int("window_size", window_size, minimum=1)
    check_int("shift_size", shift_size, minimum=0)
    if shift_size >= window_size:
        raise ValueError(f"shift_size must be < window_size, got shift_size={shift_size}, window_size={window_size}")
    check_bool("qkv_bias", qkv_bias)


class DWConv(Aggregation):
    """Depth-wise convolution: static weights shared across positions and samples.

    Equals ``nn.Conv2d(dim, dim, kernel_size, padding=dilation * (kernel_size // 2),
    dilation=dilation, groups=dim, bias=bias)``, whose ``state_dict`` it shares (``weight``
    ``(dim, 1, k, k)``, ``bias``).

    Args:
        dim: Channels ``C``.
        kernel_size: Odd kernel size ``k``.
        dilation: Kernel dilation.
        bias: Whether to add a per-channel bias.
        path: Execution path (``"auto"`` is ``"conv"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Examples:
        >>> import torch
        >>> from unifiedops import DWConv
        >>> DWConv(96, 7)(torch.randn(1, 96, 56, 56)).shape
        torch.Size([1, 96, 56, 56])
    """

    def __init__(self, dim: int, kernel_size: int, dilation: int = 1, bias: bool = True, *, path: str = "auto"):
        check_int("dim", dim, minimum=1)
        check_bool("bias", bias)
        super().__init__(Sliding(kernel_size, dilation), StaticKernel(dim, bias=bias), path=path)


class DynamicDWConv(Aggregation):
    """DWNet's homogeneous dynamic depth-wise convolution: one ``k x k`` kernel per sample and
    channel, predicted from the globally pooled input and shared across positions.

    ``GAP -> conv1 (1x1, C -> C/reduction, no bias) -> bn -> ReLU -> conv2 (1x1, -> C*k*k)``;
    a separate ``bias`` ``(C,)`` starts at zero; zero padding ``k // 2``. Parameter names are those
    of the official ``DynamicDWConv`` (``conv1``, ``bn``, ``conv2``, ``bias``), so DWNet checkpoints
    load. (Its BatchNorm sees one value per channel per sample: training needs a batch of 2 or more.)

    Args:
        dim: Channels ``C``.
        kernel_size: Odd kernel size ``k``.
        reduction: Hidden-layer reduction of the kernel predictor.
        bias: Whether to add a per-channel bias.
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, kernel_size: int = 7, reduction: int = 4, bias: bool = True, *, path: str = "auto"):
        check_int("dim", dim, minimum=1)
        check_bool("bias", bias)
        super().__init__(Sliding(kernel_size), SampleKernel(dim, reduction=reduction, bias=bias), path=path)


class InhomogeneousDWConv(Aggregation):
    """DWNet's inhomogeneous dynamic depth-wise convolution (involution-like): one ``k x k``
    kernel per position and group, predicted from the feature at that position.

    ``conv1 = [1x1 C -> C/reduction, BN, ReLU]``, ``conv2 = [1x1 -> k*k*groups]``; channel ``c``
    uses group ``c // (C / groups)``; zero padding ``k // 2``; no bias. Parameter names follow the
    official ``IDynamicDWConv``. The official operator is a CUDA-only kernel; here the
    ``shifted_sum`` path computes it exactly on any device.

    Args:
        dim: Channels ``C``.
        kernel_size: Odd kernel size ``k``.
        groups: Number of kernel groups ``G`` (DWNet uses 32 in every stage).
        reduction: Hidden-layer reduction of the kernel predictor.
        path: Execution path (``"auto"`` is ``"shifted_sum"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, dim: int, kernel_size: int = 7, *, groups: int, reduction: int = 4, path: str = "auto"):
        check_int("dim", dim, minimum=1)
        super().__init__(Sliding(kernel_size), PositionKernel(dim, groups=groups, reduction=reduction), path=path)


class WindowAttention(Aggregation):
    """Swin's window multi-head self-attention (W-MSA, or SW-MSA with ``shift_size > 0``).

    Relative-position bias table of ``(2w-1)^2 x heads``; with a shift, the cyclic roll and Swin's
    mask; inputs whose size is not a multiple of the window are zero-padded at the bottom and right
    and cropped back. Parameter names (``qkv``, ``proj``, ``relative_position_bias_table``) are
    those of timm's Swin ``WindowAttention``, so its weights load unchanged.

    Args:
        dim: Channels ``C``.
        num_heads: Number of heads; must divide ``dim``.
        window_size: Window size ``w``.
        shift_size: Cyclic shift, ``0 <= shift_size < window_size``.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        channels_last: Take and return ``(B, H, W, C)`` (Swin's layout) instead of ``(B, C, H, W)``.
        path: Execution path (``"auto"`` is ``"window_sdpa"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> import torch
        >>> from unifiedops import WindowAttention
        >>> attn = WindowAttention(96, num_heads=3, window_size=7, shift_size=3, channels_last=True)
        >>> attn(torch.randn(2, 56, 56, 96)).shape
        torch.Size([2, 56, 56, 96])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        qkv_bias: bool = True,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ):
        _check_window_args(dim, num_heads, window_size, shift_size, qkv_bias)
        super().__init__(
            Window(window_size, shift_size),
            QKAttention(dim, heads=num_heads, qkv_bias=qkv_bias, rel_pos_bias=True),
            path=path,
            channels_last=channels_last,
        )


class NeighborhoodAttention(Aggregation):
    """Neighbourhood attention (NAT/NATTEN): every position attends to a ``k x k`` window around
    itself; with ``border="clamp"`` the window slides to stay inside the image, as in NATTEN.

    Args:
        dim: Channels ``C``.
        num_heads: Number of heads; must divide ``dim``.
        kernel_size: Odd window size ``k``.
        dilation: Spacing between the window's taps.
        border: ``"clamp"`` (NATTEN), ``"mask"`` or ``"zeros"``; see [`BORDERS`][unifiedops.BORDERS].
        rel_pos_bias: Whether to add a learned relative-position bias of ``(2k-1)^2 x heads``.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        channels_last: Take and return ``(B, H, W, C)``.
        path: Execution path (``"auto"`` is ``"halo_sdpa"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int = 1,
        border: str = "clamp",
        rel_pos_bias: bool = True,
        qkv_bias: bool = True,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ):
        check_heads("dim", dim, "num_heads", num_heads)
        check_bool("rel_pos_bias", rel_pos_bias)
        check_bool("qkv_bias", qkv_bias)
        super().__init__(
            Sliding(kernel_size, dilation, border),
            QKAttention(dim, heads=num_heads, qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias),
            path=path,
            channels_last=channels_last,
        )


class GlobalAttention(Aggregation):
    """Plain multi-head self-attention over all positions (ViT's MHSA on a feature map).

    Args:
        dim: Channels ``C``.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        channels_last: Take and return ``(B, H, W, C)``.
        path: Execution path (``"auto"`` is ``"global_sdpa"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, *, channels_last: bool = False, path: str = "auto"
    ):
        check_heads("dim", dim, "num_heads", num_heads)
        check_bool("qkv_bias", qkv_bias)
        super().__init__(
            Global(), QKAttention(dim, heads=num_heads, qkv_bias=qkv_bias), path=path, channels_last=channels_last
        )
