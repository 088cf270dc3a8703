"""The one training recipe every mixer of a shoot-out gets: optimizer, schedule, loss, temperatures, precision."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from unifiedops._checks import check_bool, check_int, check_number
from unifiedops.mixture import MixtureAttention, dyconv_schedule
from unifiedops.odconv import OmniAttention, odconv_schedule
from unifiedops.warehouse import TemperatureSchedule, WarehouseAttention

__all__ = ["TEMPERATURE_SCHEDULES", "Recipe", "amp_dtype", "autocast", "temperature_schedules"]


@dataclass(frozen=True)
class Recipe:
    """The training recipe, identical for every (mixer, seed) run.

    AdamW with timm's weight-decay groups (no decay on biases, norms and ``no_weight_decay()`` names), a
    cosine schedule with linear warm-up stepped per iteration, and label smoothing.

    Args:
        epochs: Training epochs.
        batch_size: Global batch size (split evenly over the processes under ``torchrun``).
        lr: Peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: Epochs of linear warm-up from ``warmup_lr``.
        warmup_lr: Learning rate at the first step.
        min_lr: Learning rate at the end of the cosine.
        label_smoothing: Label smoothing of the cross-entropy.
        drop_path_rate: Stochastic depth of the backbone.
        temperature_fraction: Share of the training over which each temperature schedule of
            [`TEMPERATURE_SCHEDULES`][zoo.shootout.TEMPERATURE_SCHEDULES] decays; the official recipes decay
            over 20 of 100 epochs (KernelWarehouse) and 10 of 100 (ODConv, DY-Conv), so the default keeps each
            one's share when given ``None``.
        amp: Mixed precision: ``None`` uses it where the device supports it (CUDA: bfloat16 if supported, else
            float16 with loss scaling), ``False`` never, ``True`` always (bfloat16 on the CPU).
        eval_batch_size: Batch size of the evaluation and the throughput measurement.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.0
    temperature_fraction: float | None = None
    amp: bool | None = None
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        for name in ("lr", "weight_decay", "warmup_lr", "min_lr", "label_smoothing", "drop_path_rate"):
            check_number(name, getattr(self, name), minimum=0)
        if not self.label_smoothing < 1 or not self.drop_path_rate < 1:
            raise ValueError("label_smoothing and drop_path_rate must be below 1")
        if self.temperature_fraction is not None:
            check_number("temperature_fraction", self.temperature_fraction, minimum=0, maximum=1)
        if self.amp is not None:
            check_bool("amp", self.amp)

    @classmethod
    def quick(cls) -> Recipe:
        """The ``--quick`` recipe: few epochs, sized so that a digits shoot-out fits in minutes on a CPU.

        Returns:
            The recipe.
        """
        return cls(epochs=6, warmup_epochs=1)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain dict (``Recipe(**d)`` rebuilds it).

        Returns:
            One entry per field.
        """
        return dataclasses.asdict(self)

    def optimizer_and_scheduler(self, model: nn.Module, iters_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
        """timm's AdamW and cosine scheduler (warm-up included), stepped per iteration.

        Args:
            model: The model to optimise.
            iters_per_epoch: Optimizer steps per epoch.

        Returns:
            ``(optimizer, scheduler)``; call ``scheduler.step_update(num_updates=step)`` after each step.
        """
        optimizer = create_optimizer_v2(model, opt="adamw", lr=self.lr, weight_decay=self.weight_decay)
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched="cosine",
            num_epochs=self.epochs,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            cooldown_epochs=0,
            step_on_epochs=False,
            updates_per_epoch=iters_per_epoch,
        )
        return optimizer, scheduler

    def criterion(self) -> nn.Module:
        """The training loss: cross-entropy with label smoothing.

        Returns:
            timm's ``LabelSmoothingCrossEntropy``.
        """
        return LabelSmoothingCrossEntropy(self.label_smoothing)


ScheduleFactory = Callable[[int, float], TemperatureSchedule]

TEMPERATURE_SCHEDULES: dict[str, tuple[type[nn.Module], ScheduleFactory, float]] = {
    "kernelwarehouse": (WarehouseAttention, lambda iters, epochs: TemperatureSchedule(iters, epochs), 0.2),
    "odconv": (OmniAttention, odconv_schedule, 0.1),
    "dyconv": (MixtureAttention, dyconv_schedule, 0.1),
}
"""Attentions whose temperature the training loop anneals: ``name -> (attention class, factory(iters_per_epoch,
temp_epochs), official share of the training)``. Every schedule whose attention occurs in the model is stepped
once per iteration."""


def temperature_schedules(model: nn.Module, recipe: Recipe, iters_per_epoch: int) -> list[TemperatureSchedule]:
    """The temperature schedules of the attentions in ``model``, scaled to the recipe's length.

    Args:
        model: The model.
        recipe: The recipe (its ``epochs`` and ``temperature_fraction``).
        iters_per_epoch: Iterations per epoch.

    Returns:
        One schedule per kind of attention present (empty for a model without any).
    """
    present = {type(m) for m in model.modules()}
    schedules = []
    for kind, factory, share in TEMPERATURE_SCHEDULES.values():
        if any(issubclass(t, kind) for t in present):
            fraction = share if recipe.temperature_fraction is None else recipe.temperature_fraction
            schedules.append(factory(iters_per_epoch, recipe.epochs * fraction))
    return schedules


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the recipe asks for on ``device`` (``None``: full precision).

    Args:
        recipe: The recipe (its ``amp``).
        device: The training device.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.
    """
    if recipe.amp is False or (recipe.amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None, device: torch.device) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is ``None``.

    Args:
        dtype: From [`amp_dtype`][zoo.shootout.recipe.amp_dtype].
        device: The device.

    Yields:
        Nothing.
    """
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield
