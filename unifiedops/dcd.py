"""DCD: dynamic convolution decomposition (Li et al., "Revisiting Dynamic Convolution via Matrix
Decomposition", ICLR 2021, arXiv:2103.08756).

A DCD layer's per-sample kernel is a static kernel rescaled per output channel plus a low-rank
dynamic part in a latent space of ``L << C`` channels:

    ``W(x) = Λ(x) W0 + P Φ(x) Qᵀ``,

``Λ(x)`` a diagonal ``(O, O)`` (channel-wise attention), ``Q`` ``(C, L)`` and ``P`` ``(O, L)`` static,
``Φ(x)`` a full ``(L, L)`` matrix per sample. Both dynamic factors come from one small context
network on the pooled input. As in the official code, ``Q`` and ``P`` act on the centre tap of a
``k x k`` kernel only (they are ``1 x 1`` convolutions, ``Q`` carrying the stride), and two
BatchNorms sit in the latent space:

    ``y = Λ(x) ⊙ conv_W0(x) + P (BN2(Φ(x) z) + z)``,  ``z = BN1(Q x)``.

That is the **feature-space** form, the ``decomposed`` path: one static convolution for the whole
batch and ``1 x 1`` convolutions of width ``L``. Writing each BatchNorm as its affine map
``a ⊙ u + b`` (running statistics in evaluation; in training, the batch's statistics of ``Q x`` and
``Φ(x) z``, which the layer therefore still computes) gives the **kernel-space** form, one kernel and
one bias per sample,

    ``W_b = Λ_b W0 + centre(P (diag(a2) Φ_b + I) diag(a1) Q)``,
    ``bias_b = P (a2 ⊙ (Φ_b b1) + b2 + b1)``,

which runs on the ``batched_conv`` and ``reference`` paths that CondConv, DY-Conv, ODConv and
KernelWarehouse share. The tests prove the two forms equal, in evaluation and in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unifiedops._checks import check_bool, check_int
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Layout, Neighbourhood, Point, Sliding
from unifiedops.weights import DecomposedKernelSource, SampleKernels

__all__ = [
    "DCDConv2d",
    "DCDKernel",
    "DCDLinear",
    "ScaledHardSigmoid",
    "SqueezeGate",
    "convert_official_dycls",
    "dcd_dims",
    "dcd_mobilenetv2_dims",
    "switch_off_low_rank_",
]


def _hard_sigmoid2(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 3.0


class ScaledHardSigmoid(nn.Module):
    """DCD's gate ``relu6(x + 3) / 3``, a hard sigmoid with range ``[0, 2]`` (twice torch's
    ``Hardsigmoid``), so a channel can be amplified as well as damped.

    Shape:
        ``(B, ...) -> (B, ...)``: any shape, unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gate.

        Args:
            x: Any tensor.

        Returns:
            ``relu6(x + 3) / 3``, same shape.
        """
        return _hard_sigmoid2(x)


class SqueezeGate(nn.Module):
    """The context network's self-gating step: ``h ⊙ gate(fc(h))`` with ``fc`` a bias-free square
    ``Linear`` and the [`ScaledHardSigmoid`][unifiedops.dcd.ScaledHardSigmoid] gate (the official
    ``SEModule_small``; parameter ``fc.0.weight``).

    Args:
        channels: Width of ``h``.

    Shape:
        ``(B, S) -> (B, S)`` with ``S = channels``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False), ScaledHardSigmoid())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Gate ``h`` by itself.

        Args:
            h: ``(B, channels)``.

        Returns:
            ``(B, channels)``.
        """
        return h * self.fc(h)


def dcd_dims(in_channels: int, pool: int = 1) -> tuple[int, int]:
    """The official latent size and context width of a DCD layer in a ResNet.

    The context network reads the input pooled to ``pool x pool``, ``D = C * pool²`` values; the
    latent size is ``L = int(sqrt(D))`` and the context width ``max(D, L²) // 16``, at least 4. With
    ``pool = 1`` these are the bottleneck block's layers (``L = int(sqrt(C))``); with ``pool = 2`` the
    basic block's (``L = int(sqrt(4C))``).

    Args:
        in_channels: Input channels ``C``.
        pool: Side of the pooled context.

    Returns:
        ``(latent, squeeze)``.

    Examples:
        >>> from unifiedops.dcd import dcd_dims
        >>> dcd_dims(256), dcd_dims(64, pool=2)
        ((16, 16), (16, 16))
    """
    check_int("in_channels", in_channels, minimum=1)
    check_int("pool", pool, minimum=1)
    d = in_channels * pool * pool
    latent = math.isqrt(d)
    return latent, max(max(d, latent * latent) // 16, 4)


def dcd_mobilenetv2_dims(in_channels: int, out_channels: int, fc_squeeze: int = 8) -> tuple[int, int, int]:
    """The official latent size, context width and context pooling of a DCD point-wise layer in
    MobileNetV2.

    A widening layer (``C < O``) pools its context to ``2 x 2`` and starts from reduction 8, a narrowing
    one pools to ``1 x 1`` and starts from 2; ``L = min(D, O) // reduction`` (``D = C * pool²``), with the
    reduction doubled until ``L² <= 2D``, and ``L >= 4``. The context width is ``max(D, L²) // fc_squeeze``,
    at least 4.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        fc_squeeze: Divisor of the context width (the published model: 16).

    Returns:
        ``(latent, squeeze, pool)``.

    Examples:
        >>> from unifiedops.dcd import dcd_mobilenetv2_dims
        >>> dcd_mobilenetv2_dims(24, 144, fc_squeeze=16)
        (12, 9, 2)
    """
    check_int("in_channels", in_channels, minimum=1)
    check_int("out_channels", out_channels, minimum=1)
    check_int("fc_squeeze", fc_squeeze, minimum=1)
    pool, reduction = (2, 8) if in_channels < out_channels else (1, 2)
    d = in_channels * pool * pool
    latent = min(d // reduction, out_channels // reduction)
    while latent * latent > 2 * d:
        reduction *= 2
        latent = min(d // reduction, out_channels // reduction)
    latent = max(latent, 4)
    return latent, max(max(d, latent * latent) // fc_squeeze, 4), pool


@dataclass(frozen=True)
class _Affine:
    scale: torch.Tensor
    shift: torch.Tensor


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, features: torch.Tensor | None) -> _Affine:
    """The affine map ``scale ⊙ u + shift`` a BatchNorm applies to ``features`` ``(B, L, ...)``.

    Uses (and, in training, updates) exactly the statistics ``bn(features)`` would, so the kernel-space
    form trains like the feature-space one. ``features`` may be ``None`` when running statistics are
    used.
    """
    batch_stats = bn.training or bn.running_mean is None
    if batch_stats:
        dims = [0, *range(2, features.dim())]
        n = features.numel() // features.shape[1]
        if n <= 1:
            raise ValueError(
                f"DCD's latent BatchNorm needs more than one value per channel in training, got features of "
                f"shape {tuple(features.shape)}; use batches of at least two samples (or eval mode)"
            )
        var, mean = torch.var_mean(features, dim=dims, correction=0)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_((var * n / (n - 1)).to(bn.running_var.dtype), factor)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return _Affine(scale, shift)


@dataclass(frozen=True)
class DCDKernel(DecomposedKernelSource):
    """Per-sample kernels ``Λ(x) W0 + P Φ(x) Qᵀ`` (dynamic convolution decomposition).

    Registers, under the official names: ``conv`` (the static ``nn.Conv2d`` holding ``W0`` and, for
    the classifier form, its bias), ``q`` (``1 x 1``, ``C -> L``, carrying the stride), ``p`` (``1 x 1``,
    ``L -> O``), ``bn1`` (``BatchNorm2d(L)``) and ``bn2`` (``BatchNorm1d(L)``), and the context network
    ``avg_pool`` (to ``pool x pool``), ``fc`` (``Linear(C * pool², squeeze)`` then a
    [`SqueezeGate`][unifiedops.dcd.SqueezeGate]), ``fc_phi`` (``squeeze -> L²``) and ``fc_scale``
    (``squeeze -> O``, through [`ScaledHardSigmoid`][unifiedops.dcd.ScaledHardSigmoid]).

    Initialisation: ``conv`` and ``q`` as the official code (Kaiming normal, ``fan_out``), the context's
    ``Linear`` layers PyTorch's default, and ``p`` zero, so a fresh layer is its static convolution
    scaled by ``Λ(x)``: the low-rank term is quadratic in the input, and with the official
    initialisation (``p`` Kaiming normal too) an untrained network overflows to NaN in eval mode.

    Args:
        channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        latent: Latent size ``L``.
        squeeze: Width of the context network.
        pool: Side of the pooled context.
        bias: Give the static convolution a bias (scaled by ``Λ(x)`` like ``W0``, as in the official
            dynamic classifier).
    """

    out_channels: int
    latent: int
    squeeze: int
    pool: int = 1
    bias: bool = False
    dynamism: ClassVar[str] = "sample"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("latent", self.latent, minimum=1)
        check_int("squeeze", self.squeeze, minimum=1)
        check_int("pool", self.pool, minimum=1)
        check_bool("bias", self.bias)

    @property
    def conv_groups(self) -> int:
        """1: DCD's kernels are dense."""
        return 1

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if isinstance(neighbourhood, Point):
            k, dilation, stride = 1, 1, 1
        elif isinstance(neighbourhood, Sliding) and neighbourhood.border == "zeros":
            k, dilation, stride = neighbourhood.kernel_size, neighbourhood.dilation, neighbourhood.stride
        else:
            raise TypeError(
                "DCDKernel needs a Point or a Sliding neighbourhood with zero padding (its 1x1 factors act on "
                f"the centre tap), got {neighbourhood!r}"
            )
        c, o, latent = self.channels, self.out_channels, self.latent
        module.conv = nn.Conv2d(c, o, k, stride, dilation * (k // 2), dilation, bias=self.bias)
        module.q = nn.Conv2d(c, latent, 1, stride, bias=False)
        module.p = nn.Conv2d(latent, o, 1, bias=False)
        module.bn1 = nn.BatchNorm2d(latent)
        module.bn2 = nn.BatchNorm1d(latent)
        module.avg_pool = nn.AdaptiveAvgPool2d(self.pool)
        module.fc = nn.Sequential(nn.Linear(c * self.pool**2, self.squeeze, bias=False), SqueezeGate(self.squeeze))
        module.fc_phi = nn.Linear(self.squeeze, latent * latent, bias=False)
        module.fc_scale = nn.Linear(self.squeeze, o, bias=False)
        for conv in (module.conv, module.q, module.p):  # the official initialisation of every conv
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        # P Φ(x) z is quadratic in the input. With the official initialisation and the initial
        # running statistics, an untrained DCD ResNet-18 squares its activations block by block in
        # eval mode and overflows to NaN by layer2 (the official model too). P = 0 at the start
        # switches the low-rank branch off until training has moved it (and the statistics).
        switch_off_low_rank_(module)

    def context(self, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dynamic factors of a batch.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``(phi, scale)``: ``Φ(x)`` ``(B, L, L)`` and the diagonal of ``Λ(x)``, ``(B, O)``, in ``[0, 2]``.
        """
        h = module.fc(module.avg_pool(x).flatten(1))
        phi = module.fc_phi(h).view(-1, self.latent, self.latent)
        return phi, _hard_sigmoid2(module.fc_scale(h))

    def feature_space(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``Λ(x) ⊙ conv_W0(x) + P (BN2(Φ(x) z) + z)`` with ``z = BN1(Q x)`` (the official computation).

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``(B, O, Ho, Wo)``.
        """
        phi, scale = self.context(module, x)
        static = module.conv(x) * scale[:, :, None, None]
        z = module.bn1(module.q(x))
        latent = z.flatten(2)
        latent = module.bn2(torch.bmm(phi, latent)) + latent
        return module.p(latent.view_as(z)) + static

    def sample_kernels(self, module: nn.Module, x: torch.Tensor) -> SampleKernels:
        """The per-sample kernels and biases of the kernel-space form.

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``SampleKernels(weight, bias)``: ``(B, O, C, k, k)`` and ``(B, O)``.
        """
        phi, scale = self.context(module, x)
        if module.bn1.training or module.bn2.training:
            # Batch statistics: the latent features are needed for them (and for the running
            # statistics), though not for the output.
            z = module.q(x)
            bn1 = _bn_affine(module.bn1, z)
            z = (z * bn1.scale[:, None, None] + bn1.shift[:, None, None]).flatten(2)
            bn2 = _bn_affine(module.bn2, torch.bmm(phi, z))
        else:
            bn1, bn2 = _bn_affine(module.bn1, None), _bn_affine(module.bn2, None)
        q = module.q.weight.flatten(1) * bn1.scale[:, None]  # diag(a1) Q, (L, C)
        p = module.p.weight.flatten(1)  # (O, L)
        low_rank = p @ (torch.matmul(phi * bn2.scale[:, None], q) + q)  # (B, O, C)
        kernels = module.conv.weight * scale[:, :, None, None, None]
        k = kernels.shape[-1]
        centre = F.pad(low_rank[..., None, None], (k // 2, k // 2, k // 2, k // 2))
        # (B, L, L) @ (L, 1) rather than a matrix-vector product, which torch's FLOP counter does not see
        latent_bias = bn2.scale * (phi @ bn1.shift[:, None]).squeeze(-1) + bn2.shift + bn1.shift  # (B, L)
        bias = latent_bias @ p.T
        if module.conv.bias is not None:
            bias = bias + scale * module.conv.bias
        return SampleKernels(kernels + centre, bias)

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-sample kernels of the kernel-space form (their biases: ``sample_kernels``).

        Args:
            module: The owning aggregation.
            x: The input ``(B, C, H, W)``.

        Returns:
            ``(B, O, C, k, k)``.
        """
        return self.sample_kernels(module, x).weight

    def conv_bias(self, module: nn.Module) -> None:
        """No input-independent bias: DCD's bias is per sample (``sample_kernels``).

        Args:
            module: The owning aggregation.

        Returns:
            ``None``.
        """
        return None

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The padded input, the per-sample kernels and biases, for the literal sum.

        Args:
            module: The owning aggregation.
            x: Input ``(B, C, H, W)``.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights, bias)``: ``(B, C, Hp*Wp)``, ``(B, O, C, 1, K)`` and ``(B, O)``.
        """
        weight, bias, *_ = self.sample_kernels(module, x)
        return padded.flatten(2), weight.flatten(3).unsqueeze(3), bias


class DCDConv2d(Aggregation):
    """Dynamic convolution decomposition (Li et al., ICLR 2021, arXiv:2103.08756).

    Axes: sparsity, sliding ``k x k``, dense channels; sharing, across positions; dynamism, per
    sample: ``W(x) = Λ(x) W0 + P Φ(x) Qᵀ`` ([`DCDKernel`][unifiedops.dcd.DCDKernel]), the dynamic
    factors from the pooled input.

    Paths: ``"decomposed"`` (the default: the official feature-space computation), ``"batched_conv"``
    and ``"reference"`` (the kernel-space form; equal outputs, gradients and running statistics).

    Parameters: ``conv.weight`` ``(O, C, k, k)``, ``q.weight`` ``(L, C, 1, 1)``, ``p.weight``
    ``(O, L, 1, 1)``, ``bn1.*``, ``bn2.*``, ``fc.0.weight`` ``(squeeze, C * pool²)``,
    ``fc.1.fc.0.weight`` ``(squeeze, squeeze)``, ``fc_phi.weight`` ``(L², squeeze)``,
    ``fc_scale.weight`` ``(O, squeeze)``: the official ``conv_dy`` names, whose state dicts load directly.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Odd kernel size ``k`` of the static part.
        stride: Stride.
        dilation: Dilation of the static part.
        pool: Side of the pooled context (official: 1 in bottleneck blocks, 2 in basic blocks).
        latent: Latent size ``L``; by default the official rule
            ([`dcd_dims`][unifiedops.dcd.dcd_dims]).
        squeeze: Context width; by default the official rule.
        bias: Give the static convolution a bias.
        path: Execution path (``"auto"`` is ``"decomposed"``).

    Shape:
        ``(B, C, H, W) -> (B, O, ceil(H / stride), ceil(W / stride))``.

    Examples:
        >>> import torch
        >>> from unifiedops.dcd import DCDConv2d
        >>> conv = DCDConv2d(64, 64, 3)
        >>> conv.path, conv(torch.randn(2, 64, 14, 14)).shape
        ('decomposed', torch.Size([2, 64, 14, 14]))
        >>> latent, squeeze = 8, 4  # int(sqrt(64)), max(64 // 16, 4)
        >>> static = 64 * 64 * 9
        >>> factors = latent * 64 + 64 * latent + 4 * latent  # q, p, two BatchNorms' weight and bias
        >>> context = 64 * squeeze + squeeze**2 + squeeze * latent**2 + squeeze * 64
        >>> sum(p.numel() for p in conv.parameters()) == static + factors + context
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        pool: int = 1,
        latent: int | None = None,
        squeeze: int | None = None,
        bias: bool = False,
        path: str = "auto",
    ) -> None:
        default_latent, default_squeeze = dcd_dims(in_channels, pool)
        source = DCDKernel(
            in_channels,
            out_channels,
            default_latent if latent is None else latent,
            default_squeeze if squeeze is None else squeeze,
            pool,
            bias,
        )
        super().__init__(Sliding(kernel_size, dilation, stride=stride), source, path=path)


class DCDLinear(Aggregation):
    """DCD's dynamic classifier (the official ``DYCls``): a ``Linear`` whose weight is
    ``Λ(x) W0 + P Φ(x) Qᵀ``, the [`DCDKernel`][unifiedops.dcd.DCDKernel] of a ``1 x 1`` layer applied to
    the ``(B, C, 1, 1)`` view of its input.

    ``y = Λ(x) ⊙ (W0 x + b0) + P (BN2(Φ(x) z) + z)``, ``z = BN1(Q x)``, with the context from ``x``
    itself. The official ``cls``, ``cls_q`` and ``cls_p`` are ``conv``, ``q`` and ``p`` here (``1 x 1``
    convolutions, so their weights carry two trailing unit dimensions); the zoo's checkpoint converters
    rename and reshape them.

    Args:
        in_features: Input features ``C``.
        out_features: Classes ``O``.
        latent: Latent size ``L`` (official: 32).
        squeeze: Context width (official: 32).
        path: Execution path (``"auto"`` is ``"decomposed"``).

    Shape:
        ``(B, C) -> (B, O)``.

    Examples:
        >>> import torch
        >>> from unifiedops.dcd import DCDLinear
        >>> DCDLinear(1280, 1000)(torch.randn(2, 1280)).shape
        torch.Size([2, 1000])
    """

    def __init__(
        self, in_features: int, out_features: int, latent: int = 32, squeeze: int = 32, *, path: str = "auto"
    ) -> None:
        check_int("in_features", in_features, minimum=1)
        check_int("out_features", out_features, minimum=1)
        source = DCDKernel(in_features, out_features, latent, squeeze, bias=True)
        super().__init__(Point(), source, path=path)

    @property
    def in_features(self) -> int:
        """Input features ``C``, as ``nn.Linear`` names them."""
        return self.source.channels

    @property
    def out_features(self) -> int:
        """Output features (classes) ``O``, as ``nn.Linear`` names them."""
        return self.source.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify.

        Args:
            x: Pooled features ``(B, C)``.

        Returns:
            Logits ``(B, O)``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (B, C), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"x has {x.shape[1]} features but the layer was built for in_features={self.in_features} (B, C)"
            )
        return super().forward(x[:, :, None, None]).flatten(1)


_DYCLS_NAMES = {"cls": "conv", "cls_q": "q", "cls_p": "p"}


def convert_official_dycls(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename the official ``DYCls`` entries under ``prefix`` to [`DCDLinear`][unifiedops.dcd.DCDLinear]'s.

    ``cls``, ``cls_q`` and ``cls_p`` become ``conv``, ``q`` and ``p``, their ``(out, in)`` weights
    ``(out, in, 1, 1)``; every other entry is passed through unchanged.

    Args:
        state_dict: A state dict holding an official ``DYCls`` under ``prefix``.
        prefix: Where the classifier sits, e.g. ``"fc."`` (with the trailing dot).

    Returns:
        The converted state dict.

    Examples:
        >>> import torch
        >>> official = {"fc.cls.weight": torch.zeros(10, 64), "fc.cls.bias": torch.zeros(10)}
        >>> {k: tuple(v.shape) for k, v in convert_official_dycls(official, "fc.").items()}
        {'fc.conv.weight': (10, 64, 1, 1), 'fc.conv.bias': (10,)}
    """
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.removeprefix(prefix).partition(".")
        if key.startswith(prefix) and head in _DYCLS_NAMES:
            key = f"{prefix}{_DYCLS_NAMES[head]}.{rest}"
            if rest == "weight":
                value = value[:, :, None, None]
        out[key] = value
    return out


@torch.no_grad()
def switch_off_low_rank_(model: nn.Module) -> nn.Module:
    """Zero ``P`` of every DCD layer in ``model``, so each starts as its static convolution scaled by
    ``Λ(x)`` (the layers' own initialisation; a network whose initialisation loop re-initialises every
    ``nn.Conv2d`` calls this afterwards).

    Args:
        model: Any module.

    Returns:
        ``model``, changed in place.
    """
    for module in model.modules():
        if isinstance(module, Aggregation) and isinstance(module.source, DCDKernel):
            module.p.weight.zero_()
    return model
