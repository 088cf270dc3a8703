"""The aggregation operator ``y_i = sum_{j in N(i)} w_ij * x_ij`` as one ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from unifiedops._checks import check_input, check_int
from unifiedops.neighbourhoods import Neighbourhood
from unifiedops.paths import PATHS, applicable_paths, select_path
from unifiedops.weights import WeightSource

__all__ = ["Aggregation"]


class Aggregation(nn.Module):
    """``y_i = sum_{j in N(i)} w_ij * x_ij``, one point on the sparsity, sharing and dynamism axes.

    The neighbourhood says which positions ``j`` each position ``i`` reads (sparsity); the weight
    source says where ``w_ij`` comes from and what it is shared over (sharing, dynamism). The
    weight source registers its parameters on this module, under the names of the official
    implementation it reproduces. The execution path follows from the two: ``path="auto"`` picks
    the fast path for the configuration, and ``path="reference"`` forces the literal formula.

    Args:
        neighbourhood: A [`Sliding`][unifiedops.Sliding], [`Window`][unifiedops.Window],
            [`Global`][unifiedops.Global] or [`Point`][unifiedops.Point].
        source: A weight source: [`StaticKernel`][unifiedops.StaticKernel],
            [`DenseKernel`][unifiedops.DenseKernel], [`SampleKernel`][unifiedops.SampleKernel],
            [`PositionKernel`][unifiedops.PositionKernel], [`QKAttention`][unifiedops.QKAttention], or
            another [`WeightSource`][unifiedops.WeightSource].
        path: ``"auto"`` or a name from [`PATHS`][unifiedops.paths.PATHS].
        channels_last: Take and return ``(B, H, W, C)`` instead of ``(B, C, H, W)``; no copy is
            made at the boundary.

    Shape:
        - Input: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``.
        - Output: ``(B, O, Ho, Wo)`` in the same layout: ``O`` is the source's ``out_channels``
          (``C`` unless it mixes channels), ``Ho x Wo`` the input size unless the neighbourhood has a
          stride.

    Examples:
        >>> import torch
        >>> from unifiedops import Aggregation, Sliding, StaticKernel
        >>> dw = Aggregation(Sliding(7), StaticKernel(96))
        >>> dw.path
        'conv'
        >>> dw(torch.randn(2, 96, 14, 14)).shape
        torch.Size([2, 96, 14, 14])
    """

    def __init__(
        self,
        neighbourhood: Neighbourhood,
        source: WeightSource,
        *,
        path: str = "auto",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(neighbourhood, Neighbourhood):
            raise TypeError(f"neighbourhood must be a Neighbourhood, got {type(neighbourhood).__name__}")
        if not isinstance(source, WeightSource):
            raise TypeError(f"source must be a WeightSource, got {type(source).__name__}")
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
        self.neighbourhood = neighbourhood
        self.source = source
        self.channels_last = channels_last
        self.halo_tile: int | None = None
        source.build(self, neighbourhood)
        self.path = path

    @property
    def path(self) -> str:
        """The execution path in use; assign a path name (or ``"auto"``) to change it."""
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        self._path = select_path(self.neighbourhood, self.source, value)
        self._run = PATHS[self._path].run

    @property
    def paths(self) -> list[str]:
        """Every path that can compute this configuration, fastest first."""
        return applicable_paths(self.neighbourhood, self.source)

    def set_halo_tile(self, tile: int | None) -> None:
        """Set the query-tile size of the ``halo_sdpa`` path (``None``: the kernel size).

        Args:
            tile: Side of the square query tiles.
        """
        self.halo_tile = None if tile is None else check_int("tile", tile, minimum=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate.

        Args:
            x: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``.

        Returns:
            ``(B, O, Ho, Wo)``, or ``(B, Ho, Wo, O)`` with ``channels_last``.
        """
        check_input(x, self.source.channels, self.channels_last)
        if self.channels_last:
            return self._run(self, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self._run(self, x)

    def extra_repr(self) -> str:
        return f"{self.neighbourhood}, {self.source}, path={self._path!r}, channels_last={self.channels_last}"
