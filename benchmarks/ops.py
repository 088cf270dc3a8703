"""Operator benchmark: the presets on their fast paths, against raw PyTorch, timm, NATTEN and their
own reference paths, and how their time grows with the resolution.

For each configuration (Swin stage 1 and stage 3 shapes for the one-aggregation presets, a ResNet
stage-1 map for the composites, a ResNet-18 stage-3 convolution at batch 8 and 1 for the
KernelWarehouse family, Swin stage 1 and a small map for NATTEN) it reports every operator's median
forward time and peak memory (inference mode, fp32, torch's default thread count) and the ratios the
library aims for, each with its target and PASS/MISS. A sweep then times each single-aggregation
preset on its fast path at several resolutions, as a table and a log-log plot (PNG)::

    python -m benchmarks.ops [--quick] [--sizes all|quick|none|a,b,...] [--resolutions 14,28,56,112|none]
                             [--device cpu|cuda] [--output PATH] [--plot PATH]

The two operators of a time ratio are timed in the same interleaved loop, so that machine noise
hits both alike; peak memory is measured in a fresh process per operator (see
:mod:`benchmarks._memory`). The tables go to stdout and, for full runs, to
``benchmarks/results/ops.md``; the plot to ``benchmarks/results/`` and ``docs/img/`` for full runs,
next to ``--output`` otherwise. NATTEN is optional: without it, its rows say so and the rest runs.
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
from typing import Any, Literal

import torch
from tqdm import tqdm

from benchmarks import _results
from benchmarks._cases import (
    CONFIGS,
    SWEEP,
    SWEEP_OPS,
    Config,
    Op,
    build_ops,
    missing_ops,
    natten_status,
    sweep_config,
)
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
from benchmarks.plots import line_plot

__all__ = [
    "FULL_RESOLUTIONS",
    "QUICK_RESOLUTIONS",
    "RATIOS",
    "Loop",
    "OpRow",
    "Ratio",
    "RatioRow",
    "SweepRow",
    "loops_for",
    "main",
    "plot_sweep",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ops.md"
"""Where a full run writes its report."""

PLOT_NAME = "ops_time_vs_resolution.png"
"""File name of the time-vs-resolution plot."""

DOCS_IMG = ROOT / "docs" / "img"
"""Where a full run also writes its plot, for the documentation (mkdocs serves files under docs/ only)."""

FULL_RESOLUTIONS = (14, 28, 56, 112)
"""Resolutions of the sweep in full runs."""

QUICK_RESOLUTIONS = (7, 14)
"""Resolutions of the sweep in quick runs."""

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

_WAREHOUSE: tuple[Ratio, ...] = (
    Ratio("KWConv2d 1x / nn.Conv2d", "time", "kw", "conv", "2"),
    Ratio("ODConv2d 1x / nn.Conv2d", "time", "odconv", "conv", "2"),
    Ratio("ODConv2d 1x / nn.Conv2d", "memory", "odconv", "conv", "5"),  # B assembled kernels
    Ratio("DCDConv2d / nn.Conv2d", "time", "dcd", "conv", "1.5"),
    Ratio("DCDConv2d / nn.Conv2d", "memory", "dcd", "conv", "1.5"),
)

_NATTEN: tuple[Ratio, ...] = (
    Ratio(
        "NeighborhoodAttention / NATTEN NeighborhoodAttention2D",
        "time",
        "neighborhood_nobias",
        "natten",
        "1/10",
        same_output=True,
        slow=True,
    ),
)

RATIOS: dict[str, tuple[Ratio, ...]] = {
    "single": _SINGLE,
    "composite": _COMPOSITE,
    "warehouse": _WAREHOUSE,
    "natten": _NATTEN,
}
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
FULL_SWEEP = Budget(seconds=0.4, min_rounds=3, max_rounds=20)
QUICK_SWEEP = Budget(seconds=0.02, min_rounds=1, max_rounds=3)


@dataclass(frozen=True)
class OpRow:
    """One operator's line of the main table.

    Attributes:
        label: Operator.
        path: Execution path, or ``"baseline"``.
        median_ms: Median time of a forward pass.
        calls: Forward passes timed.
        peak_mib: Peak memory of a forward pass above its inputs; ``None`` when not measured
            (quick runs measure only the operators of a memory ratio).
    """

    label: str
    path: str
    median_ms: float
    calls: int
    peak_mib: float | None

    def cells(self) -> list[str]:
        """The row, formatted."""
        peak = "—" if self.peak_mib is None else f"{self.peak_mib:.1f}"
        return [self.label, f"`{self.path}`", f"{self.median_ms:.2f}", str(self.calls), peak]


@dataclass(frozen=True)
class RatioRow:
    """One measured ratio.

    Attributes:
        label: What it compares.
        value: Measured ratio; ``None`` when an operator is missing (see ``note``).
        target: The bound, as written.
        passed: Whether the value meets the bound (``False`` when not measured).
        note: The two values compared, and how much the outputs differ where they should agree;
            or why it was not measured.
    """

    label: str
    value: float | None
    target: str
    passed: bool
    note: str

    def cells(self) -> list[str]:
        """The row, formatted."""
        if self.value is None:
            return [self.label, "—", f"≤ {self.target}", "not run", self.note]
        return [self.label, f"{self.value:.4f}", f"≤ {self.target}", "PASS" if self.passed else "**MISS**", self.note]


@dataclass(frozen=True)
class SweepRow:
    """One preset's times in the resolution sweep.

    Attributes:
        label: Operator.
        path: Execution path.
        median_ms: Median forward time by resolution (the side of the square map).
    """

    label: str
    path: str
    median_ms: dict[int, float]


@dataclass(frozen=True)
class LoopResult:
    """Timings and first outputs of one loop's operators, by key."""

    timings: dict[str, Timing]
    outputs: dict[str, torch.Tensor]


