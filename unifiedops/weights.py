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

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from unifiedops._checks import check_divisible, check_int
from unifiedops.neighbourhoods import Layout, Neighbourhood

__all__ = ["PositionKernel", "QKAttention", "SampleKernel", "StaticKernel", "WeightSource"]


@dataclass(frozen=True)
class WeightSource:
    """Base class of the weight sources.

    Args:
        channels: Number of channels ``C`` the aggregation reads and writes.
    """

    channels: int

    def __post_init__(self) -> None:
        check_int("channels", self.channels, minimum=1)

    @property
    def weight_groups(self) -> int:
        """Number of weight groups ``G``; ``C // G`` consecutive channels share a weight."""
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
        """Values and weights of the literal formula.

        Args:
            module: The owning aggregation.
            x: Input, ``(B, C, H, W)``.
            padded: Input padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: the features aggregated, ``(B, C, Hp*Wp)``, and the weights,
                ``(Bw, G, Pw, K)``.
        """
        raise NotImplementedError

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """What follows the sum (bias, output projection).

        Args:
            module: The owning aggregation.
            y: Aggregated features, ``(B, C, H, W)``.

        Returns:
            The module output, ``(B, C, H, W)``.
        """
        return y


def _kernel_slots(source: str, neighbourhood: Neighbourhood) -> int:
    if neighbourhood.slots is None:
        raise ValueError(
            f"{source} needs a neighbourhood of fixed size (Sliding, Window or Point); "
            f"got {type(neighbourhood).__name__}, whose size depends on the input"
        )
    return neighbourhood.slots


def _check_groups(channels: int, groups: int | None) -> int:
    groups = channels if groups is None else check_int("groups", groups, minimum=1)
    check_divisible("channels", channels, "groups", groups)
    return groups


@dataclass(frozen=True)
class StaticKernel(WeightSource):
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
        """The kernel, ``(1, G, 1, K)``."""
        return module.weight.reshape(1, self.weight_groups, 1, -1)

    def reference(self, module, x, padded, lay):
        return padded.flatten(2), self.kernel(module)

    def finish(self, module, y):
        return y if module.bias is None else y + module.bias.view(1, -1, 1, 1)


@dataclass(frozen=True)
class SampleKernel(WeightSource):
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

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_groups(self.channels, self.groups)
        check_int("reduction", self.reduction, minimum=1)
        check_divisible("channels", self.channels, "reduction", self.reduction)

    @functools.cached_property
    def weight_groups(self) -> int:
        return _check_groups(self.channels, self.groups)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("SampleKernel", neighbourhood)
        hidden = self.channels // self.reduction
        module.conv1 = nn.Conv2d(self.channels, hidden, 1, bias=False)
        module.bn = nn.BatchNorm2d(hidden)
        module.conv2 = nn.Conv2d(hidden, self.weight_groups * k * k, 1)
        module.bias = nn.Parameter(torch.zeros(self.channels)) if self.bias else None

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels, ``(B, G, 1, K)``, from the input ``(B, C, H, W)``."""
        # The 1x1 convs act on a 1x1 map: as matrix products they skip conv2d's setup, which
        # matters because conv2 is a large matrix (C/r x G*k*k) read for a handful of rows.
        hidden = F.linear(x.mean((2, 3)), module.conv1.weight.flatten(1))
        hidden = F.relu(module.bn(hidden[:, :, None, None]).flatten(1))
        w = F.linear(hidden, module.conv2.weight.flatten(1), module.conv2.bias)
        return w.reshape(x.shape[0], self.weight_groups, 1, -1)

    def reference(self, module, x, padded, lay):
        return padded.flatten(2), self.kernel(module, x)

    def finish(self, module, y):
        return y if module.bias is None else y + module.bias.view(1, -1, 1, 1)


@dataclass(frozen=True)
class PositionKernel(WeightSource):
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

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_groups(self.channels, self.groups)
        check_int("reduction", self.reduction, minimum=1)
        check_divisible("channels", self.channels, "reduction", self.reduction)

    @functools.cached_property
    def weight_groups(self) -> int:
        return _check_groups(self.channels, self.groups)

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        k = _kernel_slots("PositionKernel", neighbourhood)
        hidden = self.channels // self.reduction
        module.conv1 = nn.Sequential(nn.Conv2d(self.channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU())
        module.conv2 = nn.Sequential(nn.Conv2d(hidden, k * k * self.weight_groups, 1))

    def kernel(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per-position kernels, ``(B, G, K, H, W)``, from the input ``(B, C, H, W)``."""
        b, _, h, w = x.shape
        return module.conv2(module.conv1(x)).reshape(b, self.weight_groups, -1, h, w)

    def reference(self, module, x, padded, lay):
        return padded.flatten(2), self.kernel(module, x).flatten(3).transpose(2, 3)


