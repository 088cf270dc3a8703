"""Large Kernel Attention (VAN): a point aggregation whose per-position weights come from a
decomposed large-kernel convolution.

``LKA(x) = x * conv1(conv_spatial(conv0(x)))``: the product is an
[`Aggregation`][unifiedops.Aggregation] over the [`Point`][unifiedops.Point] neighbourhood
(``j = i``), and its weights, one per position and channel, are the output of a static
aggregation chain: a ``(2d-1) x (2d-1)`` depth-wise conv, a ``ceil(K/d) x ceil(K/d)`` depth-wise
conv dilated by ``d``, and a dense ``1 x 1`` conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from unifiedops._checks import check_int
from unifiedops.aggregation import Aggregation
from unifiedops.instances import DWConv
from unifiedops.neighbourhoods import Layout, Neighbourhood, Point
from unifiedops.weights import DenseKernel, SameChannels, WeightSource

__all__ = ["LKA", "LargeKernelGate", "lka_kernel_sizes"]


def lka_kernel_sizes(kernel_size: int, dilation: int) -> tuple[int, int]:
    """Kernel sizes of the VAN decomposition of a ``K x K`` depth-wise convolution.

    The paper decomposes it into a ``(2d-1) x (2d-1)`` depth-wise convolution and a
    ``ceil(K/d) x ceil(K/d)`` depth-wise convolution with dilation ``d``. A "same" convolution
    needs an odd kernel, so an even ``ceil(K/d)`` is rejected rather than rounded (rounding either
    way would silently change the receptive field the caller asked for).

    The receptive field of the two is ``(2d-1) + d * (ceil(K/d) - 1)``, which can exceed ``K``:
    23 for the default ``K = 21, d = 3``, exactly as in the official VAN (5x5, then 7x7 dilated 3).

    Args:
        kernel_size: The large kernel ``K`` to approximate.
        dilation: The dilation ``d`` of the second convolution.

    Returns:
        ``(local, dilated)``: the sizes ``2d - 1`` and ``ceil(K/d)``.

    Raises:
        ValueError: If ``ceil(K/d)`` is even.

    Examples:
        >>> from unifiedops.lka import lka_kernel_sizes
        >>> lka_kernel_sizes(21, 3)
        (5, 7)
    """
    check_int("kernel_size", kernel_size, minimum=1)
    check_int("dilation", dilation, minimum=1)
    dilated = math.ceil(kernel_size / dilation)
    if dilated % 2 == 0:
        raise ValueError(
            f"kernel_size={kernel_size} with dilation={dilation} gives an even dilated kernel "
            f"ceil(kernel_size / dilation) = {dilated}; choose kernel_size so that ceil(kernel_size / dilation) "
            f"is odd (e.g. kernel_size={dilation * dilated + 1})"
        )
    return 2 * dilation - 1, dilated


@dataclass(frozen=True)
class LargeKernelGate(SameChannels, WeightSource):
    """Per-position, per-channel weights from VAN's decomposed large-kernel convolution.

    Registers on the owning aggregation ``conv0`` (a [`DWConv`][unifiedops.DWConv] of
    ``(2d-1) x (2d-1)``), ``conv_spatial`` (a [`DWConv`][unifiedops.DWConv] of
    ``ceil(K/d) x ceil(K/d)``, dilation ``d``) and ``conv1`` (a dense ``1 x 1`` aggregation), all
    with bias: the ``state_dict`` keys of the official ``LKA``. Its weights depend on the input at
    each position, so it runs on the ``shifted_sum`` path; with the [`Point`][unifiedops.Point]
    neighbourhood that is one multiply.

    Args:
        channels: Number of channels ``C``.
        kernel_size: The large kernel ``K``.
        dilation: The dilation ``d``; see [`lka_kernel_sizes`][unifiedops.lka.lka_kernel_sizes].
    """

    kernel_size: int = 21
    dilation: int = 3
    dynamism: ClassVar[str] = "position"

    def __post_init__(self) -> None:
        super().__post_init__()
        lka_kernel_sizes(self.kernel_size, self.dilation)

    @property
    def weight_groups(self) -> int:
        """Number of weight groups: ``C`` (one weight per channel, depth-wise)."""
        return self.channels

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Point):
            raise ValueError(
                f"LargeKernelGate gives one weight per position: its neighbourhood must be Point(), "
                f"got {type(neighbourhood).__name__}"
            )
        local, dilated = lka_kernel_sizes(self.kernel_size, self.dilation)
        module.conv0 = DWConv(self.channels, local)
        module.conv_spatial = DWConv(self.channels, dilated, self.dilation)
        module.conv1 = Aggregation(Point(), DenseKernel(self.channels, self.channels))

    def attention_map(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The map that multiplies the input, ``(B, C, H, W)``.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``conv1(conv_spatial(conv0(x)))``, ``(B, C, H, W)``.
        """
        return module.conv1(module.conv_spatial(module.conv0(x)))

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The attention map in the ``shifted_sum`` path's layout ``(B, G, K, H, W)``, with ``G = C``, ``K = 1``.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, C, 1, H, W)``: one neighbour (the position itself) per channel.
        """
        return self.attention_map(module, x).unsqueeze(2)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and the attention map as one weight per position and channel.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the map is computed from it.
            padded: The input (a point neighbourhood pads nothing), ``(B, C, H, W)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, H*W)`` and ``(B, C, H*W, 1)``.
        """
        return padded.flatten(2), self.attention_map(module, x).flatten(2).unsqueeze(-1)


class LKA(Aggregation):
    """Large Kernel Attention from "Visual Attention Network" (Guo et al., arXiv 2202.09741).

    ``LKA(x) = x * conv1(conv_spatial(conv0(x)))`` with ``conv0`` a ``(2d-1) x (2d-1)``
    depth-wise conv, ``conv_spatial`` a ``ceil(K/d) x ceil(K/d)`` depth-wise conv with dilation
    ``d`` and ``conv1`` a ``1 x 1`` conv, all with bias and zero "same" padding. The defaults
    (``K = 21, d = 3``: 5x5, then 7x7 dilated 3, padding 9) are the official VAN layer, and the
    ``state_dict`` keys are the official ``conv0.*``, ``conv_spatial.*``, ``conv1.*``.

    On the axes: sparsity, a point neighbourhood (each position reads itself), depth-wise; sharing,
    none (one weight per position and channel); dynamism, per position (the weights are a
    function of the input around the position, through a static convolution chain whose receptive
    field is ``23 x 23`` for the defaults). The fast path is ``shifted_sum`` (a single multiply); ``path="reference"``
    gathers and sums literally. The map's three convolutions are aggregations of their own
    (``conv`` path); set their ``path`` separately.

    Args:
        dim: Channels ``C``.
        kernel_size: The large kernel ``K`` to decompose.
        dilation: The dilation ``d``; ``ceil(K/d)`` must be odd
            (see [`lka_kernel_sizes`][unifiedops.lka.lka_kernel_sizes]).
        channels_last: Take and return ``(B, H, W, C)``.
        path: Execution path of the product (``"auto"`` is ``"shifted_sum"``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> import torch
        >>> from unifiedops.lka import LKA
        >>> lka = LKA(64)
        >>> lka.path
        'shifted_sum'
        >>> sorted(lka.state_dict())[:3]
        ['conv0.bias', 'conv0.weight', 'conv1.bias']
        >>> lka(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 21,
        dilation: int = 3,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ) -> None:
        check_int("dim", dim, minimum=1)
        super().__init__(Point(), LargeKernelGate(dim, kernel_size, dilation), path=path, channels_last=channels_last)
