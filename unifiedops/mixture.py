"""Per-sample mixtures of whole kernels: CondConv and DY-Conv.

Both keep ``n`` full convolution kernels (and biases) per layer and convolve each sample with
``sum_e a_e(x) W_e`` (bias ``sum_e a_e(x) b_e``), where the coefficients ``a(x)`` come from the
globally pooled input. They differ only in the routing: CondConv uses ``sigmoid(Linear(GAP(x)))``,
DY-Conv ``softmax(FC(ReLU(FC(GAP(x)))) / tau)`` with a temperature annealed during training. On the
three axes both are a sliding ``k x k`` aggregation with dense channel mixing, shared across
positions, dynamic per sample: the same point as a KernelWarehouse layer whose cells are whole
kernels and whose warehouse serves one layer (see [`unifiedops.warehouse`][unifiedops.warehouse]).

The source is [`MixtureKernel`][unifiedops.mixture.MixtureKernel]; it runs on the ``batched_conv``
path (one grouped convolution with the batch folded into the groups) and on the ``reference`` path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from unifiedops._checks import check_bool, check_choice, check_divisible, check_int, check_number
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Layout, Neighbourhood, Sliding
from unifiedops.warehouse import TemperatureSchedule
from unifiedops.weights import ConvKernelSource

__all__ = ["ROUTINGS", "CondConv", "DYConv", "MixtureAttention", "MixtureConv", "MixtureKernel", "dyconv_schedule"]

ROUTINGS = ("sigmoid", "softmax")
"""Routings of [`MixtureKernel`][unifiedops.mixture.MixtureKernel]: CondConv's ``sigmoid`` of one
linear layer (``routing_fn``), or DY-Conv's temperature ``softmax`` of a two-layer MLP (``attention``)."""


