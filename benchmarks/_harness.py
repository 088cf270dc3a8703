"""Timing and reporting helpers shared by the benchmarks.

Competitors are timed in one interleaved loop (A, B, B, A, A, B, ...) after a warm-up, so that
whatever else the machine is doing slows them alike, and each is summarised by its median.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = [
    "Budget",
    "Timing",
    "machine_description",
    "markdown_table",
    "paired_ratio",
    "resolve_device",
    "synchronize",
    "time_interleaved",
]


def resolve_device(name: str | None) -> torch.device:
    """The device to benchmark on: ``name``, or CUDA when available, else the CPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Budget:
    """How long to time each competitor of a loop.

    Attributes:
        seconds: Target time spent on each competitor (warm-up excluded).
        min_rounds: Fewest rounds (samples per competitor), whatever the budget.
        max_rounds: Most rounds; faster competitors then run several calls per sample.
    """

    seconds: float
    min_rounds: int
    max_rounds: int

    def rounds_for(self, slowest_s: float) -> int:
        """Rounds for a loop whose slowest competitor takes ``slowest_s`` seconds per call."""
        return max(self.min_rounds, min(self.max_rounds, int(self.seconds / max(slowest_s, 1e-9))))


@dataclass(frozen=True)
class Timing:
    """The samples of one competitor; each sample is the mean time of ``calls_per_sample`` calls.

    Attributes:
        samples_s: Seconds per call, one value per round.
        calls_per_sample: Back-to-back calls averaged in each sample.
    """

    samples_s: tuple[float, ...]
    calls_per_sample: int

    @property
    def median_ms(self) -> float:
        """Median over the samples, in milliseconds."""
        return 1e3 * statistics.median(self.samples_s)

    @property
    def calls(self) -> int:
        """Calls timed in all."""
        return len(self.samples_s) * self.calls_per_sample


def paired_ratio(top: Timing, bottom: Timing) -> float:
    """Median over rounds of ``top``'s sample divided by ``bottom``'s sample of the same round.

    Both must come from one :func:`time_interleaved` loop. The two samples of a round are taken
    back to back, so a change in the machine's load between rounds cancels out of their ratio.
    """
    if len(top.samples_s) != len(bottom.samples_s):
        raise ValueError("paired_ratio needs timings from the same loop")
    return statistics.median(a / b for a, b in zip(top.samples_s, bottom.samples_s, strict=True))


def _timed_calls(run: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean seconds per call of ``calls`` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def _warm_up(run: Callable[[], T], device: torch.device, budget: Budget) -> tuple[T, float]:
    """Call ``run`` once cold and, unless that took longer than the whole budget, once more.

    Returns:
        The first call's output and the last call's duration in seconds.
    """
    synchronize(device)
    start = time.perf_counter()
    output = run()
    synchronize(device)
    seconds = time.perf_counter() - start
    if seconds < budget.seconds:
        seconds = _timed_calls(run, 1, device)
    return output, seconds


def time_interleaved(
    runs: Mapping[str, Callable[[], T]], device: torch.device, budget: Budget
) -> tuple[dict[str, Timing], dict[str, T]]:
    """Time competitors in one interleaved loop.

    Every competitor is warmed up, which also estimates its time per call. The slowest sets the
    planned number of rounds (about ``budget.seconds`` of it, within ``[min_rounds, max_rounds]``)
    and so the length of a sample; each faster competitor runs as many back-to-back calls per
    sample as fill the same time. Each round times one sample of every competitor, in an order that
    reverses every round (A B, B A, ...) so that neither always runs first. Rounds go on until
    about ``budget.seconds`` per competitor has been spent, within ``[min_rounds, max_rounds]``.

    Args:
        runs: Competitors by name; each call runs one forward pass.
        device: Where they run (for synchronisation).
        budget: Time to spend on each competitor.

    Returns:
        ``(timings, outputs)``: the timing of each competitor, and the output of its first call
        (to check that competitors which should agree do).
    """
    warm = {name: _warm_up(run, device, budget) for name, run in runs.items()}
    outputs = {name: output for name, (output, _) in warm.items()}
    estimates = {name: seconds for name, (_, seconds) in warm.items()}
    sample_s = budget.seconds / budget.rounds_for(max(estimates.values()))
    calls = {name: max(1, round(sample_s / max(seconds, 1e-9))) for name, seconds in estimates.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    start = time.perf_counter()
    for done in range(budget.max_rounds):
        # The estimates come from one call each and may be off: stop on the time actually spent.
        if done >= budget.min_rounds and time.perf_counter() - start >= budget.seconds * len(runs):
            break
        for name in order:
            samples[name].append(_timed_calls(runs[name], calls[name], device))
        order.reverse()
    timings = {name: Timing(tuple(samples[name]), calls[name]) for name in runs}
    return timings, outputs


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> list[str]:
    """Facts about the machine and software that the timings depend on, one per line."""
    facts = [
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores",
        f"Load average at start (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (torch default), "
        f"Python {platform.python_version()}",
        f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
    ]
    return facts


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table.

    Args:
        header: Column titles.
        rows: Cells, already formatted.
        align: One character per column, ``l`` or ``r`` (default: all left).

    Returns:
        The table, without a trailing newline.
    """
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
