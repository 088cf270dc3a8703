"""Spatial sparsity: which input positions ``j`` each output position ``i`` aggregates.

A neighbourhood is a frozen description (hashable, no tensors). It answers one question per image
axis, through [`Neighbourhood.axis`][unifiedops.neighbourhoods.Neighbourhood.axis]: for each of the
``L`` positions along the axis, which ``k`` slots of the (possibly zero-padded) axis it reads, which
of those slots are real neighbours, and the relative position of each slot (for relative-position
biases). A 2-D neighbourhood is the product of its two axes, which holds for every neighbourhood
here: a Swin window is a row window times a column window, and Swin's shifted-window regions are
products of row and column regions.

Both the reference path (through [`layout`][unifiedops.neighbourhoods.layout]) and the fast paths
(through the same axis tables) read this geometry, so the neighbourhood is defined in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from unifiedops._cache import cached_tables
from unifiedops._checks import check_choice, check_int

__all__ = [
    "BORDERS",
    "Axis",
    "Global",
    "Layout",
    "Neighbourhood",
    "Point",
    "Sliding",
    "Window",
    "layout",
]

BORDERS = ("zeros", "reflect", "clamp", "mask")
"""Border rules of a sliding neighbourhood.

* ``"zeros"``: the module input is zero-padded, as in a zero-padded convolution; padded positions
  are neighbours like any other (for attention their keys and values are the projections of zero).
* ``"reflect"``: the input is reflection-padded (``F.pad(mode="reflect")``, as ACmix pads its keys
  and values); the input must be longer than the padding on each axis.
* ``"clamp"``: NATTEN's rule; near a border the window slides to stay inside the image, so every
  position keeps ``k`` real neighbours (all of the axis when it is shorter than ``k``).