@dataclass(frozen=True)
class QKAttention(WeightSource):
    """Per-position weights from scaled query-key dot products, softmax-normalised over the
    neighbourhood, with an optional relative-position bias (local, window and global attention).

    Registers ``qkv`` (``Linear(C, 3C)``), ``proj`` (``Linear(C, C)``) and, with
    ``rel_pos_bias``, ``relative_position_bias_table`` of ``(2E-1)^2 x heads`` entries, where ``E``
    is the window (or kernel) size: the names and layout of timm's Swin ``WindowAttention``.
    The aggregated features are the values ``v``; ``proj`` follows the sum.

    Args:
        channels: Number of channels ``C``.
        heads: Number of heads ``G``; ``C // heads`` channels share each weight.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        rel_pos_bias: Whether to add a learned relative-position bias to the logits.
        scale: Logit scale; default ``(C // heads) ** -0.5``.
    """

    heads: int = 1
    qkv_bias: bool = True
    rel_pos_bias: bool = False
    scale: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("heads", self.heads, minimum=1)
        check_divisible("channels", self.channels, "num_heads", self.heads)

    @property
    def weight_groups(self) -> int:
        return self.heads

    @property
    def head_dim(self) -> int:
        """Channels per head."""
        return self.channels // self.heads

    @property
    def logit_scale(self) -> float:
        """The factor applied to ``q . k``."""
        return self.head_dim**-0.5 if self.scale is None else self.scale

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        c = self.channels
        module.qkv = nn.Linear(c, 3 * c, bias=self.qkv_bias)
        if self.rel_pos_bias:
            extent = neighbourhood.slots
            if extent is None:
                raise ValueError("rel_pos_bias needs a neighbourhood of fixed size (Sliding or Window), got Global")
            module.relative_position_bias_table = nn.Parameter(torch.empty((2 * extent - 1) ** 2, self.heads))
            trunc_normal_(module.relative_position_bias_table, std=0.02)
        module.proj = nn.Linear(c, c)

    def project(self, module: nn.Module, x_nhwc: torch.Tensor) -> torch.Tensor:
        """``q, k, v`` stacked, ``(3, B, ..., heads, head_dim)``, from channels-last input."""
        qkv = F.linear(x_nhwc, module.qkv.weight, module.qkv.bias)
        qkv = qkv.unflatten(-1, (3, self.heads, self.head_dim))
        return qkv.movedim(-3, 0)

    def bias(self, module: nn.Module, rel_index: torch.Tensor) -> torch.Tensor | None:
        """Relative-position bias gathered at ``rel_index`` ``(..., Q, K)``, as ``(..., heads, Q, K)``."""
        if not self.rel_pos_bias:
            return None
        return module.relative_position_bias_table[rel_index].movedim(-1, -3)

    def reference(self, module, x, padded, lay):
        b = x.shape[0]
        q, k, v = self.project(module, padded.permute(0, 2, 3, 1).flatten(1, 2))  # (B, Np, G, D)
        q = q[:, lay.centre]  # (B, P, G, D)
        k = k[:, lay.index]  # (B, P, K, G, D)
        logits = torch.einsum("bpgd,bpkgd->bgpk", q, k) * self.logit_scale
        bias = self.bias(module, lay.rel_index)
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(~lay.valid, float("-inf"))
        values = v.flatten(2).transpose(1, 2)  # (B, C, Np)
        return values, logits.softmax(-1).reshape(b, self.heads, *lay.index.shape)

    def finish(self, module, y):
        return F.linear(y.permute(0, 2, 3, 1), module.proj.weight, module.proj.bias).permute(0, 3, 1, 2)
