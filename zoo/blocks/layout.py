"""Channel layouts at block boundaries: which layout a layer expects, and converting once to it.

Zoo blocks mix layers that read channels-first maps ``(B, C, H, W)`` (convolutions, BatchNorm)
with layers that read channels-last maps ``(B, H, W, C)`` (Linear, LayerNorm), in whatever order
the paper has them. A block asks each step for its layout and permutes only where the layout
changes, so a family file never writes a permute.
"""

from __future__ import annotations

import torch
from timm.layers import FrozenBatchNormAct2d, LayerNorm2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from unifiedops.aggregation import Aggregation

__all__ = ["LAYOUTS", "BatchNormChannelsLast", "convert_layout", "infer_layout"]

LAYOUTS = ("NCHW", "NHWC")
"""The two map layouts: channels-first ``(B, C, H, W)`` and channels-last ``(B, H, W, C)``."""

# Frozen BatchNorms are what timm's `freeze_batch_norm_2d` puts in place of any BatchNorm2d, ours included.
_CHANNELS_FIRST = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    LayerNorm2d,
    nn.SyncBatchNorm,
    FrozenBatchNorm2d,
    FrozenBatchNormAct2d,
)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


class BatchNormChannelsLast(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` on a channels-last map ``(B, H, W, C)``, with BatchNorm2d's state dict.

    DWNet normalises its token stream with BatchNorm before the MLP; this keeps the official keys
    (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) on a
    channels-last stream.
    """

    layout = "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel of a channels-last map.

        Args:
            x: A map ``(B, H, W, C)``.

        Returns:
            The normalised map ``(B, H, W, C)`` (a permuted view of a channels-first result).
        """
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def infer_layout(module: nn.Module) -> str | None:
    """The layout a module reads: ``"NCHW"``, ``"NHWC"``, or ``None`` when either works.

    An explicit ``layout`` attribute wins; an [`Aggregation`][unifiedops.Aggregation] reads its
    ``channels_last`` flag; convolutions and 2-D norms are channels-first, ``Linear`` and
    ``LayerNorm`` channels-last; a layer without parameters (activation, dropout) takes either;
    a container takes the layout of its first child that has one.

    Args:
        module: The layer to classify.

    Returns:
        One of [`LAYOUTS`][zoo.blocks.layout.LAYOUTS], or ``None``.
    """
    layout = getattr(module, "layout", None)
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"{type(module).__name__}.layout must be one of {LAYOUTS}, got {layout!r}")
        return layout
    if isinstance(module, Aggregation):
        return "NHWC" if module.channels_last else "NCHW"
    if isinstance(module, _CHANNELS_FIRST):
        return "NCHW"
    if isinstance(module, _CHANNELS_LAST):
        return "NHWC"
    for child in module.children():
        found = infer_layout(child)
        if found is not None:
            return found
    return None


def convert_layout(x: torch.Tensor, source: str, target: str | None) -> torch.Tensor:
    """Permute a 4-D map from one layout to another (a view; no copy).

    Args:
        x: A map in layout ``source``: ``(B, C, H, W)`` for ``"NCHW"``, ``(B, H, W, C)`` for ``"NHWC"``.
        source: Its layout.
        target: The layout wanted; ``None`` keeps ``source``.

    Returns:
        ``x`` in layout ``target`` (``x`` itself when the layouts agree).
    """
    if target is None or target == source:
        return x
    return x.permute(0, 3, 1, 2) if source == "NHWC" else x.permute(0, 2, 3, 1)
