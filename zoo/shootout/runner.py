"""One (mixer, seed) run: train with the recipe, resume from its checkpoint, evaluate, measure."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from unifiedops.flops import count_flops
from zoo.blocks import convert_sync_batchnorm
from zoo.builder import BackboneSpec, SpecBackbone
from zoo.checkpoint_io import save
from zoo.shootout.data import Splits
from zoo.shootout.mixers import MixerEntry
from zoo.shootout.recipe import Recipe, amp_dtype, autocast, temperature_schedules
from zoo.shootout.state import load_training_state, save_training_state

__all__ = ["RunContext", "build_model", "run_one"]

RESULT, CHECKPOINT, WEIGHTS = "result.json", "checkpoint.safetensors", "model.safetensors"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class RunContext:
    """Where and how runs execute: device, process group, progress display, and a hook for tests.

    Attributes:
        device: The training device.
        rank: This process's rank (0 without ``torchrun``).
        world_size: Processes training together.
        progress: Show a progress bar per run (on rank 0).
        on_step: Called with the global step after every optimizer step (tests interrupt runs with it).
        workers: Data-loading processes per training process (0: load in the main process).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    on_step: Callable[[int], None] | None = None
    workers: int = 0


def build_model(spec: BackboneSpec, entry: MixerEntry, splits: Splits, recipe: Recipe, seed: int) -> nn.Module:
    """The backbone with ``entry``'s mixer, initialised from ``seed``.

    Args:
        spec: The backbone with the slot.
        entry: The contestant.
        splits: The data (channels, classes and size of its images).
        recipe: The recipe (its stochastic depth).
        seed: Seed of the initialisation.

    Returns:
        The model, in training mode, on the CPU.
    """
    torch.manual_seed(seed)
    return SpecBackbone(
        entry.apply(spec),
        in_chans=splits.in_chans,
        num_classes=splits.num_classes,
        drop_path_rate=recipe.drop_path_rate,
        img_size=splits.img_size,
    )


