"""X-volution: a convolution and a pixel-shift self-attention in parallel, mergeable into one
dynamic convolution (Chen, Wang and Ni, "X-volution: On the Unification of Convolution and
Self-attention", arXiv:2106.02253).

No official code exists, and the method section of the paper leaves several details open. What the
paper fixes, and this module follows:

* two branches trained side by side and summed: a convolution followed by BatchNorm, and a pixel
  shift self-attention (PSSA) followed by BatchNorm;
* PSSA relates each pixel to copies of the map shifted by ``L`` pixels in several directions through
  element-wise products, which makes attention local and linear in the number of pixels;
* at inference both branches merge into one dynamic convolution whose kernel at position ``p`` is the
  static kernel plus a content-dependent coefficient per neighbour: ``y_p = sum_d (W_c(d) + w_A(p, d)) x_{p+d}``.

What the paper leaves open, and what is chosen here (each a constructor argument where it is a number):

* **Shifts**: the 8 neighbours at distance ``shift`` (default 1) plus the pixel itself, i.e. a 3x3
  neighbourhood dilated by ``shift``. Shifted-in pixels are zeros.
* **Coefficients**: ``w_A(p, d) = <q_p, k_{p+d}> / sqrt(Cq)`` with 1x1 query and key projections
  (``query``, ``key``, ``Cq = qk_channels``), one scalar per position and shift, shared by every channel,
  and no softmax: the paper writes the coefficient as a product of projections and a feature inner
  product, and the BatchNorm after the branch normalises its scale.
* **Values**: a 1x1 ``value`` projection. Because the coefficient is one scalar per (position, shift),
  ``sum_d w_A(p, d) V x_{p+d} = V sum_d w_A(p, d) x_{p+d}``: the projection is applied after the
  aggregation, which keeps the aggregation depth-wise (one weight group).
* **Merge**: BatchNorm in eval mode is a per-channel affine map, so both branches fold into one kernel
  per position, ``K_p(d) = s_c W_c(d) + w_A(p, d) s_a V`` (``s`` the BN scales), and one bias; when
  ``2 * shift + 1`` exceeds the kernel size the merged kernel grows to cover both supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unifiedops._cache import cached_tables
from unifiedops._checks import check_int
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Layout, Neighbourhood, Sliding, layout
from unifiedops.weights import DenseKernel, SameChannels, WeightSource

__all__ = ["MergedXVolution", "MergedXVolutionKernel", "ShiftProductKernel", "XVolution"]


def _neighbour_taps(nb: Sliding):
    """``(dy, dx)`` offsets into the map padded by ``dilation * (k // 2)``, in slot order."""
    k, d = nb.kernel_size, nb.dilation
    return [((t // k) * d, (t % k) * d) for t in range(k * k)]


@dataclass(frozen=True)
class ShiftProductKernel(SameChannels, WeightSource):
    """Pixel-shift self-attention weights: ``w_pd = <q_p, k_{p+d}> / sqrt(Cq)`` for every neighbour ``d``
    of a zero-padded sliding neighbourhood, without softmax, shared by all channels (one weight group).

    Registers ``query`` and ``key``, 1x1 convolutions ``C -> Cq``.

    Args:
        channels: Number of channels ``C``.
        qk_channels: Width ``Cq`` of the query and key projections (default ``C``).
    """

    qk_channels: int | None = None
    dynamism: ClassVar[str] = "position"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qk_channels is not None:
            check_int("qk_channels", self.qk_channels, minimum=1)

    @property
    def weight_groups(self) -> int:
        """Number of weight groups: 1 (every channel shares the weight of a position and shift)."""
        return 1

    @property
    def width(self) -> int:
        """Width ``Cq`` of the query and key projections: ``qk_channels``, or ``C`` when it is ``None``."""
        return self.channels if self.qk_channels is None else self.qk_channels

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Sliding) or neighbourhood.border != "zeros" or neighbourhood.stride != 1:
            raise ValueError(
                "ShiftProductKernel shifts in zeros: it needs Sliding(..., border='zeros', stride=1); "
                f"got neighbourhood={neighbourhood}"
            )
        module.query = nn.Conv2d(self.channels, self.width, 1)
        module.key = nn.Conv2d(self.channels, self.width, 1)

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-position weights in the ``shifted_sum`` path's layout, one product map per shift.

        Args:
            module: The owning aggregation (its neighbourhood gives the shifts).
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, 1, K, H, W)``, ``K = k*k`` in slot order; keys shifted in from outside the image are zero.
        """
        nb = module.neighbourhood
        h, w = x.shape[2:]
        pad = nb.dilation * (nb.kernel_size // 2)
        q = module.query(x) * self.width**-0.5
        k = F.pad(module.key(x), (pad,) * 4)
        # One product map per shift: memory stays at a few copies of q instead of K gathered keys.
        taps = [(q * k[..., dy : dy + h, dx : dx + w]).sum(1) for dy, dx in _neighbour_taps(nb)]
        return torch.stack(taps, 1).unsqueeze(1)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the query-key products, gathered at the layout's slots.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the queries and keys are projected from it.
            padded: Input zero-padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, 1, H*W, K)``.
        """
        q = module.query(x).flatten(2)  # (B, Cq, H*W)
        k = F.pad(module.key(x), lay.pad).flatten(2)  # (B, Cq, Hp*Wp)
        weights = torch.einsum("bcp,bcpk->bpk", q, k[:, :, lay.index]) * self.width**-0.5
        return padded.flatten(2), weights.unsqueeze(1)


@dataclass(frozen=True)
class MergedXVolutionKernel(WeightSource):
    """The merged X-volution kernel: at position ``p`` and neighbour ``d``, the dense ``O x C`` matrix
    ``weight[:, :, d] + w_A(p, d) * value_weight``, where ``w_A`` is a
    [`ShiftProductKernel`][unifiedops.xvolution.ShiftProductKernel] weight on the taps of a 3x3
    neighbourhood dilated by ``shift`` (zero elsewhere), plus ``bias``.

    Registers ``weight`` ``(O, C, k, k)``, ``value_weight`` ``(O, C)``, ``bias`` ``(O,)``, ``query`` and
    ``key``. Per-position dense kernels have no PyTorch kernel: only the reference path runs it.

    Args:
        channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        shift: Distance of the attention's shifts.
        qk_channels: Width of the query and key projections (default ``C``).
    """

    out_channels: int
    shift: int = 1
    qk_channels: int | None = None
    dynamism: ClassVar[str] = "position"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("shift", self.shift, minimum=1)

    @property
    def conv_groups(self) -> int:
        """1: the kernel mixes all input channels (read by the ``reference`` path for a dense source)."""
        return 1

    @property
    def _attention(self) -> ShiftProductKernel:
        return ShiftProductKernel(self.channels, self.qk_channels)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Sliding) or neighbourhood.kernel_size < 2 * self.shift + 1:
            raise ValueError(f"the merged kernel must cover the shifts (2 * shift + 1 taps), got {neighbourhood}")
        k = neighbourhood.kernel_size
        module.weight = nn.Parameter(torch.zeros(self.out_channels, self.channels, k, k))
        module.value_weight = nn.Parameter(torch.zeros(self.out_channels, self.channels))
        module.bias = nn.Parameter(torch.zeros(self.out_channels))
        self._attention.build(module, Sliding(3, self.shift))

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the merged kernel at every position.

        The attention coefficients ``w_A(p, d)`` of the 3x3 taps at distance ``shift`` are placed in
        a ``k x k`` grid (zero at the other taps), and each slot's ``O x C`` matrix is
        ``weight[:, :, d] + w_A(p, d) * value_weight``.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the coefficients are computed from it.
            padded: Input zero-padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)`` (a ``k x k`` sliding window).

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, O, C, H*W, K)``, ``K = k*k``.
        """
        k = module.neighbourhood.kernel_size
        # The attention's 3x3 taps at distance `shift` sit inside the k x k kernel.
        lay3 = _shift_layout(self.shift, *x.shape[2:], device=x.device)
        coeff = self._attention.reference(module, x, F.pad(x, lay3.pad), lay3)[1][:, 0]  # (B, P, 9)
        dynamic = x.new_zeros(*coeff.shape[:2], k, k)
        centre, s = k // 2, self.shift
        dynamic[:, :, centre - s : centre + s + 1 : s, centre - s : centre + s + 1 : s] = coeff.unflatten(-1, (3, 3))
        kernel = module.weight.flatten(2)[None, :, :, None, :] + (
            dynamic.flatten(2)[:, None, None] * module.value_weight[None, :, :, None, None]
        )
        return padded.flatten(2), kernel  # (B, O, C, P, K)

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Add the merged ``bias`` (both BatchNorm shifts).

        Args:
            module: The owning aggregation.
            y: Aggregated features, ``(B, O, H, W)``.

        Returns:
            ``(B, O, H, W)``.
        """
        return y + module.bias.view(1, -1, 1, 1)