* ``"mask"``: out-of-image neighbours are excluded (zero weight; left out of the softmax).
"""


class Axis(NamedTuple):
    """The neighbourhood along one image axis of length ``L``, read by ``Lo`` output positions
    (``Lo = ceil(L / stride)``; ``Lo = L`` without a stride).

    Attributes:
        pad: Padding added before and after the axis of the module input, ``(before, after)``.
        index: ``(Lo, k)`` long; slot ``a`` of output ``i`` reads padded position ``index[i, a]``.
        valid: ``(Lo, k)`` bool; whether that slot is a real neighbour.
        rel: ``(Lo, k)`` long; query minus key position in neighbourhood units (Swin's convention),
            in ``[-(extent - 1), extent - 1]``.
        extent: Half-width of the relative-position range; a bias table needs ``2 * extent - 1``
            entries per axis.
    """

    pad: tuple[int, int]
    index: torch.Tensor
    valid: torch.Tensor
    rel: torch.Tensor
    extent: int


@dataclass(frozen=True)
class Neighbourhood:
    """Base class of the spatial neighbourhoods.

    See [`Sliding`][unifiedops.Sliding], [`Window`][unifiedops.Window], [`Global`][unifiedops.Global]
    and [`Point`][unifiedops.Point].
    """

    def axis(self, length: int) -> Axis:
        """Neighbourhood along one axis.

        Args:
            length: Number of positions ``L`` along the axis (input and output alike).

        Returns:
            The axis tables, see [`Axis`][unifiedops.neighbourhoods.Axis].
        """
        raise NotImplementedError

    @property
    def slots(self) -> int | None:
        """Neighbours per axis (``k``), or ``None`` when it depends on the input size."""
        raise NotImplementedError

    @property
    def pad_mode(self) -> str:
        """How the input is padded: ``"constant"`` (zeros) or ``"reflect"``."""
        return "constant"

    @property
    def step(self) -> int:
        """Distance between consecutive output positions (the stride); 1 keeps the input size."""
        return 1


@dataclass(frozen=True)
class Sliding(Neighbourhood):
    """A ``k x k`` window centred on every position, as in a convolution or neighbourhood attention.

    Args:
        kernel_size: Odd window size ``k``.
        dilation: Spacing between the window's taps.
        border: One of [`BORDERS`][unifiedops.BORDERS]: what happens where the window leaves the image.
        stride: Keep every ``stride``-th output position along each axis, starting at the first
            (a strided convolution; ACmix's strided attention). The output is
            ``ceil(H / stride) x ceil(W / stride)``.

    Examples:
        >>> from unifiedops import Sliding
        >>> Sliding(7, border="clamp").axis(10).index.shape
        torch.Size([10, 7])
    """

    kernel_size: int
    dilation: int = 1
    border: str = "zeros"
    stride: int = 1

    def __post_init__(self) -> None:
        check_int("kernel_size", self.kernel_size, minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got kernel_size={self.kernel_size}")
        check_int("dilation", self.dilation, minimum=1)
        check_choice("border", self.border, BORDERS)
        check_int("stride", self.stride, minimum=1)

    @property
    def slots(self) -> int:
        """Neighbours per axis: ``kernel_size``."""
        return self.kernel_size

    @property
    def pad_mode(self) -> str:
        """``"reflect"`` with ``border="reflect"``, else ``"constant"`` (``"mask"`` and ``"clamp"`` do not pad)."""
        return "reflect" if self.border == "reflect" else "constant"

    @property
    def step(self) -> int:
        """Distance between consecutive output positions: ``stride``."""
        return self.stride

    def check_reflectable(self, *lengths: int) -> None:
        """Raise unless reflection padding fits every axis length (it must be shorter than the axis).

        A no-op unless ``border="reflect"``.

        Args:
            lengths: Axis lengths to check, such as ``H`` and ``W``.

        Raises:
            ValueError: If ``border="reflect"`` and the padding ``dilation * (kernel_size // 2)`` is
                at least one of the lengths.
        """
        pad = self.dilation * (self.kernel_size // 2)
        for length in lengths:
            if self.border == "reflect" and pad >= length:
                raise ValueError(
                    f"border='reflect' pads {pad} on each side, which needs an input longer than that "
                    f"along every axis; got a length of {length}"
                )

    def axis(self, length: int) -> Axis:
        full = self._full_axis(length)
        if self.stride == 1:
            return full
        s = self.stride
        return Axis(full.pad, full.index[::s], full.valid[::s], full.rel[::s], full.extent)

    def _full_axis(self, length: int) -> Axis:
        k, d, r = self.kernel_size, self.dilation, self.kernel_size // 2
        i = torch.arange(length)[:, None]
        a = torch.arange(k)[None, :]
        if self.border == "clamp":
            # Per dilation group (positions congruent mod d), the window of k taps slides to stay
            # inside the group; a group shorter than k is covered whole and the spare slots are
            # invalid.
            group, ii = i % d, i // d
            group_len = (length - group + d - 1) // d
            start = torch.clamp(torch.minimum(ii - r, group_len - k), min=0)
            jj = start + a
            valid = jj < group_len
            index = torch.where(valid, group + d * jj, 0)
            rel = ii - jj
            return Axis((0, 0), index, valid, rel, k)
        rel = (r - a).expand(length, k)
        if self.border in ("zeros", "reflect"):
            self.check_reflectable(length)
            index = i + d * a
            return Axis((d * r, d * r), index, torch.ones_like(index, dtype=torch.bool), rel, k)
        j = i + d * (a - r)
        valid = (j >= 0) & (j < length)
        return Axis((0, 0), torch.where(valid, j, 0), valid, rel, k)


@dataclass(frozen=True)
class Window(Neighbourhood):
    """Non-overlapping ``w x w`` windows, optionally cyclically shifted (Swin's W-MSA / SW-MSA).

    The input is zero-padded at the bottom and right to a multiple of ``size``, then rolled by
    ``-shift`` (the order of Swin's official detection code); positions that the roll brought together
    from opposite borders do not see each other (Swin's attention mask). Output positions are
    those of the input.

    Args:
        size: Window size ``w``.
        shift: Cyclic shift, ``0 <= shift < size``.
        border: ``"zeros"`` (padded positions take part, as in Swin) or ``"mask"`` (they are
            excluded, so a window larger than the image is exactly global attention).

    Examples:
        >>> from unifiedops import Window
        >>> Window(7, shift=3).axis(14).valid.sum().item()  # 7*7 + 4*4 + 3*3: the seam splits a window
        74
    """

    size: int
    shift: int = 0
    border: str = "zeros"

    def __post_init__(self) -> None:
        check_int("size", self.size, minimum=1)
        check_int("shift", self.shift, minimum=0)
        if self.shift >= self.size:
            raise ValueError(f"shift must be smaller than size, got shift={self.shift}, size={self.size}")
        check_choice("border", self.border, ("zeros", "mask"))

    @property
    def slots(self) -> int:
        """Neighbours per axis: the window ``size``."""
        return self.size

    def padded_length(self, length: int) -> int:
        """Axis length after zero-padding at the end to a multiple of the window.

        Args:
            length: Unpadded axis length ``L``.

        Returns:
            ``Lp = ceil(L / size) * size``.
        """
        return math.ceil(length / self.size) * self.size

    def rolled_regions(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Swin's region labels and in-image flags, in rolled (window) coordinates.

        Args:
            length: Unpadded axis length ``L``.

        Returns:
            ``(region, inside)``, each ``(Lp,)`` with ``Lp`` the
                [`padded_length`][unifiedops.neighbourhoods.Window.padded_length]: ``region`` long
                labels 0, 1, 2 (Swin's three slices: 0 only without a shift), ``inside`` bool, whether the
                rolled position is in the image rather than the padding. Two rolled positions in one
                window see each other when their regions match (and, with ``border="mask"``, the key is
                inside).
        """
        w, s, lp = self.size, self.shift, self.padded_length(length)
        r = torch.arange(lp)
        region = torch.zeros(lp, dtype=torch.long)
        if s:
            region[lp - w :] = 1
            region[lp - s :] = 2
        inside = (r + s) % lp < length
        return region, inside

    def axis(self, length: int) -> Axis:
        w, s, lp = self.size, self.shift, self.padded_length(length)
        region, inside = self.rolled_regions(length)
        rolled = (torch.arange(length) - s) % lp  # where each original position lands
        start = (rolled // w) * w
        a = torch.arange(w)
        key_rolled = start[:, None] + a[None, :]
        valid = region[key_rolled] == region[rolled][:, None]
        if self.border == "mask":
            valid &= inside[key_rolled]
        index = (key_rolled + s) % lp
        rel = (rolled % w)[:, None] - a[None, :]
        return Axis((0, lp - length), index, valid, rel, w)


@dataclass(frozen=True)
class Global(Neighbourhood):
    """Every position sees every position (global self-attention)."""

    @property
    def slots(self) -> None:
        """``None``: the neighbourhood is the whole axis, whose length depends on the input."""
        return None

    def axis(self, length: int) -> Axis:
        index = torch.arange(length).expand(length, length)
        rel = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        return Axis((0, 0), index, torch.ones_like(index, dtype=torch.bool), rel, length)


@dataclass(frozen=True)
class Point(Neighbourhood):
    """Each position sees only itself (``j = i``): gating, scaling, LKA's product."""

    @property
    def slots(self) -> int:
        """1: each position reads only itself."""
        return 1

    def axis(self, length: int) -> Axis:
        index = torch.arange(length)[:, None]
        return Axis((0, 0), index, torch.ones_like(index, dtype=torch.bool), torch.zeros_like(index), 1)


class Layout(NamedTuple):
    """The 2-D neighbourhood of an ``H x W`` input, flattened for gathering.

    Attributes:
        pad: ``(left, right, top, bottom)`` padding of the module input, as for ``F.pad``.
        pad_mode: ``"constant"`` (zeros) or ``"reflect"``, as for ``F.pad``.
        padded_size: ``(Hp, Wp)`` after padding.
        out_size: ``(Ho, Wo)``, the output positions (the input size unless strided).
        index: ``(Ho*Wo, K)`` long; flat indices into the padded ``Hp*Wp`` grid.
        valid: ``(Ho*Wo, K)`` bool.
        centre: ``(Ho*Wo,)`` long; each output position's own flat index in the padded grid.
        rel_index: ``(Ho*Wo, K)`` long; index into a ``(2*Eh-1)*(2*Ew-1)`` relative-position table.
    """

    pad: tuple[int, int, int, int]
    pad_mode: str
    padded_size: tuple[int, int]
    out_size: tuple[int, int]
    index: torch.Tensor
    valid: torch.Tensor
    centre: torch.Tensor
    rel_index: torch.Tensor


@cached_tables
def _layout(neighbourhood: Neighbourhood, height: int, width: int) -> Layout:
    ay, ax = neighbourhood.axis(height), neighbourhood.axis(width)
    hp, wp = height + sum(ay.pad), width + sum(ax.pad)
    (ho, ky), (wo, kx) = ay.index.shape, ax.index.shape
    index = ay.index[:, None, :, None] * wp + ax.index[None, :, None, :]
    valid = ay.valid[:, None, :, None] & ax.valid[None, :, None, :]
    rel = (ay.rel[:, None, :, None] + ay.extent - 1) * (2 * ax.extent - 1) + (ax.rel[None, :, None, :] + ax.extent - 1)
    step = neighbourhood.step
    iy = torch.arange(0, height, step) + ay.pad[0]
    ix = torch.arange(0, width, step) + ax.pad[0]
    centre = (iy[:, None] * wp + ix[None, :]).reshape(-1)
    shape = (ho * wo, ky * kx)
    return Layout(
        pad=(ax.pad[0], ax.pad[1], ay.pad[0], ay.pad[1]),
        pad_mode=neighbourhood.pad_mode,
        padded_size=(hp, wp),
        out_size=(ho, wo),
        index=index.reshape(shape),
        valid=valid.reshape(shape),
        centre=centre,
        rel_index=rel.reshape(shape),
    )


def layout(neighbourhood: Neighbourhood, height: int, width: int, device: torch.device | str = "cpu") -> Layout:
    """The flattened 2-D neighbourhood of an ``height x width`` input.

    Args:
        neighbourhood: The spatial neighbourhood.
        height: Input height ``H``.
        width: Input width ``W``.
        device: Device for the index tensors.

    Returns:
        A [`Layout`][unifiedops.neighbourhoods.Layout] with ``Ho*Wo`` rows of ``K = ky*kx`` slots.
    """
    return _layout(neighbourhood, height, width, device=device)
