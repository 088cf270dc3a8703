"""Operator benchmark: the presets on their fast paths, against raw PyTorch, timm and their own
reference paths.

For each configuration (Swin stage 1 and stage 3 shapes for the one-aggregation presets, a ResNet
stage-1 map for the composites, a ResNet-18 stage-3 convolution at batch 8 and 1 for the
KernelWarehouse family) it reports every preset's median forward time and peak memory (inference
mode, fp32, torch's default thread count) and the ratios the library aims for, each with its target
and PASS/MISS::

    python -m benchmarks.ops [--quick] [--sizes all|a,b,c,d,e] [--device cpu|cuda] [--output PATH]

The two operators of a time ratio are timed in the same interleaved loop, so that machine noise
hits both alike; peak memory is measured in a fresh process per operator (see
:mod:`benchmarks._memory`). The tables go to stdout and, for full runs, to
``benchmarks/results/ops.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import torch

from benchmarks._cases import CONFIGS, Config, Op, build_ops
from benchmarks._harness import (
    Budget,
    Timing,
    machine_description,
    markdown_table,
    paired_ratio,
    resolve_device,
    time_interleaved,
)
from benchmarks._memory import MIB, MemoryProbe, check

__all__ = ["RATIOS", "Loop", "OpRow", "Ratio", "RatioRow", "loops_for", "main"]

RESULTS = Path(__file__).parent / "results" / "ops.md"
"""Where a full run writes its report."""

MEMORY_WORKERS = 2
"""Memory measurements run at once (never during a timing loop, so they do not disturb it)."""


@dataclass(frozen=True)
class Ratio:
    """A ratio the library aims for: ``numerator / denominator <= target``.

    Attributes:
        label: What it compares.
        metric: ``"time"`` (timed in a loop of its own, see :func:`loops_for`) or ``"memory"`` (peak memory).
        numerator: Key of the operator on top.
        denominator: Key of the operator below.
        target: Upper bound, as written in the report (``"1.05"``, ``"1/20"``).
        same_output: Whether both compute the same function (the difference of their outputs is shown).
        slow: Whether an operator is too slow for the usual number of timing rounds.
    """

    label: str
    metric: Literal["time", "memory"]
    numerator: str
    denominator: str
    target: str
    same_output: bool = False
    slow: bool = False

    @property
    def bound(self) -> float:
        """The target as a number."""
        return float(Fraction(self.target))


_SINGLE: tuple[Ratio, ...] = (
    Ratio("DWConv / F.conv2d", "time", "dwconv", "conv2d", "1.05", same_output=True),
    Ratio("DynamicDWConv / DWConv", "time", "dynamic_dwconv", "dwconv", "1.5"),
    Ratio("WindowAttention / timm Swin", "time", "window", "timm_swin", "1.05", same_output=True),
    Ratio("NeighborhoodAttention / WindowAttention", "time", "neighborhood", "window", "5"),
    Ratio("NeighborhoodAttention / WindowAttention", "memory", "neighborhood", "window", "3"),
    Ratio(
        "NeighborhoodAttention / its reference path",
        "time",
        "neighborhood",
        "neighborhood_reference",
        "1/20",
        same_output=True,
        slow=True,
    ),
    Ratio("NeighborhoodAttention / its reference path", "memory", "neighborhood", "neighborhood_reference", "1/8"),
)

_COMPOSITE: tuple[Ratio, ...] = (
    Ratio("ACmix / its reference path", "time", "acmix", "acmix_reference", "1/5", same_output=True, slow=True),
    Ratio("ACmix / its reference path", "memory", "acmix", "acmix_reference", "1/4"),
)

_WAREHOUSE: tuple[Ratio, ...] = (Ratio("KWConv2d 1x / nn.Conv2d", "time", "kw", "conv", "2"),)

RATIOS: dict[str, tuple[Ratio, ...]] = {"single": _SINGLE, "composite": _COMPOSITE, "warehouse": _WAREHOUSE}
"""The ratios reported for the configurations of each suite. Each time ratio has its own timing
loop, in which only its two operators alternate."""


@dataclass(frozen=True)
class Loop:
    """Operators timed together in one interleaved loop.

    Attributes:
        ops: Keys of the operators (see :func:`benchmarks._cases.build_ops`).
        slow: Whether it holds an operator too slow for the usual number of rounds.
    """

    ops: tuple[str, ...]
    slow: bool = False


def loops_for(keys: Sequence[str], ratios: Sequence[Ratio]) -> list[Loop]:
    """The timing loops: one per time ratio, then one for each operator of ``keys`` left untimed.

    An operator's time in the main table comes from the first loop that holds it.
    """
    loops = [Loop((r.numerator, r.denominator), r.slow) for r in ratios if r.metric == "time"]
    timed = {key for loop in loops for key in loop.ops}
    return loops + [Loop((key,)) for key in keys if key not in timed]


@dataclass(frozen=True)
class Budgets:
    """Timing budgets: one for ordinary loops, one for loops holding a very slow operator."""

    normal: Budget
    slow: Budget

    def of(self, loop: Loop) -> Budget:
        """The budget of ``loop``."""
        return self.slow if loop.slow else self.normal


FULL = Budgets(normal=Budget(seconds=1.5, min_rounds=5, max_rounds=50), slow=Budget(1.5, 3, 50))
QUICK = Budgets(normal=Budget(seconds=0.1, min_rounds=2, max_rounds=10), slow=Budget(0.1, 1, 10))


@dataclass(frozen=True)
class OpRow:
    """One operator's line of the main table.

    Attributes:
        label: Operator.
        path: Execution path, or ``"baseline"``.
        median_ms: Median time of a forward pass.
        calls: Forward passes timed.
        peak_mib: Peak memory of a forward pass above its inputs.
    """

    label: str
    path: str
    median_ms: float
    calls: int
    peak_mib: float

    def cells(self) -> list[str]:
        """The row, formatted."""
        return [self.label, f"`{self.path}`", f"{self.median_ms:.2f}", str(self.calls), f"{self.peak_mib:.1f}"]


@dataclass(frozen=True)
class RatioRow:
    """One measured ratio.

    Attributes:
        label: What it compares.
        value: Measured ratio.
        target: The bound, as written.
        passed: Whether the value meets the bound.
        note: The two values compared, and how much the outputs differ where they should agree.
    """

    label: str
    value: float
    target: str
    passed: bool
    note: str

    def cells(self) -> list[str]:
        """The row, formatted."""
        return [self.label, f"{self.value:.4f}", f"≤ {self.target}", "PASS" if self.passed else "**MISS**", self.note]


@dataclass(frozen=True)
class LoopResult:
    """Timings and first outputs of one loop's operators, by key."""

    timings: dict[str, Timing]
    outputs: dict[str, torch.Tensor]