def _run_loops(
    ops: dict[str, Op], ratios: Sequence[Ratio], device: torch.device, budgets: Budgets, progress: tqdm
) -> dict[tuple[str, ...], LoopResult]:
    results = {}
    with torch.inference_mode():
        for loop in loops_for(list(ops), ratios):
            progress.set_postfix_str(" vs ".join(loop.ops))
            timings, outputs = time_interleaved({key: ops[key].run for key in loop.ops}, device, budgets.of(loop))
            results[loop.ops] = LoopResult(timings, outputs)
            progress.update()
    return results


def _op_rows(ops: dict[str, Op], loops: dict[tuple[str, ...], LoopResult], peaks: dict[str, int]) -> list[OpRow]:
    rows = []
    for key, op in ops.items():
        timing = next(result.timings[key] for result in loops.values() if key in result.timings)
        peak = peaks[key] / MIB if key in peaks else None
        rows.append(OpRow(op.label, op.path, timing.median_ms, timing.calls, peak))
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


def _ratio_row(
    ratio: Ratio, loops: dict[tuple[str, ...], LoopResult], peaks: dict[str, int], missing: dict[str, str]
) -> RatioRow:
    absent = [missing[key] for key in (ratio.numerator, ratio.denominator) if key in missing]
    if absent:
        return RatioRow(f"{ratio.label}, {ratio.metric}", None, ratio.target, False, "; ".join(absent))
    if ratio.metric == "time":
        value, note = _time_ratio(ratio, loops[ratio.numerator, ratio.denominator])
    else:
        value, note = _memory_ratio(ratio, peaks)
    return RatioRow(f"{ratio.label}, {ratio.metric}", value, ratio.target, value <= ratio.bound, note)


def _config_note(config: Config, device: torch.device, missing: dict[str, str]) -> str:
    if config.suite != "natten":
        return ""
    return (
        "Both sides are whole modules on the same `(B, H, W, C)` input: the `qkv` projection, "
        "neighbourhood attention and the output projection. NATTEN's `NeighborhoodAttention2D` "
        "(`qkv` Linear, `na2d`, `proj` Linear) loads our module's `qkv` and `proj` weights, so the "
        f"two compute the same function. {natten_status(device)}.\n\n"
        + "".join(f"**{reason}**: its rows are left out.\n\n" for reason in sorted(set(missing.values())))
    )


def _config_report(
    config: Config,
    device: torch.device,
    missing: dict[str, str],
    op_rows: Sequence[OpRow],
    ratio_rows: Sequence[RatioRow],
) -> str:
    ops_table = markdown_table(
        ["operator", "path", "median time (ms)", "calls timed", "peak memory (MiB)"],
        [row.cells() for row in op_rows],
        "llrrr",
    )
    ratios_table = markdown_table(
        ["ratio", "measured", "target", "result", "note"], [row.cells() for row in ratio_rows], "lrlll"
    )
    return f"## {config.describe()}\n\n{_config_note(config, device, missing)}{ops_table}\n\n{ratios_table}\n"


def _peaks(config: Config, keys: Sequence[str], memory: MemoryProbe) -> dict[str, int]:
    """Peak memory of each operator, one fresh process each (while the timing loops wait)."""
    futures = {key: memory.op(config.key, key) for key in keys}
    return {key: future.result() for key, future in futures.items()}


def _runnable(config: Config) -> list[Ratio]:
    """The ratios of ``config`` whose two operators can be built here."""
    missing = missing_ops(config)
    return [r for r in RATIOS[config.suite] if r.numerator not in missing and r.denominator not in missing]


def _benchmark_config(
    config: Config, device: torch.device, budgets: Budgets, memory: MemoryProbe, progress: tqdm, quick: bool
) -> str:
    progress.set_description(f"({config.key}) memory")
    ops = build_ops(config, device)
    missing = missing_ops(config)
    measured = list(ops)
    if quick:  # a fresh process per measurement is most of a quick run: only what a ratio needs
        needed = {key for r in _runnable(config) if r.metric == "memory" for key in (r.numerator, r.denominator)}
        measured = [key for key in ops if key in needed]
    peaks = _peaks(config, measured, memory)
    progress.set_description(f"({config.key}) time")
    loops = _run_loops(ops, _runnable(config), device, budgets, progress)
    ratio_rows = [_ratio_row(ratio, loops, peaks, missing) for ratio in RATIOS[config.suite]]
    return _config_report(config, device, missing, _op_rows(ops, loops, peaks), ratio_rows)


def _sweep(resolutions: Sequence[int], device: torch.device, budget: Budget, progress: tqdm) -> dict[str, SweepRow]:
    """Time each preset of :data:`SWEEP_OPS` alone at every resolution."""
    times: dict[str, dict[int, float]] = {key: {} for key in SWEEP_OPS}
    labels: dict[str, tuple[str, str]] = {}
    progress.set_description("resolution sweep")
    with torch.inference_mode():
        for size in resolutions:
            ops = build_ops(sweep_config(size), device)
            for key in SWEEP_OPS:
                progress.set_postfix_str(f"{key} at {size}x{size}")
                timings, _ = time_interleaved({key: ops[key].run}, device, budget)
                times[key][size] = timings[key].median_ms
                labels[key] = (ops[key].label, ops[key].path)
                progress.update()
    return {key: SweepRow(*labels[key], times[key]) for key in SWEEP_OPS}


def _sweep_report(rows: dict[str, SweepRow], resolutions: Sequence[int], plots: Sequence[Path]) -> str:
    s = SWEEP
    table = markdown_table(
        ["operator", "path", *(f"{r}x{r} (ms)" for r in resolutions)],
        [[row.label, f"`{row.path}`", *(f"{row.median_ms[r]:.3f}" for r in resolutions)] for row in rows.values()],
        "ll" + "r" * len(resolutions),
    )
    where = (
        "Plot: " + ", ".join(f"`{_relative(p)}`" for p in plots) + "."
        if plots
        else "Plot not written (quick runs write it next to `--output`, or to `--plot`)."
    )
    setting = (
        f"B={s.batch}, C={s.channels}, heads={s.heads} (head_dim {s.channels // s.heads}), k=w={s.kernel}, "
        f"shift={s.shift}, IDW groups={s.groups}"
    )
    return (
        "## Time vs resolution\n\n"
        f"Each single-aggregation preset alone on its fast path ({setting}): median forward time on a square map "
        f"of each side, timed alone (not interleaved). {where}\n\n{table}\n"
    )


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _plot_sweep(rows: dict[str, SweepRow], resolutions: Sequence[int], paths: Sequence[Path]) -> dict[str, Any]:
    """Plot the sweep to each path; return the plotted data, which a full run keeps in ``results/ops.json``."""
    s = SWEEP
    data = {
        "title": f"Forward time vs resolution (B={s.batch}, C={s.channels}, k=w={s.kernel}, "
        f"{torch.get_num_threads()} threads)",
        "resolutions": list(resolutions),
        "median_ms": {
            f"{row.label} [{row.path}]": [round(row.median_ms[r], 4) for r in resolutions] for row in rows.values()
        },
    }
    for path in paths:
        plot_sweep(data, path)
    return data


