"""Weight sources: where the aggregation weights ``w_ij`` come from (the sharing and dynamism axes).

Every source produces weights of one shape, ``(Bw, G, Pw, K)``:

* ``G`` weight groups over the ``C`` channels (contiguous blocks of ``C // G`` channels share one
  weight): ``G = C`` is depth-wise, ``G = heads`` is multi-head attention;
* ``Bw`` is 1 for a static weight (shared across samples) or ``B`` for a dynamic one;
* ``Pw`` is 1 for a weight shared across positions (a convolution) or ``H*W`` for a per-position
  weight (attention, involution);
* ``K`` neighbours, in the slot order of the neighbourhood.

A source is a frozen description.
[`WeightSource.build`][unifiedops.weights.WeightSource.build] registers its parameters on the
owning [`Aggregation`][unifiedops.Aggregation], under the names of the official implementations, so a
preset's ``state_dict`` is that of the module it reproduces (``weight``/``bias`` of a depth-wise
``nn.Conv2d``; ``qkv``/``proj``/``relative_position_bias_table`` of timm's Swin attention).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from unifiedops._checks import check_choice, check_divisible, check_int
from unifiedops.neighbourhoods import Layout, Neighbourhood

__all__ = [
    "DYNAMISMS",
    "PROJECTIONS",
    "ConvKernelSource",
    "DecomposedKernelSource",
    "DenseKernel",
    "PositionKernel",
    "QKAttention",
    "SameChannels",
    "SampleKernel",
    "SampleKernels",
    "StaticKernel",
    "WeightSource",
    "coordinate_grid",
]

DYNAMISMS = ("static", "sample", "position", "attention")
"""Values of [`WeightSource.dynamism`][unifiedops.weights.WeightSource]: a weight shared by every
sample, one per sample, one per position (a map of the centre feature), or one per position from
query-key products. The execution paths are chosen from it."""


@dataclass(frozen=True)
class WeightSource:
    """Base class of the weight sources.

    Class attributes ``dynamism`` (one of [`DYNAMISMS`][unifiedops.weights.DYNAMISMS]) and ``dense``
    (whether output channels mix input channels, as in a full convolution, rather than each channel
    reading only itself, as in a depth-wise one) place a source on the axes; the execution paths are
    chosen from them.

    Args:
        channels: Number of channels ``C`` the aggregation reads.
    """

    channels: int
    dynamism: ClassVar[str] = "static"
    dense: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int("channels", self.channels, minimum=1)

    # ``out_channels`` (the channels the aggregation writes) is not declared here: DenseKernel takes
    # it as a dataclass field, which a base-class property would shadow. Sources provide it through
    # ``SameChannels`` or a field.
    out_channels: ClassVar[int]

    @property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``; ``C // G`` consecutive channels share a weight.

        Only sources that are not ``dense`` define it; a dense source has ``conv_groups`` instead.
        """
        raise NotImplementedError

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        """Register this source's parameters on ``module``.

        Args:
            module: The owning aggregation.
            neighbourhood: Its neighbourhood (gives the kernel size and relative-position range).
        """
        raise NotImplementedError

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values and weights of the literal formula, for the ``reference`` path.

        The path gathers the values at ``lay.index``, zeroes the slots ``lay.valid`` rules out, and
        sums the neighbours times the weights over ``K``; a weight tensor computed at every input
        position (``Pw = H*W``) is subsampled to the output positions when the neighbourhood is
        strided.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``
                ([`layout`][unifiedops.neighbourhoods.layout]).

        Returns:
            ``(values, weights)``: the features aggregated, ``(B, Cv, Hp*Wp)`` (the padded input
                itself, ``Cv = C``, unless the source aggregates a projection), and the weights,
                ``(Bw, G, Pw, K)`` with ``Pw`` 1, ``H*W`` or ``Ho*Wo``; for a ``dense`` source
                ``(Bw, O, C/conv_groups, Pw, K)``. A source whose bias depends on the input adds a
                third item, that bias per sample, ``(B, O)``, which the path adds before ``finish``.
        """
        raise NotImplementedError

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """What follows the sum (bias, output projection).

        Args:
            module: The owning aggregation.
            y: Aggregated features, ``(B, O, Ho, Wo)``.

        Returns:
            The module output, ``(B, O, Ho, Wo)``.
        """
        return y


class SameChannels:
    """Mixin of the sources that write as many channels as they read."""

    @property
    def out_channels(self) -> int:
        """Number of channels the aggregation writes: ``channels``."""
        return self.channels  # type: ignore[attr-defined]


class SampleKernels(NamedTuple):
    """Per-sample kernels as the ``batched_conv`` path takes them: sample ``b`` is convolved as
    ``out_scale[b] ⊙ (conv(in_scale[b] ⊙ x_b, weight[b]) + bias[b])``; a ``None`` factor is 1 (bias 0).

    Attributes:
        weight: ``(B, O, C/groups, k, k)`` (``(1, ...)`` expanded is fine).
        bias: ``(O,)``, ``(B, O)`` or ``None``.
        in_scale: Per-sample input-channel scales ``(B, C)`` or ``None``.
        out_scale: Per-sample output-channel scales ``(B, O)`` or ``None``.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    in_scale: torch.Tensor | None = None
    out_scale: torch.Tensor | None = None