def _run_loops(
    ops: dict[str, Op], ratios: Sequence[Ratio], device: torch.device, budgets: Budgets
) -> dict[tuple[str, ...], LoopResult]:
    results = {}
    with torch.inference_mode():
        for loop in loops_for(list(ops), ratios):
            timings, outputs = time_interleaved({key: ops[key].run for key in loop.ops}, device, budgets.of(loop))
            results[loop.ops] = LoopResult(timings, outputs)
    return results


def _op_rows(ops: dict[str, Op], loops: dict[tuple[str, ...], LoopResult], peaks: dict[str, int]) -> list[OpRow]:
    rows = []
    for key, op in ops.items():
        timing = next(result.timings[key] for result in loops.values() if key in result.timings)
        rows.append(OpRow(op.label, op.path, timing.median_ms, timing.calls, peaks[key] / MIB))
    return rows


def _time_ratio(ratio: Ratio, result: LoopResult) -> tuple[float, str]:
    top, bottom = result.timings[ratio.numerator], result.timings[ratio.denominator]
    note = f"medians {top.median_ms:.2f} / {bottom.median_ms:.2f} ms"
    if ratio.same_output:
        difference = (result.outputs[ratio.numerator] - result.outputs[ratio.denominator]).abs().max().item()
        note += f"; outputs differ by at most {difference:.1e}"
    return paired_ratio(top, bottom), note


def _memory_ratio(ratio: Ratio, peaks: dict[str, int]) -> tuple[float, str]:
    top, bottom = peaks[ratio.numerator], peaks[ratio.denominator]
    return top / bottom, f"{top / MIB:.1f} / {bottom / MIB:.1f} MiB"