def _epoch_batches(sampler: DistributedSampler, batch: int, skip: int) -> Iterator[list[int]]:
    # DistributedSampler hands rank r the indices r, r + N, r + 2N, ... of one seeded permutation, so the union
    # of the ranks' k-th batches is the k-th global batch a single process draws from the same permutation.
    indices = list(sampler)
    for k in range(skip, len(indices) // batch):
        yield indices[k * batch : (k + 1) * batch]


def _mean_loss_and_stop(loss: torch.Tensor, stop: bool, ctx: RunContext) -> tuple[float, bool]:
    """The loss averaged over the processes, and whether any of them was asked to stop (one all-reduce)."""
    both = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    if ctx.world_size > 1:
        dist.all_reduce(both)
    return float(both[0]) / ctx.world_size, bool(both[1] > 0)


@contextlib.contextmanager
def _stops_at_step_boundaries() -> Iterator[list[int]]:
    """Record SIGINT and SIGTERM instead of raising where they land.

    An interrupt raised inside ``optimizer.step()`` would leave some parameters updated and others not, and one
    between the update and the step count would checkpoint the weights of one step under the number of another;
    the loop raises ``KeyboardInterrupt`` itself once the step is complete. Off the main thread, where handlers
    cannot be installed, signals keep their usual effect.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in _STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, recipe: Recipe, ctx: RunContext) -> float:
    """Top-1 accuracy (%) on ``data``, each process scoring every ``world_size``-th image.

    Args:
        model: The model (unwrapped).
        data: ``(image, label)`` pairs.
        recipe: The recipe (its evaluation batch size and precision).
        ctx: The run context.

    Returns:
        Top-1 accuracy in percent over all of ``data``.
    """
    model.eval()
    shard = Subset(data, range(ctx.rank, len(data), ctx.world_size))
    correct = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    dtype = amp_dtype(recipe, ctx.device)
    for images, labels in DataLoader(shard, recipe.eval_batch_size, num_workers=ctx.workers):
        with autocast(dtype, ctx.device):
            logits = model(images.to(ctx.device))
        correct[0] += (logits.argmax(-1) == labels.to(ctx.device)).sum()
        correct[1] += len(labels)
    if ctx.world_size > 1:
        dist.all_reduce(correct)
    return float(100 * correct[0] / correct[1])


@torch.no_grad()
def measure_throughput(model: nn.Module, splits: Splits, recipe: Recipe, device: torch.device) -> float:
    """Inference images per second at the evaluation batch size: the median of 5 timed passes after 2 warm-ups.

    Args:
        model: The model (unwrapped).
        splits: The data (the image shape).
        recipe: The recipe (batch size and precision).
        device: The device to time on.

    Returns:
        Images per second.
    """
    model.eval()
    x = torch.randn(recipe.eval_batch_size, splits.in_chans, *splits.img_size, device=device)
    dtype = amp_dtype(recipe, device)
    times = []
    for i in range(7):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(dtype, device):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return recipe.eval_batch_size / statistics.median(times)


def run_one(
    spec: BackboneSpec,
    entry: MixerEntry,
    splits: Splits,
    recipe: Recipe,
    seed: int,
    run_dir: str | os.PathLike,
    ctx: RunContext,
) -> dict[str, Any]:
    """Train ``entry``'s backbone from ``seed`` with ``recipe``, or return the result of a finished run.

    A finished run (its ``result.json`` exists) is skipped; an unfinished one resumes from its checkpoint, which
    is written after every epoch and when the run is interrupted (``KeyboardInterrupt``, or ``SIGTERM`` through
    the CLI). A resumed run ends with the weights an uninterrupted one would have: the data order of an epoch is a
    function of the seed and the epoch, and the random state is restored.

    Args:
        spec: The backbone with the slot.
        entry: The contestant.
        splits: The data.
        recipe: The recipe.
        seed: Seed of the initialisation and of the data order.
        run_dir: This run's folder.
        ctx: The run context.

    Returns:
        The result: ``mixer``, ``seed``, ``top1`` (%), ``params``, ``flops`` (MACs of one image), ``throughput``
        (images/s), ``train_seconds``, ``steps``, ``epoch_losses`` and the run's settings.

    Raises:
        ValueError: If the global batch does not split evenly over the processes, or exceeds the training set.
    """
    run_dir = Path(run_dir)
    result_path = run_dir / RESULT
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if recipe.batch_size % ctx.world_size:
        raise ValueError(f"batch_size={recipe.batch_size} does not split over {ctx.world_size} processes")
    local_batch = recipe.batch_size // ctx.world_size
    iters_per_epoch = len(splits.train) // recipe.batch_size
    if iters_per_epoch == 0:
        raise ValueError(f"batch_size={recipe.batch_size} exceeds the {len(splits.train)} training images")

    model = build_model(spec, entry, splits, recipe, seed).to(ctx.device)
    if ctx.world_size > 1:
        model = convert_sync_batchnorm(model)
    optimizer, scheduler = recipe.optimizer_and_scheduler(model, iters_per_epoch)
    schedules = temperature_schedules(model, recipe, iters_per_epoch)
    criterion = recipe.criterion()
    dtype = amp_dtype(recipe, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)

    checkpoint = run_dir / CHECKPOINT
    progress: dict[str, Any] = {"step": 0, "epoch_losses": [], "train_seconds": 0.0, "loss_sum": 0.0}
    if checkpoint.is_file():
        progress = load_training_state(checkpoint, model, optimizer, ctx.device)
        if progress.get("grad_scaler"):
            scaler.load_state_dict(progress["grad_scaler"])
    step = progress["step"]
    for schedule in schedules:
        schedule.iteration = step
    if step:
        scheduler.step_update(num_updates=step)

    net = model
    if ctx.world_size > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    sampler = DistributedSampler(
        splits.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
    )
    total = recipe.epochs * iters_per_epoch
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"{entry.name} seed {seed}",
        disable=not ctx.progress or ctx.rank != 0,
        leave=False,
        dynamic_ncols=True,
    )

    def save_state() -> None:
        if scaler.is_enabled():  # float16's loss scale, learnt over the steps so far
            progress["grad_scaler"] = scaler.state_dict()
        if ctx.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_training_state(checkpoint, model, optimizer, progress)

    started = time.perf_counter()
    with _stops_at_step_boundaries() as received:
        try:
            while step < total:
                epoch, skip = divmod(step, iters_per_epoch)
                sampler.set_epoch(epoch)
                net.train()
                batches = _epoch_batches(sampler, local_batch, skip)
                # Random augmentations come from the restored random state, so a resumed run augments as the
                # uninterrupted one would; with workers that holds from an epoch boundary (each epoch's workers are
                # seeded when it starts), and the rest of an epoch interrupted mid-way gets other augmentations.
                for images, labels in DataLoader(splits.train, batch_sampler=batches, num_workers=ctx.workers):
                    images, labels = images.to(ctx.device), labels.to(ctx.device)
                    for schedule in schedules:
                        schedule.step(model)
                    with autocast(dtype, ctx.device):
                        loss = criterion(net(images), labels)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    scheduler.step_update(num_updates=step)
                    mean_loss, stop = _mean_loss_and_stop(loss, bool(received), ctx)
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"{entry.name} seed {seed}: the loss is {mean_loss} at step {step}")
                    progress["loss_sum"] += mean_loss
                    progress["step"] = step
                    bar.update()
                    bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
                    if step % iters_per_epoch == 0:  # an epoch's end: close its books, then checkpoint
                        progress["epoch_losses"].append(progress["loss_sum"] / iters_per_epoch)
                        progress["loss_sum"] = 0.0
                        progress["train_seconds"] += time.perf_counter() - started
                        started = time.perf_counter()
                        save_state()
                    if ctx.on_step is not None:
                        ctx.on_step(step)
                    if stop:  # every process stops after the same step
                        raise KeyboardInterrupt(f"stopped by a signal after step {step}")
        except KeyboardInterrupt:
            progress["train_seconds"] += time.perf_counter() - started
            save_state()
            raise
        finally:
            bar.close()

    top1 = evaluate(model, splits.test, recipe, ctx)
    result: dict[str, Any] = {
        "mixer": entry.name,
        "seed": seed,
        "top1": top1,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": progress["train_seconds"],
        "steps": step,
        "epoch_losses": progress["epoch_losses"],
        "world_size": ctx.world_size,
        "device": str(ctx.device),
    }
    if ctx.rank == 0:
        x = torch.zeros(1, splits.in_chans, *splits.img_size, device=ctx.device)
        result["flops"] = count_flops(model, x)
        result["throughput"] = measure_throughput(model, splits, recipe, ctx.device)
        save(model, run_dir / WEIGHTS)
        result_path.write_text(json.dumps(result, indent=1))
        checkpoint.unlink(missing_ok=True)
    if ctx.world_size > 1:
        dist.barrier()
    return result