class ConvKernelSource(WeightSource):
    """A source whose weights are convolution kernels shared across positions (static or per
    sample), so the ``conv`` and ``batched_conv`` paths can run it with ``F.conv2d``.

    Subclasses define ``conv_weight``, ``conv_groups`` and the ``bias`` they register; ``finish``
    adds that bias, so the conv paths may fuse it into the convolution instead.

    Args:
        channels: Number of channels ``C`` the aggregation reads.
    """

    @property
    def conv_groups(self) -> int:
        """``groups`` of the equivalent ``F.conv2d`` (``C`` for a depth-wise source)."""
        raise NotImplementedError

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Kernels as ``F.conv2d`` takes them, one set per sample.

        The ``conv`` path convolves with ``conv_weight(module, x)[0]``; the ``batched_conv`` path
        folds the batch into the groups and convolves sample ``b`` with set ``b``.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)`` (read only by dynamic sources).

        Returns:
            ``(Bw, O, C/conv_groups, k, k)``: ``Bw`` is 1 for a static source, ``B`` for a
                per-sample one.
        """
        raise NotImplementedError

    def conv_bias(self, module: nn.Module) -> torch.Tensor | None:
        """The bias the conv paths pass to ``F.conv2d`` and ``finish`` adds on the other paths.

        Args:
            module: The owning aggregation.

        Returns:
            The module's ``bias`` parameter, ``(O,)``, or ``None`` when it has none.
        """
        return getattr(module, "bias", None)

    def sample_kernels(self, module: nn.Module, x: torch.Tensor) -> SampleKernels:
        """Kernels and bias for the ``batched_conv`` path, possibly with diagonal factors left apart.

        By default ``SampleKernels(conv_weight(module, x), conv_bias(module))``. A source whose bias
        depends on the input (DCD's) returns one bias per sample; a source whose kernel is
        ``diag(out_scale_b) W_b diag(in_scale_b)`` (ODConv's filter and channel attentions; a bias is
        then scaled too) may return
        ``W_b`` and the two scales, which the path applies to the activations: ``B * (C*H*W + O*Ho*Wo)``
        multiplications instead of two passes over ``B`` full kernels.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            A [`SampleKernels`][unifiedops.weights.SampleKernels].
        """
        return SampleKernels(self.conv_weight(module, x), self.conv_bias(module))

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Add the [`conv_bias`][unifiedops.weights.ConvKernelSource.conv_bias], if any.

        Args:
            module: The owning aggregation.
            y: Aggregated features, ``(B, O, Ho, Wo)``.

        Returns:
            ``y`` plus the bias broadcast over positions, ``(B, O, Ho, Wo)``.
        """
        bias = self.conv_bias(module)
        return y if bias is None else y + bias.view(1, -1, 1, 1)


class DecomposedKernelSource(ConvKernelSource):
    """A per-sample kernel source whose kernels factor as a static kernel plus a low-rank dynamic
    part (DCD's ``W(x) = Λ(x) W0 + P Φ(x) Qᵀ``), so the ``decomposed`` path can compute it in feature
    space: one static convolution for the whole batch and a few narrow ``1 x 1`` ones, instead of
    assembling ``B`` full kernels. The kernel-space form (``sample_kernels``) stays available to the
    ``batched_conv`` and ``reference`` paths, and must give the same output.

    Args:
        channels: Number of channels ``C`` the aggregation reads.
    """

    def feature_space(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The output computed from the factors, without assembling a kernel.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``(B, O, Ho, Wo)``.
        """
        raise NotImplementedError


def _kernel_slots(source: str, neighbourhood: Neighbourhood) -> int:
    if neighbourhood.slots is None:
        raise ValueError(
            f"{source} needs a neighbourhood of fixed size (Sliding, Window or Point); "
            f"got {type(neighbourhood).__name__}, whose size depends on the input"
        )
    return neighbourhood.slots


def _per_channel(kernel: torch.Tensor, groups: int, channels: int, dim: int) -> torch.Tensor:
    """Repeat one kernel per weight group into one per channel (a no-op when depth-wise)."""
    return kernel if groups == channels else kernel.repeat_interleave(channels // groups, dim)


def _check_groups(channels: int, groups: int | None) -> int:
    groups = channels if groups is None else check_int("groups", groups, minimum=1)
    check_divisible("channels", channels, "groups", groups)
    return groups


@dataclass(frozen=True)
class StaticKernel(SameChannels, ConvKernelSource):
    """A learned kernel shared across positions and samples (a convolution).

    Parameters registered: ``weight`` ``(G, 1, k, k)`` and ``bias`` ``(C,)``, as in
    ``nn.Conv2d(C, C, k, groups=C)`` when ``G = C``.

    Args:
        channels: Number of channels ``C``.
        groups: Weight groups ``G`` (default ``C``: depth-wise).
        bias: Whether to add a learned per-channel bias.
    """

    groups: int | None = None
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_groups(self.channels, self.groups)

    @functools.cached_property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``: ``groups``, or ``C`` when it is ``None``."""
        return _check_groups(self.channels, self.groups)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("StaticKernel", neighbourhood)
        module.weight = nn.Parameter(torch.empty(self.weight_groups, 1, k, k))
        module.bias = nn.Parameter(torch.empty(self.channels)) if self.bias else None
        # nn.Conv2d's initialisation, so a DWConv starts where a depth-wise conv would.
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            bound = 1 / math.sqrt(k * k)
            nn.init.uniform_(module.bias, -bound, bound)

    def kernel(self, module: nn.Module) -> torch.Tensor:
        """The learned kernel as aggregation weights.

        Args:
            module: The owning aggregation.

        Returns:
            ``weight`` ``(G, 1, k, k)`` reshaped to ``(1, G, 1, K)``, ``K = k*k``.
        """
        return module.weight.reshape(1, self.weight_groups, 1, -1)

    @property
    def conv_groups(self) -> int:
        """``C``: the equivalent convolution is depth-wise (the ``G`` kernels are repeated per channel)."""
        return self.channels

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The kernel as a depth-wise ``F.conv2d`` weight, each group's kernel repeated for its channels.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)`` (not read: the kernel is static).

        Returns:
            ``(1, C, 1, k, k)``.
        """
        return _per_channel(module.weight, self.weight_groups, self.channels, 0).unsqueeze(0)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the learned kernel.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)`` (not read).
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(1, G, 1, K)``.
        """
        return padded.flatten(2), self.kernel(module)


@dataclass(frozen=True)
class DenseKernel(ConvKernelSource):
    """A learned kernel that mixes channels within groups, shared across positions and samples:
    ``nn.Conv2d(C, O, k, groups=groups)``, whose ``weight`` ``(O, C/groups, k, k)`` and ``bias``
    ``(O,)`` it registers.

    Args:
        channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        groups: Channel groups; ``C`` and ``O`` must both be divisible by it.
        bias: Whether to add a learned per-channel bias.
    """

    out_channels: int
    groups: int = 1
    bias: bool = True
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("groups", self.groups, minimum=1)
        check_divisible("channels", self.channels, "groups", self.groups)
        check_divisible("out_channels", self.out_channels, "groups", self.groups)

    @property
    def conv_groups(self) -> int:
        """``groups``, the channel groups of the equivalent ``nn.Conv2d``."""
        return self.groups

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("DenseKernel", neighbourhood)
        conv = nn.Conv2d(self.channels, self.out_channels, k, groups=self.groups, bias=self.bias)
        module.weight, module.bias = conv.weight, conv.bias

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The registered ``weight`` with a leading axis of one set.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)`` (not read: the kernel is static).

        Returns:
            ``(1, O, C/groups, k, k)``.
        """
        return module.weight.unsqueeze(0)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the kernel, one ``O x C/groups`` matrix per neighbour slot.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)`` (not read).
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(1, O, C/groups, 1, K)``.
        """
        return padded.flatten(2), module.weight.flatten(2).unsqueeze(0).unsqueeze(3)


@dataclass(frozen=True)
class SampleKernel(SameChannels, ConvKernelSource):
    """A kernel predicted per sample from the pooled input, shared across positions (DWNet).

    ``GAP -> conv1 (1x1, C -> C/reduction, no bias) -> bn -> ReLU -> conv2 (1x1, -> G*k*k)``
    gives one ``k x k`` kernel per sample per group; ``bias`` ``(C,)`` starts at zero. The
    parameter names are those of DWNet's ``DynamicDWConv``.

    Args:
        channels: Number of channels ``C``.
        groups: Weight groups ``G`` (default ``C``: depth-wise).
        reduction: Channel reduction of the predictor's hidden layer.
        bias: Whether to add a learned per-channel bias.
    """

    groups: int | None = None
    reduction: int = 4
    bias: bool = True
    dynamism: ClassVar[str] = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_groups(self.channels, self.groups)
        check_int("reduction", self.reduction, minimum=1)
        check_divisible("channels", self.channels, "reduction", self.reduction)

    @functools.cached_property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``: ``groups``, or ``C`` when it is ``None``."""
        return _check_groups(self.channels, self.groups)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("SampleKernel", neighbourhood)
        hidden = self.channels // self.reduction
        module.conv1 = nn.Conv2d(self.channels, hidden, 1, bias=False)
        module.bn = nn.BatchNorm2d(hidden)
        module.conv2 = nn.Conv2d(hidden, self.weight_groups * k * k, 1)
        module.bias = nn.Parameter(torch.zeros(self.channels)) if self.bias else None

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels predicted from the globally pooled input.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, G, 1, K)``, ``K = k*k``: one kernel per sample and group, shared by all positions.
        """
        # The 1x1 convs act on a 1x1 map: as matrix products they skip conv2d's setup, which
        # matters because conv2 is a large matrix (C/r x G*k*k) read for a handful of rows.
        hidden = F.linear(x.mean((2, 3)), module.conv1.weight.flatten(1))
        hidden = F.relu(module.bn(hidden[:, :, None, None]).flatten(1))
        w = F.linear(hidden, module.conv2.weight.flatten(1), module.conv2.bias)
        return w.reshape(x.shape[0], self.weight_groups, 1, w.shape[1] // self.weight_groups)

    @property
    def conv_groups(self) -> int:
        """``C``: the equivalent convolution is depth-wise (the ``G`` kernels are repeated per channel)."""
        return self.channels

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-sample depth-wise ``F.conv2d`` weights, each group's kernel repeated for its channels.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, C, 1, k, k)``.
        """
        b, k = x.shape[0], module.conv2.out_channels // self.weight_groups
        side = math.isqrt(k)
        kernel = self.kernel(module, x).view(b, self.weight_groups, 1, side, side)
        return _per_channel(kernel, self.weight_groups, self.channels, 1)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the per-sample kernels.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the kernels are predicted from it.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, G, 1, K)``.
        """
        return padded.flatten(2), self.kernel(module, x)


@dataclass(frozen=True)
class PositionKernel(SameChannels, WeightSource):
    """A kernel predicted at every position from the centre feature (involution; DWNet's
    inhomogeneous dynamic depth-wise conv).

    ``conv1 = [1x1 C -> C/reduction, BN, ReLU]``, ``conv2 = [1x1 -> k*k*G]``: one ``k x k`` kernel
    per position per group; channel ``c`` uses group ``c // (C / G)``. Parameter names follow
    DWNet's ``IDynamicDWConv`` (both are ``nn.Sequential``, as there).

    Args:
        channels: Number of channels ``C``.
        groups: Weight groups ``G``.
        reduction: Channel reduction of the predictor's hidden layer.
    """

    groups: int = 1
    reduction: int = 4
    dynamism: ClassVar[str] = "position"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_groups(self.channels, self.groups)
        check_int("reduction", self.reduction, minimum=1)
        check_divisible("channels", self.channels, "reduction", self.reduction)

    @functools.cached_property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``: ``groups``."""
        return _check_groups(self.channels, self.groups)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("PositionKernel", neighbourhood)
        hidden = self.channels // self.reduction
        module.conv1 = nn.Sequential(nn.Conv2d(self.channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU())
        module.conv2 = nn.Sequential(nn.Conv2d(hidden, k * k * self.weight_groups, 1))

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-position kernels predicted from the feature at each position (the ``shifted_sum`` path's layout).

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, G, K, H, W)``, ``K = k*k``: one kernel per sample, group and input position (a
                strided aggregation uses every ``stride``-th).
        """
        b, _, h, w = x.shape
        y = module.conv2(module.conv1(x))
        return y.reshape(b, self.weight_groups, y.shape[1] // self.weight_groups, h, w)  # no -1: B may be 0

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the per-position kernels.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the kernels are predicted from it.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, G, H*W, K)``, a kernel at every input
                position (the path keeps the strided ones).
        """
        return padded.flatten(2), self.kernel(module, x).flatten(3).transpose(2, 3)


PROJECTIONS = ("linear", "conv")
"""Parameter layouts of the ``q, k, v`` projections of [`QKAttention`][unifiedops.QKAttention]:
``"linear"`` is one ``qkv`` ``nn.Linear(C, 3C)`` (timm's Swin and ViT); ``"conv"`` is three 1x1
``nn.Conv2d`` named ``conv1``, ``conv2``, ``conv3`` (ACmix)."""


def _reflect_index(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflection-padded axis (the caller checks that the padding is shorter than it)."""
    i = torch.arange(-before, length + after, device=device).abs()
    return torch.where(i > length - 1, 2 * (length - 1) - i, i)


def coordinate_grid(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Normalised coordinates ``(1, 2, H, W)``: channel 0 runs over ``x``, channel 1 over ``y``, each
    ``linspace(-1, 1)`` along its axis (ACmix's position grid).

    Args:
        height: Grid height ``H``.
        width: Grid width ``W``.
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        The grid, ``(1, 2, H, W)``.
    """
    gx = torch.linspace(-1, 1, width, device=device, dtype=dtype).expand(height, width)
    gy = torch.linspace(-1, 1, height, device=device, dtype=dtype)[:, None].expand(height, width)
    return torch.stack((gx, gy)).unsqueeze(0)


@dataclass(frozen=True)
class QKAttention(WeightSource):
    """Per-position weights from scaled query-key dot products, softmax-normalised over the
    neighbourhood, with optional relative-position terms (local, window and global attention).

    With the defaults it registers ``qkv`` (``Linear(C, 3C)``), ``proj`` (``Linear(C, C)``) and, with
    ``rel_pos_bias``, ``relative_position_bias_table`` of ``(2E-1)^2 x heads`` entries, where ``E``
    is the window (or kernel) size: the names and layout of timm's Swin ``WindowAttention``.
    The aggregated features are the values ``v``; ``proj`` follows the sum.

    ``coord_pos_embed`` adds ACmix's relative position term: ``pe = conv_p(grid)``, a 1x1 conv
    (``2 -> head_dim``) of the [`coordinate_grid`][unifiedops.weights.coordinate_grid], padded like the
    input, and the logit of query ``i`` and key ``j`` becomes ``q_i . (k_j + pe_i - pe_j)``. Since
    ``q_i . pe_i`` is the same for every ``j`` it cancels in the softmax, so the fast paths use keys
    ``k_j - pe_j``.

    Args:
        channels: Number of input channels ``C``.
        heads: Number of heads ``G``; ``Cv // heads`` channels share each weight.
        qkv_bias: Whether the ``q, k, v`` projections have a bias.
        rel_pos_bias: Whether to add a learned relative-position bias (Swin's table) to the logits.
        scale: Logit scale; default ``(Cv // heads) ** -0.5``.
        value_channels: Channels ``Cv`` of ``q``, ``k``, ``v`` and of the output (default ``C``).
        projection: One of [`PROJECTIONS`][unifiedops.weights.PROJECTIONS].
        out_proj: Whether a ``proj`` ``Linear(Cv, Cv)`` follows the sum.
        coord_pos_embed: Whether to add ACmix's coordinate-embedding relative term (``conv_p``).
    """

    heads: int = 1
    qkv_bias: bool = True
    rel_pos_bias: bool = False
    scale: float | None = None
    value_channels: int | None = None
    projection: str = "linear"
    out_proj: bool = True
    coord_pos_embed: bool = False
    dynamism: ClassVar[str] = "attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("heads", self.heads, minimum=1)
        if self.value_channels is not None:
            check_int("value_channels", self.value_channels, minimum=1)
        check_divisible(
            "channels" if self.value_channels is None else "value_channels", self.out_channels, "num_heads", self.heads
        )
        check_choice("projection", self.projection, PROJECTIONS)

    @property
    def out_channels(self) -> int:
        """Channels ``Cv`` of the values and of the output: ``value_channels``, or ``C`` when it is ``None``."""
        return self.channels if self.value_channels is None else self.value_channels

    @property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``: ``heads`` (one attention map per head)."""
        return self.heads

    @property
    def head_dim(self) -> int:
        """Channels per head, ``D = Cv // heads``."""
        return self.out_channels // self.heads

    @property
    def logit_scale(self) -> float:
        """The factor applied to ``q . k``."""
        return self.head_dim**-0.5 if self.scale is None else self.scale

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        c, cv = self.channels, self.out_channels
        if self.projection == "linear":
            module.qkv = nn.Linear(c, 3 * cv, bias=self.qkv_bias)
        else:
            module.conv1 = nn.Conv2d(c, cv, 1, bias=self.qkv_bias)
            module.conv2 = nn.Conv2d(c, cv, 1, bias=self.qkv_bias)
            module.conv3 = nn.Conv2d(c, cv, 1, bias=self.qkv_bias)
        if self.rel_pos_bias:
            extent = neighbourhood.slots
            if extent is None:
                raise ValueError("rel_pos_bias needs a neighbourhood of fixed size (Sliding or Window), got Global")
            module.relative_position_bias_table = nn.Parameter(torch.empty((2 * extent - 1) ** 2, self.heads))
            trunc_normal_(module.relative_position_bias_table, std=0.02)
        if self.coord_pos_embed:
            module.conv_p = nn.Conv2d(2, self.head_dim, 1)
        if self.out_proj:
            module.proj = nn.Linear(cv, cv)

    def qkv_weight(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``q, k, v`` projections as one linear map, from either of the
        [`PROJECTIONS`][unifiedops.weights.PROJECTIONS] layouts.

        Args:
            module: The owning aggregation.

        Returns:
            ``(weight, bias)``: ``(3*Cv, C)`` and ``(3*Cv,)`` (``None`` without ``qkv_bias``), rows
                ordered ``q``, ``k``, ``v``.
        """
        if self.projection == "linear":
            return module.qkv.weight, module.qkv.bias
        convs = (module.conv1, module.conv2, module.conv3)
        weight = torch.cat([conv.weight.flatten(1) for conv in convs])
        bias = None if not self.qkv_bias else torch.cat([conv.bias for conv in convs])
        return weight, bias

    def project(self, module: nn.Module, x_nhwc: torch.Tensor) -> torch.Tensor:
        """Project channels-last input to ``q, k, v``, split into heads.

        Args:
            module: The owning aggregation.
            x_nhwc: Channels-last input, ``(B, H, W, C)`` (any leading axes: ``(..., C)``).

        Returns:
            ``q, k, v`` stacked, ``(3, B, H, W, G, D)`` (``(3, ..., G, D)`` in general), ``G = heads``,
                ``D = head_dim``.
        """
        qkv = F.linear(x_nhwc, *self.qkv_weight(module))
        qkv = qkv.unflatten(-1, (3, self.heads, self.head_dim))
        return qkv.movedim(-3, 0)

    def pad_projected(
        self, module: nn.Module, qkv: torch.Tensor, pad: tuple[int, int, int, int], mode: str
    ) -> torch.Tensor:
        """Pad projections ``(3, B, H, W, G, D)`` as projecting the padded input would.

        Projection is position-wise, so reflecting the projections equals projecting the reflected
        input, and a zero-padded position projects to the projection bias.

        Args:
            module: The owning aggregation.
            qkv: Projections of the unpadded input, ``(3, B, H, W, G, D)``.
            pad: ``(left, right, top, bottom)``.
            mode: ``"constant"`` or ``"reflect"``.

        Returns:
            ``(3, B, H + top + bottom, W + left + right, G, D)``.
        """
        left, right, top, bottom = pad
        if not any(pad):
            return qkv
        t, b, h, w, g, d = qkv.shape
        if mode == "reflect":
            # Gathering reflected rows and columns gives a contiguous result in one copy (F.pad would
            # need the maps channels-first and a copy back).
            rows = _reflect_index(h, top, bottom, qkv.device)
            cols = _reflect_index(w, left, right, qkv.device)
            return qkv[:, :, rows[:, None], cols[None, :]]
        fill = self.project(module, qkv.new_zeros(self.channels))  # (3, G, D)
        out = fill[:, None, None, None].expand(t, b, h + top + bottom, w + left + right, g, d).clone()
        out[:, :, top : top + h, left : left + w] = qkv
        return out

    def position_embedding(
        self, module: nn.Module, height: int, width: int, pad: tuple[int, int, int, int], mode: str, like: torch.Tensor
    ) -> torch.Tensor | None:
        """ACmix's ``pe`` on the padded grid, or ``None`` without ``coord_pos_embed``.

        Args:
            module: The owning aggregation.
            height: Input height ``H``.
            width: Input width ``W``.
            pad: ``(left, right, top, bottom)``, as the input is padded.
            mode: ``"constant"`` or ``"reflect"``.
            like: A tensor whose device and dtype the result takes.

        Returns:
            ``(Hp, Wp, head_dim)``.
        """
        if not self.coord_pos_embed:
            return None
        grid = coordinate_grid(height, width, device=like.device, dtype=like.dtype)
        pe = F.conv2d(grid, module.conv_p.weight, module.conv_p.bias)
        if any(pad):
            pe = F.pad(pe, pad, mode=mode)
        return pe[0].permute(1, 2, 0)

    def bias(self, module: nn.Module, rel_index: torch.Tensor) -> torch.Tensor | None:
        """The relative-position bias of the logits, gathered from ``relative_position_bias_table``.

        Args:
            module: The owning aggregation.
            rel_index: Long indices into the table, ``(..., Q, K)``: for ``Q`` queries, ``K`` keys each
                (``Layout.rel_index`` is ``(Ho*Wo, K)``).

        Returns:
            ``(..., G, Q, K)``, ``G = heads``; ``None`` without ``rel_pos_bias``.
        """
        if not self.rel_pos_bias:
            return None
        return module.relative_position_bias_table[rel_index].movedim(-1, -3)

    def reference(
        self,
        module: nn.Module,
        x: torch.Tensor,
        padded: torch.Tensor,
        lay: Layout,
        projected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded values and the softmax of the query-key logits over each neighbourhood.

        The logits are ``scale * q_i . k_j`` (plus the relative-position bias and ACmix's
        position term when enabled), with slots outside ``lay.valid`` set to ``-inf`` before the
        softmax. ``q, k, v`` are projected from ``x`` and padded as projecting ``padded`` would
        (see [`pad_projected`][unifiedops.weights.QKAttention.pad_projected]); ``padded`` itself is
        not read.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)`` (not read).
            lay: The neighbourhood's layout for ``(H, W)``.
            projected: Projections already computed, ``(3, B, H, W, G, D)`` (ACmix shares them with
                its convolution half); ``None`` projects ``x``.

        Returns:
            ``(values, weights)``: the padded values ``v``, ``(B, Cv, Hp*Wp)``, and the attention
                weights, ``(B, G, Ho*Wo, K)``.
        """
        b, _, h, w = x.shape
        if projected is None:
            projected = self.project(module, x.permute(0, 2, 3, 1))
        qkv = self.pad_projected(module, projected, lay.pad, lay.pad_mode).flatten(2, 3)
        q, k, v = qkv  # (B, Np, G, D)
        q = q[:, lay.centre]  # (B, P, G, D)
        k = k[:, lay.index]  # (B, P, K, G, D)
        pe = self.position_embedding(module, h, w, lay.pad, lay.pad_mode, x)
        if pe is not None:
            pe = pe.flatten(0, 1)
            k = k + (pe[lay.centre][:, None] - pe[lay.index])[:, :, None]
        logits = torch.einsum("bpgd,bpkgd->bgpk", q, k) * self.logit_scale
        bias = self.bias(module, lay.rel_index)
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(~lay.valid, float("-inf"))
        values = v.flatten(2).transpose(1, 2)  # (B, Cv, Np)
        return values, logits.softmax(-1).reshape(b, self.heads, *lay.index.shape)

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Apply the output projection ``proj`` (a no-op without ``out_proj``).

        Args:
            module: The owning aggregation.
            y: Aggregated values, ``(B, Cv, Ho, Wo)``.

        Returns:
            ``(B, Cv, Ho, Wo)``.
        """
        if not self.out_proj:
            return y
        return F.linear(y.permute(0, 2, 3, 1), module.proj.weight, module.proj.bias).permute(0, 3, 1, 2)