class MixtureAttention(nn.Module):
    """DY-Conv's kernel attention on pooled features: ``softmax(fc2(ReLU(fc1(p))) / temperature)``.

    Args:
        channels: Pooled input channels ``C``.
        hidden: Hidden width.
        num_kernels: Kernels ``n``.
        temperature: Initial softmax temperature ``tau``.

    Shape:
        ``(B, C) -> (B, n)``.
    """

    def __init__(self, channels: int, hidden: int, num_kernels: int, temperature: float = 30.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, num_kernels)
        self.temperature = float(temperature)

    def update_temperature(self, temperature: float) -> None:
        """Set the softmax temperature ``tau`` (> 0; 1 after the annealing).

        Args:
            temperature: The temperature.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}")
        self.temperature = float(temperature)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Attention over the kernels.

        Args:
            pooled: Globally pooled features, ``(B, C)``.

        Returns:
            ``(B, n)``, each row summing to 1.
        """
        return (self.fc2(torch.relu(self.fc1(pooled))) / self.temperature).softmax(-1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


@dataclass(frozen=True)
class MixtureKernel(ConvKernelSource):
    """Per-sample kernels ``sum_e a_e(x) W_e`` mixed from ``n`` whole kernels (CondConv, DY-Conv).

    Registers ``weight`` ``(n, O, C/groups, k, k)`` (each kernel initialised like an ``nn.Conv2d``),
    ``bias`` ``(n, O)`` or ``None``, and the routing: ``routing_fn`` (``Linear(C, n)``) for
    ``"sigmoid"``, ``attention`` (a [`MixtureAttention`][unifiedops.mixture.MixtureAttention]) for
    ``"softmax"``. The mixed bias depends on the sample; the paths convolve without it and the preset
    adds it ([`MixtureConv`][unifiedops.mixture.MixtureConv]).

    Args:
        channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        num_kernels: Kernels ``n``.
        groups: Channel groups.
        bias: Whether each kernel has a bias.
        routing: One of [`ROUTINGS`][unifiedops.mixture.ROUTINGS].
        reduction: ``"softmax"`` only: hidden width ``max(C // reduction, 1)``.
        temperature: ``"softmax"`` only: initial temperature.
    """

    out_channels: int
    num_kernels: int = 4
    groups: int = 1
    bias: bool = True
    routing: str = "sigmoid"
    reduction: int = 4
    temperature: float = 30.0
    dynamism: ClassVar[str] = "sample"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("num_kernels", self.num_kernels, minimum=1)
        check_int("groups", self.groups, minimum=1)
        check_divisible("channels", self.channels, "groups", self.groups)
        check_divisible("out_channels", self.out_channels, "groups", self.groups)
        check_choice("routing", self.routing, ROUTINGS)
        check_int("reduction", self.reduction, minimum=1)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={self.temperature!r}")

    @property
    def conv_groups(self) -> int:
        """``groups``, the channel groups of the equivalent ``nn.Conv2d``."""
        return self.groups

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Sliding):
            raise TypeError(f"MixtureKernel needs a Sliding neighbourhood, got {type(neighbourhood).__name__}")
        if self.bias and not isinstance(module, MixtureConv):
            raise TypeError("a MixtureKernel with bias=True needs a MixtureConv module, which adds the mixed bias")
        k, n = neighbourhood.kernel_size, self.num_kernels
        c = self.channels // self.groups
        module.weight = nn.Parameter(torch.empty(n, self.out_channels, c, k, k))
        for w in module.weight.data:  # every kernel starts as an nn.Conv2d would
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        module.bias = None
        if self.bias:
            bound = 1 / math.sqrt(c * k * k)
            module.bias = nn.Parameter(torch.empty(n, self.out_channels).uniform_(-bound, bound))
        if self.routing == "sigmoid":
            module.routing_fn = nn.Linear(self.channels, n)
        else:
            module.attention = MixtureAttention(
                self.channels, max(self.channels // self.reduction, 1), n, self.temperature
            )

    def attention(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Mixing coefficients from the globally pooled input, through the source's routing.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, n)``: ``sigmoid(routing_fn(GAP(x)))`` for ``"sigmoid"``, ``attention(GAP(x))`` for
                ``"softmax"``.
        """
        pooled = x.mean((2, 3))
        if self.routing == "sigmoid":
            return torch.sigmoid(module.routing_fn(pooled))
        return module.attention(pooled)

    def mix(self, module: nn.Module, attention: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels ``sum_e a_e W_e``, computed as one matrix product.

        Args:
            module: The owning aggregation (holds ``weight`` ``(n, O, C/groups, k, k)``).
            attention: Mixing coefficients, ``(B, n)``.

        Returns:
            ``(B, O, C/groups, k, k)``.
        """
        w = module.weight
        return torch.mm(attention, w.reshape(w.shape[0], -1)).view(attention.shape[0], *w.shape[1:])

    def conv_bias(self, module: nn.Module) -> None:
        """No bias for the paths: the mixed bias differs per sample, and
        [`MixtureConv`][unifiedops.mixture.MixtureConv] adds it after the aggregation.

        Args:
            module: The owning aggregation.

        Returns:
            ``None``.
        """
        # The mixed bias differs per sample; MixtureConv adds it after the aggregation.
        return None

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-sample mixed kernels; stores the coefficients ``(B, n)`` as ``module.mixture_attention``.

        Args:
            module: The owning aggregation.
            x: The input, ``(B, C, H, W)``.

        Returns:
            ``(B, O, C/groups, k, k)``.
        """
        a = self.attention(module, x)
        module.mixture_attention = a  # read by MixtureConv.forward for the mixed bias
        return self.mix(module, a)

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the per-sample mixed kernels.

        The kernels come from [`conv_weight`][unifiedops.mixture.MixtureKernel.conv_weight], which also
        stores the coefficients for the mixed bias.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``; the coefficients are computed from it.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, O, C/groups, 1, K)``, ``K = k*k``.
        """
        return padded.flatten(2), self.conv_weight(module, x).flatten(3).unsqueeze(3)


class MixtureConv(Aggregation):
    """Base of the whole-kernel mixture presets: the aggregation, then the per-sample mixed bias.

    ``mixture_attention`` holds the coefficients ``(B, n)`` of the last forward pass (detached).

    Args:
        source: A [`MixtureKernel`][unifiedops.mixture.MixtureKernel].
        kernel_size: Odd kernel size ``k``.
        stride: Stride.
        dilation: Dilation.
        path: Execution path (``"auto"`` is ``"batched_conv"``).
    """

    def __init__(self, source: MixtureKernel, kernel_size: int, stride: int, dilation: int, path: str) -> None:
        super().__init__(Sliding(kernel_size, dilation, stride=stride), source, path=path)
        self.mixture_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve each sample with its mixed kernel, then add its mixed bias ``sum_e a_e b_e``.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, O, Ho, Wo)``, ``Ho = ceil(H / stride)``, ``Wo = ceil(W / stride)``.
        """
        y = super().forward(x)
        attention = self.mixture_attention
        if self.bias is not None:
            y = y + torch.mm(attention, self.bias)[:, :, None, None]
        # Kept detached: a stored tensor with autograd history would hold the step's graph until the next
        # forward, and make copy.deepcopy of the module (an EMA copy, say) fail after a training step.
        self.mixture_attention = attention.detach()
        return y


class CondConv(MixtureConv):
    """CondConv: conditionally parameterised convolution (Yang, Bender, Le, Ngiam, "CondConv:
    Conditionally Parameterized Convolutions for Efficient Inference", NeurIPS 2019, arXiv:1904.04971).

    Axes: sparsity, sliding ``k x k``, dense channels (grouped); sharing, across positions;
    dynamism, per sample: ``W(x) = sum_e r_e(x) W_e`` over ``num_experts`` kernels (and biases), with
    routing ``r(x) = sigmoid(routing_fn(GAP(x)))``, ``routing_fn = Linear(C, num_experts)``.

    Parameters: ``weight`` ``(n, O, C/groups, k, k)``, ``bias`` ``(n, O)``, ``routing_fn``. timm's
    ``CondConv2d`` holds the same kernels as ``weight.flatten(1)`` (its routing lives in the block).
    Zero padding ``dilation * (k // 2)``.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd kernel size ``k``.
        num_experts: Kernels ``n`` (the paper uses 8 in EfficientNet).
        stride: Stride.
        dilation: Dilation.
        groups: Channel groups.
        bias: Whether each kernel has a bias.
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, H, W) -> (B, O, ceil(H / stride), ceil(W / stride))``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixture import CondConv
        >>> conv = CondConv(16, 32, 3, num_experts=8)
        >>> conv(torch.randn(2, 16, 14, 14)).shape
        torch.Size([2, 32, 14, 14])
        >>> sum(p.numel() for p in conv.parameters()) == 8 * (32 * 16 * 9 + 32) + (16 * 8 + 8)
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        num_experts: int = 8,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        path: str = "auto",
    ) -> None:
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_experts", num_experts, minimum=1)
        check_bool("bias", bias)
        source = MixtureKernel(in_channels, out_channels, num_experts, groups, bias, "sigmoid")
        super().__init__(source, kernel_size, stride, dilation, path)


class DYConv(MixtureConv):
    """Dynamic convolution (Chen, Dai, Liu, Chen, Yuan, Liu, "Dynamic Convolution: Attention over
    Convolution Kernels", CVPR 2020, arXiv:1912.03458).

    Axes: sparsity, sliding ``k x k``, dense channels (grouped); sharing, across positions;
    dynamism, per sample: ``W(x) = sum_e pi_e(x) W_e`` over ``num_kernels`` kernels (and biases),
    with the squeeze-and-excitation attention ``pi(x) = softmax(fc2(ReLU(fc1(GAP(x)))) / tau)``,
    ``fc1: C -> C / reduction``. The paper starts at ``tau = 30`` and anneals it linearly to 1 over
    the first 10 epochs ([`dyconv_schedule`][unifiedops.mixture.dyconv_schedule]); for inference use
    ``tau = 1``. No official code exists; the names ``attention.fc1``, ``attention.fc2``, ``weight``
    ``(n, O, C/groups, k, k)``, ``bias`` ``(n, O)`` and both FC biases are this library's choice.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd kernel size ``k``.
        num_kernels: Kernels ``n`` (the paper uses 4).
        stride: Stride.
        dilation: Dilation.
        groups: Channel groups.
        bias: Whether each kernel has a bias.
        reduction: Hidden width ``max(C // reduction, 1)`` of the attention (the paper: 4).
        temperature: Initial softmax temperature.
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, H, W) -> (B, O, ceil(H / stride), ceil(W / stride))``.

    Examples:
        >>> import torch
        >>> from unifiedops.mixture import DYConv
        >>> conv = DYConv(16, 32, 3)
        >>> conv(torch.randn(2, 16, 14, 14)).shape
        torch.Size([2, 32, 14, 14])
        >>> sum(p.numel() for p in conv.parameters()) == 4 * (32 * 16 * 9 + 32) + (16 * 4 + 4) + (4 * 4 + 4)
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        num_kernels: int = 4,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        reduction: int = 4,
        temperature: float = 30.0,
        *,
        path: str = "auto",
    ) -> None:
        check_int("in_channels", in_channels, minimum=1)
        check_bool("bias", bias)
        check_number("temperature", temperature, positive=True)
        source = MixtureKernel(
            in_channels, out_channels, num_kernels, groups, bias, "softmax", reduction, float(temperature)
        )
        super().__init__(source, kernel_size, stride, dilation, path)


def dyconv_schedule(
    iters_per_epoch: int, temp_epochs: float = 10, init: float = 30.0, end: float = 1.0
) -> TemperatureSchedule:
    """DY-Conv's temperature annealing: linear from ``init`` to ``end`` over ``temp_epochs`` epochs,
    then constant; ``step(model)`` sets it on every [`DYConv`][unifiedops.mixture.DYConv] attention.

    Args:
        iters_per_epoch: Iterations per epoch.
        temp_epochs: Epochs of the decay (paper: 10).
        init: Initial temperature (paper: 30).
        end: Final temperature (paper: 1).

    Returns:
        A [`TemperatureSchedule`][unifiedops.warehouse.TemperatureSchedule].

    Examples:
        >>> from unifiedops.mixture import dyconv_schedule
        >>> s = dyconv_schedule(iters_per_epoch=100)
        >>> s.value(0), s.value(500), s.value(1000)
        (30.0, 15.5, 1.0)
    """
    return TemperatureSchedule(iters_per_epoch, temp_epochs, init, end, kind=MixtureAttention)