@cached_tables
def _shift_layout(shift: int, height: int, width: int) -> Layout:
    # Cached by ints rather than called with a Sliding built here: under torch.compile only Python
    # constants reach a cached table builder (see unifiedops._cache).
    return layout(Sliding(3, shift), height, width)


class XVolution(nn.Module):
    """X-volution (arXiv:2106.02253): a ``k x k`` convolution and a pixel-shift self-attention in
    parallel, each followed by BatchNorm, summed. See the module docstring for the details the paper
    leaves open and the choices made here.

    Points on the axes: the convolution branch is a sliding ``k x k``, dense, static aggregation
    (shared across positions and samples); the attention branch is a sliding 3x3 aggregation dilated
    by ``shift``, one weight shared by all channels, per-position dynamic (query-key products of
    shifted pixels). [`merge`][unifiedops.xvolution.XVolution.merge] folds both into one per-position
    dynamic dense kernel.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd size ``k`` of the convolution branch.
        shift: Distance ``L`` of the attention's pixel shifts.
        qk_channels: Width of the query and key projections (default ``C``).

    Shape:
        ``(B, C, H, W) -> (B, O, H, W)``.

    Examples:
        >>> import torch
        >>> from unifiedops.xvolution import XVolution
        >>> xv = XVolution(16, 32).eval()
        >>> x = torch.randn(2, 16, 9, 9)
        >>> xv(x).shape
        torch.Size([2, 32, 9, 9])
        >>> torch.allclose(xv.merge()(x), xv(x), atol=1e-5)
        True
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, shift: int = 1, qk_channels: int | None = None
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("out_channels", out_channels, minimum=1)
        self.conv = Aggregation(Sliding(kernel_size), DenseKernel(in_channels, out_channels, bias=False))
        self.conv_bn = nn.BatchNorm2d(out_channels)
        self.attention = Aggregation(
            Sliding(3, check_int("shift", shift, minimum=1)), ShiftProductKernel(in_channels, qk_channels)
        )
        self.value = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.attention_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the two branches.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, O, H, W)``.
        """
        return self.conv_bn(self.conv(x)) + self.attention_bn(self.value(self.attention(x)))

    @torch.no_grad()
    def merge(self) -> MergedXVolution:
        """Fold both branches and their BatchNorms (eval statistics) into one aggregation.

        Returns:
            A [`MergedXVolution`][unifiedops.xvolution.MergedXVolution] equal to this module in eval mode.
        """
        conv_scale, conv_shift = _bn_affine(self.conv_bn)
        attn_scale, attn_shift = _bn_affine(self.attention_bn)
        k = self.conv.neighbourhood.kernel_size
        shift = self.attention.neighbourhood.dilation
        size = max(k, 2 * shift + 1)
        src = self.attention.source
        merged = MergedXVolution(src.channels, self.value.out_channels, size, shift, src.qk_channels)
        merged = merged.to(device=self.value.weight.device, dtype=self.value.weight.dtype)
        pad = (size - k) // 2
        merged.weight.copy_(F.pad(self.conv.weight * conv_scale.view(-1, 1, 1, 1), (pad,) * 4))
        merged.value_weight.copy_(self.value.weight.flatten(1) * attn_scale.view(-1, 1))
        merged.bias.copy_(conv_shift + attn_shift)
        merged.query.load_state_dict(self.attention.query.state_dict())
        merged.key.load_state_dict(self.attention.key.state_dict())
        return merged


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``y = scale * x + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class MergedXVolution(Aggregation):
    """The inference form of [`XVolution`][unifiedops.xvolution.XVolution]: one aggregation with a
    per-position dense kernel, ``y_p = sum_d (W(d) + w_A(p, d) V) x_{p+d} + b``
    ([`MergedXVolutionKernel`][unifiedops.xvolution.MergedXVolutionKernel]).

    It is exact, and it is the paper's single operator; it is not faster here, because PyTorch has no
    kernel for per-position dense kernels (only the reference path runs it). Build it with
    [`XVolution.merge`][unifiedops.xvolution.XVolution.merge].

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd size of the merged kernel, at least ``2 * shift + 1``.
        shift: Distance of the attention's pixel shifts.
        qk_channels: Width of the query and key projections (default ``C``).

    Shape:
        ``(B, C, H, W) -> (B, O, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, shift: int = 1, qk_channels: int | None = None
    ) -> None:
        super().__init__(Sliding(kernel_size), MergedXVolutionKernel(in_channels, out_channels, shift, qk_channels))