def plot_sweep(data: dict[str, Any], path: Path) -> Path:
    """The time-vs-resolution plot of a sweep: one line per preset, log-log.

    Args:
        data: ``{"title": str, "resolutions": [side, ...], "median_ms": {label: [ms per side]}}``,
            as a full run writes it to ``benchmarks/results/ops.json`` (key ``"sweep"``).
        path: The PNG file to write.

    Returns:
        The path written.
    """
    resolutions = data["resolutions"]
    series = {label: (resolutions, times) for label, times in data["median_ms"].items()}
    return line_plot(
        path, series, "feature map side (H = W)", "median forward time (ms)", data["title"], xticks=resolutions
    )


def _header(device: torch.device, command: str, quick: bool, memory_check: Sequence[str]) -> str:
    facts = "\n".join(f"- {line}" for line in [*machine_description(device), natten_status(device)])
    checks = "\n".join(f"- {line}" for line in memory_check)
    mode = (
        "quick (smoke test: few repetitions, timings unreliable; peak memory measured only for the memory ratios)"
        if quick
        else "full"
    )
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
    if text == "all":
        return list(CONFIGS)
    if text == "none":
        return []
    if text == "quick":
        return [key for key, config in CONFIGS.items() if config.quick]
    keys = [key.strip() for key in text.split(",")]
    unknown = [key for key in keys if key not in CONFIGS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {unknown}; choose 'all', 'quick', 'none' or from {', '.join(CONFIGS)}"
        )
    return keys


def _resolutions(text: str) -> tuple[int, ...]:
    if text == "none":
        return ()
    try:
        sizes = tuple(int(n) for n in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(n < 1 for n in sizes) or list(sizes) != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"expected increasing positive sizes like 14,28,56 or 'none', got {text!r}")
    return sizes


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for smoke tests")
    parser.add_argument(
        "--sizes",
        default=None,
        type=_config_keys,
        help="configurations to run: 'all', 'quick' (all but f, whose NATTEN side takes seconds a call), "
        f"'none' (the sweep only) or a comma-separated list of {', '.join(CONFIGS)} (default: all; quick "
        "with --quick)",
    )
    parser.add_argument(
        "--resolutions",
        default=None,
        type=_resolutions,
        help="sides of the time-vs-resolution sweep, or 'none' (default: "
        f"{','.join(map(str, FULL_RESOLUTIONS))}; {','.join(map(str, QUICK_RESOLUTIONS))} with --quick)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to write (default: benchmarks/results/ops.md for full runs, none with --quick)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"PNG file of the sweep (default: {PLOT_NAME} in benchmarks/results/ and docs/img/ for full "
        "runs, next to --output otherwise, none for a quick run without --output)",
    )
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = _config_keys("quick" if args.quick else "all")
    if args.resolutions is None:
        args.resolutions = QUICK_RESOLUTIONS if args.quick else FULL_RESOLUTIONS
    return args


def _plot_paths(args: argparse.Namespace) -> list[Path]:
    if not args.resolutions:
        return []
    if args.plot is not None:
        return [args.plot]
    if args.output is not None:
        return [args.output.parent / PLOT_NAME]
    return [] if args.quick else [RESULTS.parent / PLOT_NAME, DOCS_IMG / PLOT_NAME]


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
    steps = sum(len(loops_for(list(build_ops(c, device)), _runnable(c))) for c in configs)
    steps += len(args.resolutions) * len(SWEEP_OPS)
    plots = _plot_paths(args)
    with tqdm(total=steps, unit="loop", file=sys.stderr, disable=None) as progress:
        with MemoryProbe(device, MEMORY_WORKERS) as memory:
            sections = [_header(device, command, args.quick, check(memory))]
            for config in configs:
                sections.append(_benchmark_config(config, device, budgets, memory, progress, args.quick))
        if args.resolutions:
            rows = _sweep(args.resolutions, device, QUICK_SWEEP if args.quick else FULL_SWEEP, progress)
            sweep = _plot_sweep(rows, args.resolutions, plots)
            sections.append(_sweep_report(rows, args.resolutions, plots))
            if not args.quick and args.output is None and args.plot is None:
                _results.save(
                    _results.OPS_JSON, {"command": command, "machine": machine_description(device), "sweep": sweep}
                )
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
