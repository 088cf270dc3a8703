"""BatchNorm synchronised across the processes of a distributed run, on CPU (gloo) too.

``torch.nn.SyncBatchNorm`` computes its batch statistics over every process, but only for tensors on
a GPU (CUDA, HPU, XPU or a PrivateUse1 device): in training inside a process group on CPU (the gloo
backend) its forward raises a ``ValueError``, and ``DistributedDataParallel`` refuses a CPU module that
contains one (torch 2.15). [`SyncBatchNorm`][zoo.blocks.sync_batchnorm.SyncBatchNorm] computes the same
statistics with two differentiable all-reduces on any device: the per-channel sums and the element count
give the global mean, the sums of centred squares the (biased) variance, so the forward and the backward
pass equal one ``nn.BatchNorm2d`` on the concatenation of all processes' batches.

[`convert_sync_batchnorm`][zoo.blocks.sync_batchnorm.convert_sync_batchnorm] replaces every BatchNorm of
a model, the zoo's channels-last one and timm's ``BatchNormAct2d`` included, which
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns into a plain channels-first ``SyncBatchNorm``
(dropping ``BatchNormAct2d``'s activation: the ReLU6 of the KernelWarehouse MobileNetV2s).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from zoo.blocks.layout import BatchNormChannelsLast

__all__ = ["SyncBatchNorm", "SyncBatchNormAct2d", "SyncBatchNormChannelsLast", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """``all_reduce`` (sum) whose backward all-reduces the gradient: every process's output is the sum,
    so the gradient of an input is the sum of every process's gradient of that output."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of all processes, on any device, CPU included.

    A drop-in for ``torch.nn.SyncBatchNorm`` (same arguments, parameters, buffers and state dict, so the
    state dict of ``nn.BatchNorm2d``) that also runs on CPU with the gloo backend, where torch's raises in
    training, and that ``DistributedDataParallel`` accepts on CPU (it refuses ``nn.SyncBatchNorm`` layers
    in a CPU module). Outside training, or outside a process group of more than one process, it is
    ``nn.BatchNorm2d`` (for any ``(B, C, ...)`` input). In training in a group, the statistics of channel
    ``c`` are those of all processes' inputs together (``N`` values):

    ``mean = all_reduce(sum x) / N``, ``var = all_reduce(sum (x - mean)^2) / N``, ``y = (x - mean) /
    sqrt(var + eps) * weight + bias``,

    with all-reduces whose backward all-reduces the gradient, so gradients flow into every process's input
    as for one BatchNorm over the whole batch. The running statistics are updated with the unbiased
    variance ``var * N / (N - 1)``, as ``nn.BatchNorm2d``'s. Statistics are accumulated in at least float32.
    Every process must run the forward and the backward pass of every such layer in the same order (as with
    torch's SyncBatchNorm). On GPUs torch's ``nn.SyncBatchNorm`` does the same with fused kernels and one
    all-gather, and is faster; this one uses two all-reduces of ``C + 1`` and ``C`` values per layer.

    Args:
        num_features: Channels ``C``.
        eps: Added to the variance.
        momentum: Factor of the running statistics' update; ``None`` for a cumulative average.
        affine: Learn ``weight`` and ``bias``.
        track_running_stats: Keep running statistics.
        process_group: The processes to synchronise over; ``None`` for all.
        device: Device of the parameters.
        dtype: Type of the parameters.
        bias: Learn ``bias`` (with ``affine``).

    Shape:
        ``(B, C, ...)`` -> same shape.
    """

    layout = "NCHW"  # channels on dim 1, for zoo blocks (see zoo.blocks.infer_layout)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects an input (B, C, ...) of at least 2 dimensions, got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise with the statistics of every process's batch (in training, in a process group).

        Args:
            input: ``(B, C, ...)``; ``B`` may differ between processes.

        Returns:
            The normalised input, ``(B, C, ...)``.

        Raises:
            ValueError: If the input has fewer than 2 dimensions, or, in training on CPU, all processes
                together hold only one value per channel.
        """
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        return self._synchronised(input, group)

    def _synchronised(self, input: torch.Tensor, group: Any) -> torch.Tensor:
        dtype = torch.promote_types(input.dtype, torch.float32)
        x = input.to(dtype)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # The local count rides with the sums; it has no gradient.
        count = x.new_full((1,), x.numel() // x.shape[1])
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = total[-1].detach()
        if x.device.type == "cpu" and n.item() <= 1:  # (elsewhere the check would cost a device sync)
            raise ValueError(
                f"SyncBatchNorm needs more than 1 value per channel in training, got {int(n.item())} over all "
                f"processes (input shape {tuple(input.shape)})"
            )
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims), group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.to(dtype).view(shape)
        if self.bias is not None:
            y = y + self.bias.to(dtype).view(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)


class SyncBatchNormChannelsLast(SyncBatchNorm):
    """[`SyncBatchNorm`][zoo.blocks.sync_batchnorm.SyncBatchNorm] on a channels-last map ``(B, H, W, C)``.

    What [`convert_sync_batchnorm`][zoo.blocks.sync_batchnorm.convert_sync_batchnorm] puts in place of a
    [`BatchNormChannelsLast`][zoo.blocks.BatchNormChannelsLast] (DWNet's norm before the MLP); same state
    dict.

    Args:
        num_features: Channels ``C``.
        eps: Added to the variance.
        momentum: Factor of the running statistics' update; ``None`` for a cumulative average.
        affine: Learn ``weight`` and ``bias``.
        track_running_stats: Keep running statistics.
        process_group: The processes to synchronise over; ``None`` for all.
        device: Device of the parameters.
        dtype: Type of the parameters.
        bias: Learn ``bias`` (with ``affine``).

    Shape:
        ``(B, H, W, C)`` -> same shape.
    """

    layout = "NHWC"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise each channel of a channels-last map with the statistics of every process.

        Args:
            input: A map ``(B, H, W, C)``.

        Returns:
            The normalised map ``(B, H, W, C)`` (a permuted view of a channels-first result).
        """
        return super().forward(input.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SyncBatchNormAct2d(SyncBatchNorm):
    """[`SyncBatchNorm`][zoo.blocks.sync_batchnorm.SyncBatchNorm] followed by a dropout and an activation,
    as timm's ``BatchNormAct2d``.

    What [`convert_sync_batchnorm`][zoo.blocks.sync_batchnorm.convert_sync_batchnorm] puts in place of a
    ``BatchNormAct2d`` (or timm's ``SyncBatchNormAct``), with the original's ``drop`` and ``act``; same
    state dict.

    Args:
        num_features: Channels ``C``.
        eps: Added to the variance.
        momentum: Factor of the running statistics' update; ``None`` for a cumulative average.
        affine: Learn ``weight`` and ``bias``.
        track_running_stats: Keep running statistics.
        process_group: The processes to synchronise over; ``None`` for all.
        device: Device of the parameters.
        dtype: Type of the parameters.
        bias: Learn ``bias`` (with ``affine``).
        act: The activation after the norm (``act``); ``None`` for none.
        drop: The dropout between the norm and the activation (``drop``); ``None`` for none.

    Shape:
        ``(B, C, H, W)`` -> same shape.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        act: nn.Module | None = None,
        drop: nn.Module | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, process_group, device, dtype, bias=bias
        )
        self.drop = nn.Identity() if drop is None else drop
        self.act = nn.Identity() if act is None else act

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise with the statistics of every process, then ``drop`` and ``act``.

        Args:
            input: ``(B, C, H, W)``.

        Returns:
            ``act(drop(norm(input)))``, ``(B, C, H, W)``.
        """
        return self.act(self.drop(super().forward(input)))


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNorm in ``module`` with a [`SyncBatchNorm`][zoo.blocks.sync_batchnorm.SyncBatchNorm].

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, for every ``_BatchNorm`` (``BatchNorm1d``,
    ``2d``, ``3d``, and ``SyncBatchNorm``), but [`BatchNormChannelsLast`][zoo.blocks.BatchNormChannelsLast]
    becomes [`SyncBatchNormChannelsLast`][zoo.blocks.sync_batchnorm.SyncBatchNormChannelsLast] and timm's
    ``BatchNormAct2d`` (and ``SyncBatchNormAct``) [`SyncBatchNormAct2d`][zoo.blocks.sync_batchnorm.SyncBatchNormAct2d]
    with the same activation. The new layers share the old ones' parameters and buffers (an optimizer
    built before keeps working) and training mode. Call it before wrapping the model in
    ``DistributedDataParallel``.

    Args:
        module: A model, or one BatchNorm layer.
        process_group: The processes to synchronise over; ``None`` for all.

    Returns:
        ``module`` with its BatchNorms replaced (a new module when ``module`` itself is a BatchNorm).

    Raises:
        TypeError: If ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    output = module
    if isinstance(module, _BatchNorm):
        if isinstance(module, BatchNormChannelsLast | SyncBatchNormChannelsLast):
            cls: type[SyncBatchNorm] = SyncBatchNormChannelsLast
        elif isinstance(module, BatchNormAct2d | SyncBatchNormAct | SyncBatchNormAct2d):
            cls = SyncBatchNormAct2d
        else:
            cls = SyncBatchNorm
        extra = {"act": module.act, "drop": module.drop} if cls is SyncBatchNormAct2d and hasattr(module, "act") else {}
        output = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            bias=module.bias is not None,
            **extra,
        )
        if module.affine:
            output.weight = module.weight
            output.bias = module.bias
        output.running_mean = module.running_mean
        output.running_var = module.running_var
        output.num_batches_tracked = module.num_batches_tracked
        output.training = module.training
        if hasattr(module, "qconfig"):
            output.qconfig = module.qconfig
    for name, child in module.named_children():
        output.add_module(name, convert_sync_batchnorm(child, process_group))
    return output