def _ratio_row(ratio: Ratio, loops: dict[tuple[str, ...], LoopResult], peaks: dict[str, int]) -> RatioRow:
    if ratio.metric == "time":
        value, note = _time_ratio(ratio, loops[ratio.numerator, ratio.denominator])
    else:
        value, note = _memory_ratio(ratio, peaks)
    return RatioRow(f"{ratio.label}, {ratio.metric}", value, ratio.target, value <= ratio.bound, note)


def _config_report(config: Config, op_rows: Sequence[OpRow], ratio_rows: Sequence[RatioRow]) -> str:
    ops_table = markdown_table(
        ["operator", "path", "median time (ms)", "calls timed", "peak memory (MiB)"],
        [row.cells() for row in op_rows],
        "llrrr",
    )
    ratios_table = markdown_table(
        ["ratio", "measured", "target", "result", "note"], [row.cells() for row in ratio_rows], "lrlll"
    )
    return f"## {config.describe()}\n\n{ops_table}\n\n{ratios_table}\n"


def _peaks(config: Config, keys: Sequence[str], memory: MemoryProbe) -> dict[str, int]:
    """Peak memory of each operator, one fresh process each (while the timing loops wait)."""
    futures = {key: memory.op(config.key, key) for key in keys}
    return {key: future.result() for key, future in futures.items()}


def _benchmark_config(
    config: Config, device: torch.device, budgets: Budgets, memory: MemoryProbe
) -> tuple[list[OpRow], list[RatioRow]]:
    ops = build_ops(config, device)
    ratios = RATIOS[config.suite]
    peaks = _peaks(config, list(ops), memory)
    loops = _run_loops(ops, ratios, device, budgets)
    return _op_rows(ops, loops, peaks), [_ratio_row(ratio, loops, peaks) for ratio in ratios]


def _header(device: torch.device, command: str, quick: bool, memory_check: Sequence[str]) -> str:
    facts = "\n".join(f"- {line}" for line in machine_description(device))
    checks = "\n".join(f"- {line}" for line in memory_check)
    mode = "quick (smoke test: few repetitions, timings unreliable)" if quick else "full"
    source = "`torch.cuda.max_memory_allocated`" if device.type == "cuda" else "the torch profiler's allocation events"
    return f"""# Operator benchmark

{facts}
- Run: {mode}; `{command}`

Forward passes in `torch.inference_mode()`, fp32, modules in `eval()`. Times are medians over
samples taken after warm-up in interleaved loops: each time ratio has its own loop, in which its two
operators alternate (A B, B A, A B, ...), and is the median over the loop's rounds of the ratio of
the two samples of a round (so that load changing between rounds cancels out); the table's time of
an operator comes from the first loop that holds it. Peak memory is the most memory a forward pass
holds above its parameters and input (output included), measured after a warm-up call in a fresh
process per operator, from {source}.

Check of the memory method, on allocations of known size:
{checks}
"""


def _config_keys(text: str) -> list[str]:
    keys = list(CONFIGS) if text == "all" else [key.strip() for key in text.split(",")]
    unknown = [key for key in keys if key not in CONFIGS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown configuration {unknown}; choose 'all' or from {', '.join(CONFIGS)}")
    return keys


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for smoke tests")
    parser.add_argument(
        "--sizes",
        default="all",
        type=_config_keys,
        help=f"configurations to run: 'all' or a comma-separated list of {', '.join(CONFIGS)}",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to write (default: benchmarks/results/ops.md for full runs, none with --quick)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print its report and write it to a file.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The report, in markdown.
    """
    args = _parse(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    configs = [CONFIGS[key] for key in args.sizes]
    budgets = QUICK if args.quick else FULL
    command = " ".join(["python -m benchmarks.ops", *(sys.argv[1:] if argv is None else argv)])
    with MemoryProbe(device, MEMORY_WORKERS) as memory:
        sections = [_header(device, command, args.quick, check(memory))]
        for config in configs:
            sections.append(_config_report(config, *_benchmark_config(config, device, budgets, memory)))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    sections.append(f"Benchmark wall time: {time.perf_counter() - started:.0f} s; load average at the end: {load}.\n")
    report = "\n".join(sections)
    print(report)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
