"""The benchmarked models, built for one setting, and their peak memory in a fresh process.

Both the timing loops (in the main process) and the memory measurements (in a fresh process per
model, see :mod:`benchmarks._memory`) build their models here, so they measure the same thing.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import timm
import torch
from torch import nn

import zoo  # noqa: F401  (registers the zoo's models with timm)
from benchmarks._memory import peak_bytes
from unifiedops import Aggregation

__all__ = ["ModelCase", "ModelMemoryProbe", "build_model", "build_run", "force_path"]

SEED = 0
"""Seed of every model's initialisation and input, so that each process builds the same thing."""

_NEEDS_IMG_SIZE = ("swin_tiny_patch4_window7_224",)
"""timm models whose constructor must be told the input size when it is not 224."""


@dataclass(frozen=True)
class ModelCase:
    """One model in one setting.

    Attributes:
        model: A name for ``timm.create_model`` (a zoo model or one of timm's own).
        batch: Batch size.
        size: Height and width of the input.
        path: ``"auto"`` (each operator's fast path) or ``"reference"`` (every
            [`Aggregation`][unifiedops.Aggregation] inside forced onto the literal formula).
        channels_last: Whether model and input use ``torch.channels_last`` memory format.
        train: Whether one call is a training step (forward and backward, ``train()`` mode) rather
            than an inference forward pass (``eval()`` mode; the caller sets the grad mode).
    """

    model: str
    batch: int
    size: int
    path: str = "auto"
    channels_last: bool = False
    train: bool = False

    def __post_init__(self) -> None:
        if self.path not in ("auto", "reference"):
            raise ValueError(f"path must be 'auto' or 'reference', got {self.path!r}")
        if self.batch < 1 or self.size < 1:
            raise ValueError(f"batch and size must be positive, got batch={self.batch}, size={self.size}")

    @property
    def memory_format(self) -> str:
        """``"channels-last"`` or ``"channels-first"``."""
        return "channels-last" if self.channels_last else "channels-first"


def force_path(model: nn.Module, path: str) -> int:
    """Set ``path`` on every [`Aggregation`][unifiedops.Aggregation] inside ``model``.

    Args:
        model: Any module.
        path: A path name, or ``"auto"``.

    Returns:
        How many aggregations were changed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, Aggregation):
            module.path = path
            count += 1
    return count


def build_model(case: ModelCase, device: torch.device) -> nn.Module:
    """The model of ``case``, seeded, on ``device``, in ``eval()`` (or ``train()``) mode and memory format.

    Raises:
        ValueError: If ``case.path`` is ``"reference"`` and the model holds no aggregation.
    """
    torch.manual_seed(SEED)
    kwargs = {"img_size": case.size} if case.model in _NEEDS_IMG_SIZE and case.size != 224 else {}
    model = timm.create_model(case.model, **kwargs)
    if case.path != "auto" and force_path(model, case.path) == 0:
        raise ValueError(f"{case.model} holds no unifiedops.Aggregation to put on path {case.path!r}")
    model = model.to(device).train(case.train)
    if case.channels_last:
        _to_channels_last(model)
    return model


def _to_channels_last(model: nn.Module) -> None:
    """Put every 4-D parameter and buffer in ``channels_last`` format.

    ``model.to(memory_format=...)`` would also convert 5-D tensors (and fail: KernelWarehouse's
    cells are 5-D), so convert in place, 4-D tensors only.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def build_run(case: ModelCase, device: torch.device) -> Callable[[], torch.Tensor]:
    """One call of ``case``: a forward pass, or a training step (forward, backward) when ``case.train``.

    Returns:
        A function running one call on a fixed random input and returning the model's output
        (detached for a training step).
    """
    model = build_model(case, device)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(case.batch, 3, case.size, case.size, generator=generator).to(device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not case.train:
        return lambda: model(x)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        output = model(x)
        output.float().logsumexp(dim=-1).mean().backward()
        return output.detach()

    return step


def _measure_case(case: ModelCase, device: str) -> int:
    """Body of a measuring process: peak bytes of one inference forward pass of ``case``."""
    if case.train:
        raise ValueError("peak memory is measured for inference cases only")
    device_ = torch.device(device)
    run = build_run(case, device_)
    with torch.inference_mode():
        run()  # warm-up: lazily built tables, kernel selection
        return peak_bytes(run, device_)


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks._model_cases"])
    return context


class ModelMemoryProbe:
    """Measures the peak memory of model forward passes, one fresh process per measurement.

    The method is :func:`benchmarks._memory.peak_bytes` (the CUDA allocator's peak, or the torch
    profiler's allocation events on the CPU), after one warm-up call, in ``torch.inference_mode()``.
    Use as a context manager; measurements run ``workers`` at a time.

    Args:
        device: Where the models run.
        workers: Measuring processes alive at once.
    """

    def __init__(self, device: torch.device, workers: int = 1) -> None:
        self._device = str(device)
        self._pool = ProcessPoolExecutor(workers, mp_context=_context(), max_tasks_per_child=1)

    def __enter__(self) -> ModelMemoryProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)

    def case(self, case: ModelCase) -> Future[int]:
        """Peak bytes of one forward pass of ``case`` above its parameters and input."""
        return self._pool.submit(_measure_case, case, self._device)
