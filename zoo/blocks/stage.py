"""Stages and the layers between them: patch embedding, patch merging, strided-conv downsampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.models._manipulate import checkpoint_seq
from torch import nn

from zoo.blocks.layout import LAYOUTS, convert_layout, infer_layout

__all__ = ["PatchEmbed", "PatchMerging", "Stage"]


class PatchEmbed(nn.Module):
    """Strided convolution ``proj`` then an optional ``norm``: the stems of Swin, VAN and UniFormer.

    Args:
        in_chans: Input channels.
        embed_dim: Output channels.
        patch_size: Kernel size of ``proj``.
        stride: Stride of ``proj`` (``None``: ``patch_size``, non-overlapping).
        padding: Zero padding of ``proj``.
        norm_layer: Norm constructor called with ``embed_dim`` (``None``: no norm).
        output_fmt: Layout of the output, ``"NCHW"`` or ``"NHWC"``.

    Shape:
        ``(B, in_chans, H, W) -> (B, C, H', W')``, or ``(B, H', W', C)`` when ``output_fmt`` is ``"NHWC"``,
        with ``C = embed_dim``, ``H' = (H + 2 * padding - patch_size) // s + 1`` and ``W'`` alike, where
        ``s = stride or patch_size``.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        stride: int | None = None,
        padding: int = 0,
        norm_layer: Callable[[int], nn.Module] | None = None,
        output_fmt: str = "NCHW",
    ) -> None:
        super().__init__()
        if output_fmt not in LAYOUTS:
            raise ValueError(f"output_fmt must be one of {LAYOUTS}, got {output_fmt!r}")
        self.output_fmt = output_fmt
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride or patch_size, padding)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches, normalise in the layout the norm reads, return in ``output_fmt``.

        Args:
            x: Images or maps ``(B, in_chans, H, W)``, channels-first.

        Returns:
            ``(B, C, H', W')`` (``"NCHW"``) or ``(B, H', W', C)`` (``"NHWC"``), ``C = embed_dim``.
        """
        x = self.proj(x)
        layout = infer_layout(self.norm) or "NCHW"
        x = self.norm(convert_layout(x, "NCHW", layout))
        return convert_layout(x, layout, self.output_fmt)


class PatchMerging(nn.Module):
    """Swin's patch merging: concatenate each ``2 x 2`` neighbourhood, ``norm``, then ``reduction``.

    The concatenation order (top-left, bottom-left, top-right, bottom-right) is the official
    Swin's and timm's, so ``reduction`` weights load from either. Channels-last in and out.

    Args:
        dim: Input channels ``C``.
        out_dim: Output channels (``None``: ``2C``).
        norm_layer: Norm over the ``4C`` concatenation.
        pad_odd: Zero-pad an odd height or width at the bottom or right first (what timm's and the
            official Swin detection code do); ``False`` raises a ``ValueError`` on odd sizes.

    Shape:
        ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)``.
    """

    layout = "NHWC"

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        pad_odd: bool = False,
    ) -> None:
        super().__init__()
        self.pad_odd = pad_odd
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge each ``2 x 2`` neighbourhood into one position.

        Args:
            x: A channels-last map ``(B, H, W, C)``.

        Returns:
            ``(B, ceil(H/2), ceil(W/2), out_dim)``, channels-last.

        Raises:
            ValueError: If ``H`` or ``W`` is odd and ``pad_odd`` is ``False``.
        """
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            if not self.pad_odd:
                raise ValueError(f"PatchMerging needs an even height and width (or pad_odd=True), got {H}x{W}")
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    """A run of blocks, with an optional downsampling layer before (timm) or after (official Swin) it.

    Args:
        blocks: The blocks, registered as ``blocks.0``, ``blocks.1``, ...
        downsample: A layer registered as ``downsample`` (``None``: no downsampling).
        downsample_last: Run ``downsample`` after the blocks (official Swin and DWNet) rather than
            before them (timm). A [`Backbone`][zoo.blocks.Backbone] takes the stage's feature map
            before a trailing downsample.

    Shape:
        ``(B, C, H, W) -> (B, C', H', W')``, or channels-last ``(B, H, W, C) -> (B, H', W', C')`` when the
        blocks read that layout (the stage's ``layout``); ``downsample`` gets its input converted to the
        layout it reads. ``H'``, ``W'`` and ``C'`` are what ``downsample`` and the blocks make of them
        (halved sizes and doubled channels for the usual downsampling layers).
    """

    def __init__(
        self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None, downsample_last: bool = False
    ) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.downsample_last = downsample_last
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    @property
    def layout(self) -> str:
        """The stream layout of the blocks (``"NCHW"`` when they do not say)."""
        return infer_layout(self.blocks) or "NCHW"

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        wanted = infer_layout(self.downsample)
        x = self.downsample(convert_layout(x, self.layout, wanted))
        return convert_layout(x, wanted or self.layout, self.layout)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """The stage up to its feature map: a leading downsample, then the blocks.

        Args:
            x: The stage's input, in the stage's ``layout``: ``(B, C, H, W)`` or ``(B, H, W, C)``.

        Returns:
            The stage's feature map in the same layout: ``(B, C', H', W')`` or ``(B, H', W', C')`` after a
            leading downsample, the input's shape otherwise.
        """
        if not self.downsample_last:
            x = self._downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_tail(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the feature map: the trailing downsample, if the stage has one.

        Args:
            x: The output of ``forward_body``, in the stage's ``layout``: ``(B, C, H, W)`` or ``(B, H, W, C)``.

        Returns:
            The input of the next stage in the same layout (``x`` itself without a trailing downsample).
        """
        return self._downsample(x) if self.downsample_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole stage: ``forward_tail(forward_body(x))``.

        Args:
            x: The stage's input, in the stage's ``layout``: ``(B, C, H, W)`` or ``(B, H, W, C)``.

        Returns:
            The input of the next stage, same layout: ``(B, C', H', W')`` or ``(B, H', W', C')``.
        """
        return self.forward_tail(self.forward_body(x))
