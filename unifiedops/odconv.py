"""ODConv: omni-dimensional dynamic convolution (Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution",
ICLR 2022, arXiv:2209.07947).

A layer keeps ``n`` static kernels ``W_1..W_n`` of shape ``(O, C/groups, k, k)`` and computes four
attentions from the globally pooled input, one along each dimension of the kernel space: ``a_c`` over
the ``C`` input channels, ``a_f`` over the ``O`` filters, ``a_s`` over the ``k x k`` taps and ``a_w``
over the ``n`` kernels. Each sample is convolved with

    ``W(x)[o, i] = a_f[o] * a_c[i] * sum_e a_w[e] * (a_s ⊙ W_e)[o, i]``.

The official code scales the input by ``a_c`` and the output by ``a_f``; without a bias, and with zero
padding, folding both into the kernel is the same convolution, so ODConv is one more per-sample
kernel source on the sliding, dense, per-sample point of the axes (beside CondConv, DY-Conv and
KernelWarehouse) and runs on the shared ``batched_conv`` and ``reference`` paths. The reference path
folds all four attentions into the kernel; ``batched_conv`` assembles ``sum_e a_w[e] (a_s ⊙ W_e)`` and
applies ``a_c`` and ``a_f`` to the activations, which is cheaper than two more passes over ``B``
kernels (see [`SampleKernels`][unifiedops.weights.SampleKernels]).

Like the official code, the spatial, channel and filter attentions are shared by all ``n`` kernels
(the paper writes one per kernel), and a head that cannot apply is absent: the filter head for a
depth-wise layer, the spatial head for ``k = 1``, the kernel head for ``n = 1``. Where the official
code returns the Python float ``1.0`` for an absent head, the attention here returns ``None`` and the
kernel assembly skips the product, so every returned value is a tensor or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from unifiedops._checks import check_divisible, check_int, check_number
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Layout, Neighbourhood, Sliding
from unifiedops.warehouse import TemperatureSchedule
from unifiedops.weights import ConvKernelSource, SampleKernels

__all__ = ["ODConv2d", "ODConvKernel", "OmniAttention", "OmniAttentions", "odconv_schedule"]


class OmniAttentions(NamedTuple):
    """The four attentions of one ODConv layer; a head that does not apply is ``None``.

    Attributes:
        channel: Over input channels, ``sigmoid``, ``(B, C)``.
        filter: Over output channels (filters), ``sigmoid``, ``(B, O)``; ``None`` for a depth-wise layer.
        spatial: Over the kernel taps, ``sigmoid``, ``(B, k*k)``; ``None`` for ``k = 1``.
        kernel: Over the kernels, ``softmax``, ``(B, n)``; ``None`` for ``n = 1``.
    """

    channel: torch.Tensor
    filter: torch.Tensor | None
    spatial: torch.Tensor | None
    kernel: torch.Tensor | None


class OmniAttention(nn.Module):
    """ODConv's attention: a shared trunk on the pooled input and up to four heads.

    ``h = ReLU(bn(fc(GAP(x))))`` with ``fc`` a bias-free ``1 x 1`` convolution to
    ``hidden = max(int(C * reduction), min_hidden)`` channels; then ``channel_fc`` (to ``C``),
    ``filter_fc`` (to ``O``), ``spatial_fc`` (to ``k*k``) and ``kernel_fc`` (to ``n``), ``1 x 1``
    convolutions with bias, each divided by the temperature before its sigmoid (softmax for the
    kernel head). Names and shapes are those of the official ``Attention`` module.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Kernel size ``k``.
        groups: Channel groups of the convolution (``groups == C == O`` is depth-wise: no filter head).
        reduction: Hidden width ratio (official: 1/16).
        num_kernels: Kernels ``n``.
        min_hidden: Smallest hidden width (official: 16).
        temperature: Temperature ``T`` of every head (1 at inference; annealed from 30 in training,
            see [`odconv_schedule`][unifiedops.odconv.odconv_schedule]).

    Shape:
        ``(B, C, H, W) ->`` [`OmniAttentions`][unifiedops.odconv.OmniAttentions].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        groups: int = 1,
        reduction: float = 0.0625,
        num_kernels: int = 4,
        min_hidden: int = 16,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        hidden = max(int(in_channels * reduction), min_hidden)
        self.fc = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_channels, 1)
        depthwise = in_channels == groups == out_channels
        self.filter_fc = None if depthwise else nn.Conv2d(hidden, out_channels, 1)
        self.spatial_fc = None if kernel_size == 1 else nn.Conv2d(hidden, kernel_size * kernel_size, 1)
        self.kernel_fc = None if num_kernels == 1 else nn.Conv2d(hidden, num_kernels, 1)
        self.temperature = float(temperature)
        for m in self.modules():  # the official initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def update_temperature(self, temperature: float) -> None:
        """Set the temperature ``T`` of every head (> 0; 1 after the annealing).

        Args:
            temperature: The temperature.
        """
        check_number("temperature", temperature, positive=True)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> OmniAttentions:
        """The four attentions of ``x``.

        Args:
            x: The layer input, ``(B, C, H, W)``.

        Returns:
            [`OmniAttentions`][unifiedops.odconv.OmniAttentions]: ``(B, C)``, ``(B, O)``, ``(B, k*k)``,
                ``(B, n)``, each ``None`` where the head does not apply.
        """
        if self.training and x.shape[0] == 1:
            # BatchNorm over one pooled vector has no variance; torch's own error does not say which layer.
            raise ValueError(
                "ODConv's attention normalises pooled features over the batch, so training needs a batch of "
                f"at least 2 samples, got x of shape {tuple(x.shape)}; use batches of 2 or more, or eval mode"
            )
        h = self.relu(self.bn(self.fc(x.mean((2, 3), keepdim=True))))
        t = self.temperature

        def head(fc: nn.Conv2d | None) -> torch.Tensor | None:
            return None if fc is None else fc(h).flatten(1) / t

        channel, filt, spatial, kernel = (
            head(fc) for fc in (self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc)
        )
        return OmniAttentions(
            torch.sigmoid(channel),
            None if filt is None else torch.sigmoid(filt),
            None if spatial is None else torch.sigmoid(spatial),
            None if kernel is None else kernel.softmax(1),
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@dataclass(frozen=True)
class ODConvKernel(ConvKernelSource):
    """Per-sample kernels from ``n`` static kernels and ODConv's four attentions.

    Registers ``weight`` ``(n, O, C/groups, k, k)`` (each kernel initialised as the official code does,
    Kaiming normal with ``fan_out``) and ``attention``, an [`OmniAttention`][unifiedops.odconv.OmniAttention].
    No bias.

    Args:
        channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        num_kernels: Kernels ``n``.
        groups: Channel groups.
        reduction: Hidden width ratio of the attention.
        min_hidden: Smallest hidden width of the attention.
        temperature: Initial temperature of the attention.
    """

    out_channels: int
    num_kernels: int = 4
    groups: int = 1
    reduction: float = 0.0625
    min_hidden: int = 16
    temperature: float = 1.0
    dynamism: ClassVar[str] = "sample"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("num_kernels", self.num_kernels, minimum=1)
        check_int("groups", self.groups, minimum=1)
        check_divisible("in_channels", self.channels, "groups", self.groups)
        check_divisible("out_channels", self.out_channels, "groups", self.groups)
        check_number("reduction", self.reduction, positive=True)
        check_int("min_hidden", self.min_hidden, minimum=1)
        check_number("temperature", self.temperature, positive=True)

    @property
    def conv_groups(self) -> int:
        """``groups``, the channel groups of the equivalent ``nn.Conv2d``."""
        return self.groups

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Sliding):
            raise TypeError(f"ODConvKernel needs a Sliding neighbourhood, got {type(neighbourhood).__name__}")
        k, n = neighbourhood.kernel_size, self.num_kernels
        module.weight = nn.Parameter(torch.empty(n, self.out_channels, self.channels // self.groups, k, k))
        for w in module.weight.data:
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        module.attention = OmniAttention(
            self.channels, self.out_channels, k, self.groups, self.reduction, n, self.min_hidden, self.temperature
        )
        module.bias = None

    def assemble(self, module: nn.Module, attentions: OmniAttentions, *, scales: bool = True) -> torch.Tensor:
        """The per-sample kernels ``a_f[o] a_c[i] sum_e a_w[e] (a_s ⊙ W_e)[o, i]``.

        Args:
            module: The owning aggregation (holds ``weight`` ``(n, O, C/groups, k, k)``).
            attentions: The layer's [`OmniAttentions`][unifiedops.odconv.OmniAttentions] for a batch.
            scales: Include the channel and filter attentions (``False``: ``sum_e a_w[e] (a_s ⊙ W_e)``).

        Returns:
            ``(B, O, C/groups, k, k)``.
        """
        w = module.weight
        _, o, cg, k, _ = w.shape
        b = attentions.channel.shape[0]
        if not scales:
            attentions = attentions._replace(channel=None, filter=None)
        if attentions.kernel is None:
            kernels = w[0].expand(b, o, cg, k, k)
        else:
            kernels = torch.mm(attentions.kernel, w.flatten(1)).view(b, o, cg, k, k)
        if attentions.spatial is not None:
            kernels = kernels * attentions.spatial.view(b, 1, 1, k, k)
        if attentions.channel is not None:
            # Input channel i of group j, seen by filter o of that group, is channel j * C/groups + i.
            channel = attentions.channel.view(b, self.groups, 1, cg).expand(b, self.groups, o // self.groups, cg)
            kernels = kernels * channel.reshape(b, o, cg, 1, 1)
        if attentions.filter is not None:
            kernels = kernels * attentions.filter.view(b, o, 1, 1, 1)
        return kernels

    def sample_kernels(self, module: nn.Module, x: torch.Tensor) -> SampleKernels:
        """The kernels with the channel and filter attentions left as input and output scales.

        ``W_b = diag(a_f) W'_b diag(a_c)`` with ``W'_b = sum_e a_w[e] (a_s ⊙ W_e)``: the ``batched_conv``
        path scales the input by ``a_c`` and the output by ``a_f`` (the official computation), which
        costs ``B (C H W + O Ho Wo)`` multiplications instead of two passes over ``B`` kernels of
        ``O C k²/groups`` each.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``SampleKernels(W', None, a_c, a_f)``: ``(B, O, C/groups, k, k)``, ``(B, C)``, ``(B, O)`` or
            ``None`` for a depth-wise layer.
        """
        attentions = module.attention(x)
        kernels = self.assemble(module, attentions, scales=False)
        return SampleKernels(kernels, None, attentions.channel, attentions.filter)

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-sample kernels of ``x``.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, O, C/groups, k, k)``.
        """
        return self.assemble(module, module.attention(x))

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the per-sample kernels, for the literal sum.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the attentions are computed from it.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, O, C/groups, 1, K)``, ``K = k*k``.
        """
        return padded.flatten(2), self.conv_weight(module, x).flatten(3).unsqueeze(3)


class ODConv2d(Aggregation):
    """Omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022, arXiv:2209.07947).

    Axes: sparsity, sliding ``k x k``, dense channels (grouped); sharing, across positions;
    dynamism, per sample: ``W(x) = a_f ⊙ a_c ⊙ sum_e a_w[e] (a_s ⊙ W_e)``, the attentions over filters,
    input channels, taps and kernels coming from the pooled input
    ([`OmniAttention`][unifiedops.odconv.OmniAttention]).

    Parameters: ``weight`` ``(n, O, C/groups, k, k)`` and ``attention.{fc, bn, channel_fc, filter_fc,
    spatial_fc, kernel_fc}``, the names and shapes of the official ``ODConv2d``, whose state dicts load
    directly. No bias. Zero padding ``dilation * (k // 2)`` (the official layers pass ``k // 2``).

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd kernel size ``k``.
        stride: Stride.
        dilation: Dilation.
        groups: Channel groups.
        reduction: Hidden width ratio of the attention, ``hidden = max(int(C * reduction), min_hidden)``.
        kernel_num: Kernels ``n`` (the paper's "1x" is 1, "4x" is 4).
        min_hidden: Smallest hidden width of the attention (official: 16).
        temperature: Initial temperature of the attention heads; the official training anneals it from
            30 to 1 ([`odconv_schedule`][unifiedops.odconv.odconv_schedule]), inference uses 1.
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, H, W) -> (B, O, ceil(H / stride), ceil(W / stride))``.

    Examples:
        >>> import torch
        >>> from unifiedops.odconv import ODConv2d
        >>> conv = ODConv2d(64, 64, 3, kernel_num=4)
        >>> conv(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
        >>> hidden = 16  # max(int(64 / 16), 16)
        >>> heads = (hidden + 1) * (64 + 64 + 9 + 4)  # channel, filter, spatial and kernel heads, with bias
        >>> sum(p.numel() for p in conv.parameters()) == 4 * 64 * 64 * 9 + 64 * hidden + 2 * hidden + heads
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        reduction: float = 0.0625,
        kernel_num: int = 4,
        *,
        min_hidden: int = 16,
        temperature: float = 1.0,
        path: str = "auto",
    ) -> None:
        check_int("in_channels", in_channels, minimum=1)
        check_int("kernel_num", kernel_num, minimum=1)
        source = ODConvKernel(in_channels, out_channels, kernel_num, groups, reduction, min_hidden, temperature)
        super().__init__(Sliding(kernel_size, dilation, stride=stride), source, path=path)


def odconv_schedule(
    iters_per_epoch: int, temp_epochs: float = 10, init: float = 30.0, end: float = 1.0
) -> TemperatureSchedule:
    """ODConv's temperature annealing (official training code): linear from ``init`` to ``end`` over
    ``temp_epochs`` epochs, stepped per iteration, then constant; ``step(model)`` sets it on every
    [`OmniAttention`][unifiedops.odconv.OmniAttention].

    Args:
        iters_per_epoch: Iterations per epoch.
        temp_epochs: Epochs of the decay (official: 10).
        init: Initial temperature (official: 30).
        end: Final temperature (official: 1).

    Returns:
        A [`TemperatureSchedule`][unifiedops.warehouse.TemperatureSchedule].

    Examples:
        >>> from unifiedops.odconv import odconv_schedule
        >>> s = odconv_schedule(iters_per_epoch=100)
        >>> s.value(0), s.value(500), s.value(1000)
        (30.0, 15.5, 1.0)
    """
    return TemperatureSchedule(iters_per_epoch, temp_epochs, init, end, kind=OmniAttention)
