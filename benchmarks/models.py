"""Model benchmark: zoo models against timm's own and against their reference paths.

Inference (``eval()``, ``torch.inference_mode()``, fp32, torch's default thread count) at 224 x 224,
batch 8 and batch 1, and one training step (forward and backward) at batch 8. For each model: the
median time of a call, images per second and the peak memory of a forward pass, each against a
baseline timed in the same interleaved loop: timm's own ``swin_tiny_patch4_window7_224``,
``convnext_tiny``, ``resnet18``, ``resnet50`` and ``mobilenetv2_100``, and, for families timm lacks,
the same model with every :class:`~unifiedops.Aggregation` forced onto its reference path.
Convolutional networks are also timed in ``channels_last`` memory format; the better format is
reported, and named. The ratios the library aims for are reported with their targets and
PASS/MISS, and a plot of FLOPs against measured throughput covers the whole zoo::

    python -m benchmarks.models [--quick] [--batch 8,1] [--device cpu|cuda] [--output PATH]
                                [--plot PATH] [--groups KEYS] [--no-plot]

A full run writes ``benchmarks/results/models.md`` and the plot ``zoo_throughput.png`` into
``benchmarks/results/`` and ``docs/img/`` (``--output`` puts both in its folder instead) and takes
about ten minutes on a quiet 2-core CPU; ``--quick`` (64 x 64 inputs, batch 2, a few models)
is a smoke test of well under a minute whose timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

import zoo
from benchmarks import _results
from benchmarks._harness import (
    Budget,
    Timing,
    machine_description,
    markdown_table,
    paired_ratio,
    resolve_device,
    time_interleaved,
)
from benchmarks._memory import MIB
from benchmarks._model_cases import ModelCase, ModelMemoryProbe, build_model, build_run
from benchmarks.plots import scatter_plot
from unifiedops.catalog import zoo_family
from unifiedops.flops import count_flops

__all__ = ["GROUPS", "Entry", "Group", "Target", "main", "plot_throughput"]

RESULTS = Path(__file__).parent / "results" / "models.md"
"""Where a full run writes its report."""

PLOT_NAME = "zoo_throughput.png"
"""File name of the plot, written beside the report."""

ROOT = Path(__file__).resolve().parent.parent

DOCS_IMG = ROOT / "docs" / "img"
"""Where a full run also writes its plot, for the documentation (mkdocs serves files under docs/ only)."""

ZOO_TABLE = Path(__file__).parent / "results" / "zoo.md"
"""The zoo's FLOPs at 224 x 224 (written by :mod:`benchmarks.zoo_table`), read for the plot."""

MEMORY_WORKERS = 2
"""Memory measurements run at once (after all timing loops, so that they do not disturb them)."""


@dataclass(frozen=True)
class Entry:
    """A model of a group.

    Attributes:
        key: Identifier used by the group's targets.
        model: Name for ``timm.create_model``.
        label: Name shown in the report.
        path: ``"auto"`` or ``"reference"`` (see :class:`benchmarks._model_cases.ModelCase`).
        conv: Whether it is a convolutional network, also timed in ``channels_last`` format.
        train: Whether a call is a training step rather than a forward pass.
        quick: Whether ``--quick`` runs it (when it runs the group).
    """

    key: str
    model: str
    label: str
    path: str = "auto"
    conv: bool = False
    train: bool = False
    quick: bool = True

    def cases(self, batch: int, size: int) -> list[ModelCase]:
        """The settings timed for this entry: channels-first, and channels-last for convolutional networks."""
        formats = (False, True) if self.conv else (False,)
        return [ModelCase(self.model, batch, size, self.path, cl, self.train) for cl in formats]


@dataclass(frozen=True)
class Target:
    """A ratio ``numerator / denominator``, with the bound the library aims for (or none: shown for information).

    Attributes:
        label: What it compares.
        metric: ``"time"`` (paired over the loop's rounds) or ``"memory"`` (peak memory of a forward pass).
        numerator: Key of the entry on top.
        denominator: Key of the entry below.
        target: Upper bound as written (``"1.05"``, ``"1/5"``), or ``None``.
        every_batch: Whether the bound applies at every batch; otherwise only at the group's first
            (largest) batch, and the ratio at other batches is shown for information.
        same_output: Whether both compute the same function (the difference of their outputs is shown).
    """

    label: str
    metric: Literal["time", "memory"]
    numerator: str
    denominator: str
    target: str | None = None
    every_batch: bool = False
    same_output: bool = False

    @property
    def bound(self) -> float | None:
        """The target as a number."""
        return None if self.target is None else float(Fraction(self.target))


@dataclass(frozen=True)
class Group:
    """Models timed together, in one interleaved loop per batch size.

    Attributes:
        key: Short name (``--groups``).
        title: What it compares.
        entries: The models.
        targets: The ratios reported.
        batches: Batch sizes it runs at, or ``None`` for the run's ``--batch``.
        size: Input height and width of a full run.
        quick_size: Input size of a ``--quick`` run (some models need more than 64).
        quick: Whether ``--quick`` runs it.
        slow: Whether a call is slow enough that the loop gets fewer rounds.
        note: Why it departs from the usual setting, shown in the report.
    """

    key: str
    title: str
    entries: tuple[Entry, ...]
    targets: tuple[Target, ...] = ()
    batches: tuple[int, ...] | None = None
    size: int = 224
    quick_size: int = 64
    quick: bool = True
    slow: bool = False
    note: str = ""


def _vs_reference(key: str, model: str, family: str) -> Group:
    return Group(
        key,
        f"{model} against its reference path ({family}; timm has no such model)",
        (Entry("fast", model, model), Entry("reference", model, f"{model} (reference)", path="reference")),
        (
            Target(f"{model} / its reference path", "time", "fast", "reference", same_output=True),
            Target(f"{model} / its reference path", "memory", "fast", "reference"),
        ),
        batches=(1,),
        quick=False,
        slow=True,
        note="Batch 1 only: the reference path at batch 8 is slow and memory hungry.",
    )


GROUPS: dict[str, Group] = {
    g.key: g
    for g in (
        Group(
            "swin",
            "Swin-T and DWNet-T against timm's Swin-T",
            (
                Entry("zoo_swin", "swin_tiny", "zoo swin_tiny"),
                Entry("timm_swin", "swin_tiny_patch4_window7_224", "timm swin_tiny_patch4_window7_224"),
                Entry("dwnet", "dwnet_tiny", "dwnet_tiny"),
                Entry("dynamic_dwnet", "dynamic_dwnet_tiny", "dynamic_dwnet_tiny"),
            ),
            (
                Target("zoo swin_tiny / timm swin_tiny_patch4_window7_224", "time", "zoo_swin", "timm_swin", "1.05"),
                Target("dynamic_dwnet_tiny / dwnet_tiny", "time", "dynamic_dwnet", "dwnet", "1.3"),
                Target("dwnet_tiny / timm swin_tiny", "time", "dwnet", "timm_swin", "1.0"),
                Target("zoo swin_tiny / timm swin_tiny_patch4_window7_224", "memory", "zoo_swin", "timm_swin"),
                Target("dwnet_tiny / timm swin_tiny", "memory", "dwnet", "timm_swin"),
            ),
        ),
        Group(
            "convnext",
            "ConvNeXt-T against timm's",
            (
                Entry("zoo", "uo_convnext_tiny", "zoo uo_convnext_tiny", conv=True),
                Entry("timm", "convnext_tiny", "timm convnext_tiny", conv=True),
            ),
            (
                Target("zoo uo_convnext_tiny / timm convnext_tiny", "time", "zoo", "timm", "1.05"),
                Target("zoo uo_convnext_tiny / timm convnext_tiny", "memory", "zoo", "timm"),
            ),
            quick=False,
        ),
        Group(
            "resnet18",
            "KernelWarehouse ResNet-18 against timm's ResNet-18",
            (
                Entry("kw", "kw_resnet18_1x", "kw_resnet18_1x", conv=True),
                Entry("timm", "resnet18", "timm resnet18", conv=True),
            ),
            (
                Target("kw_resnet18_1x / timm resnet18", "time", "kw", "timm", "1.6", every_batch=True),
                Target("kw_resnet18_1x / timm resnet18", "memory", "kw", "timm"),
            ),
        ),
        Group(
            "mobilenetv2",
            "KernelWarehouse MobileNetV2 against timm's",
            (
                Entry("kw", "kw_mobilenetv2_100_1x", "kw_mobilenetv2_100_1x", conv=True),
                Entry("timm", "mobilenetv2_100", "timm mobilenetv2_100", conv=True),
            ),
            (
                Target("kw_mobilenetv2_100_1x / timm mobilenetv2_100", "time", "kw", "timm"),
                Target("kw_mobilenetv2_100_1x / timm mobilenetv2_100", "memory", "kw", "timm"),
            ),
            quick=False,
        ),
        Group(
            "resnet50",
            "ACmix ResNet-50 against its reference path; ResNet-50 variants against timm's",
            (
                Entry("acmix", "acmix_resnet50", "acmix_resnet50"),
                Entry("acmix_reference", "acmix_resnet50", "acmix_resnet50 (reference)", path="reference"),
                Entry("kw", "kw_resnet50_1x", "kw_resnet50_1x", quick=False),
                Entry("timm", "resnet50", "timm resnet50", quick=False),
            ),
            (
                Target(
                    "acmix_resnet50 fast path / reference path",
                    "time",
                    "acmix",
                    "acmix_reference",
                    "1/5",
                    same_output=True,
                ),
                Target("acmix_resnet50 fast path / reference path", "memory", "acmix", "acmix_reference", "1/4"),
                Target("acmix_resnet50 / timm resnet50", "time", "acmix", "timm"),
                Target("kw_resnet50_1x / timm resnet50", "time", "kw", "timm"),
            ),
            batches=(1,),
            quick_size=128,
            slow=True,
            note=(
                "Batch 1 only: acmix_resnet50's reference path at batch 8 takes over ten seconds a call. "
                "Channels-first only (the reference path has no use for channels-last)."
            ),
        ),
        Group(
            "training",
            "Training step (forward and backward): DWNet-T against timm's Swin-T",
            (
                Entry("dwnet", "dwnet_tiny", "dwnet_tiny (train step)", train=True),
                Entry("timm_swin", "swin_tiny_patch4_window7_224", "timm swin_tiny (train step)", train=True),
            ),
            (Target("training step: dwnet_tiny / timm swin_tiny", "time", "dwnet", "timm_swin", "1.0"),),
            batches=(8,),
            slow=True,
            note="One call is `zero_grad`, forward and backward of `logsumexp(logits).mean()` in `train()` mode.",
        ),
        _vs_reference("van", "van_b0", "LKA"),
        _vs_reference("mixformer", "mixformer_b0", "MixFormer"),
        _vs_reference("uniformer", "uniformer_small", "UniFormer"),
        _vs_reference("i_dwnet", "i_dynamic_dwnet_tiny", "inhomogeneous dynamic DW conv"),
    )
}
"""The model comparisons, by key."""

QUICK_PLOT_MODELS = ("van_b0",)
"""Zoo models added to the plot of a ``--quick`` run (besides those its groups time)."""


@dataclass(frozen=True)
class Budgets:
    """Timing budgets: for ordinary loops, loops holding a slow call, and the plot's one-model loops."""

    normal: Budget
    slow: Budget
    plot: Budget


FULL = Budgets(
    normal=Budget(seconds=4.0, min_rounds=3, max_rounds=20),
    slow=Budget(seconds=4.0, min_rounds=3, max_rounds=10),
    plot=Budget(seconds=1.0, min_rounds=2, max_rounds=10),
)
QUICK = Budgets(
    normal=Budget(seconds=0.05, min_rounds=2, max_rounds=3),
    slow=Budget(seconds=0.05, min_rounds=1, max_rounds=2),
    plot=Budget(seconds=0.02, min_rounds=1, max_rounds=2),
)


@dataclass
class ModelRow:
    """One model's line in a group's table.

    Attributes:
        entry: The model.
        case: The setting reported (the better memory format).
        timing: Its timing.
        format_note: Which formats were timed, and how they compared.
        peak_bytes: Peak memory of a forward pass (filled in after the timing loops; ``None`` for training).
    """

    entry: Entry
    case: ModelCase
    timing: Timing
    format_note: str
    peak_bytes: int | None = None

    @property
    def images_per_s(self) -> float:
        """Images per second at the median time."""
        return self.case.batch / (self.timing.median_ms / 1e3)

    def cells(self) -> list[str]:
        """The row, formatted."""
        peak = "—" if self.peak_bytes is None else f"{self.peak_bytes / MIB:.1f}"
        return [
            self.entry.label,
            f"`{self.case.path}`",
            self.format_note,
            f"{self.timing.median_ms:.1f}",
            f"{self.images_per_s:.1f}",
            str(self.timing.calls),
            peak,
        ]


@dataclass
class GroupRun:
    """A group timed at one batch size.

    Attributes:
        group: The group.
        batch: Batch size.
        size: Input size.
        rows: One per entry, by key.
        timings: Every timed setting, by ``(entry key, channels_last)``.
        primary: Whether this is the group's first batch size, where its targets apply.
        differences: Largest absolute output difference of each same-output time target, by label.
    """

    group: Group
    batch: int
    size: int
    rows: dict[str, ModelRow]
    timings: dict[tuple[str, bool], Timing]
    primary: bool = True
    differences: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RatioRow:
    """One measured ratio.

    Attributes:
        label: What it compares.
        batch: Batch size.
        size: Input size.
        value: Measured ratio.
        target: The bound as written, or ``None`` (shown for information).
        note: The two values compared, and more.
    """

    label: str
    batch: int
    size: int
    value: float
    target: str | None
    note: str

    @property
    def result(self) -> str:
        """``PASS``, ``**MISS**`` or ``info``."""
        if self.target is None:
            return "info"
        return "PASS" if self.value <= float(Fraction(self.target)) else "**MISS**"

    def cells(self) -> list[str]:
        """The row, formatted."""
        target = "—" if self.target is None else f"≤ {self.target}"
        return [self.label, str(self.batch), f"{self.size}²", f"{self.value:.3f}", target, self.result, self.note]


def _format_note(entry: Entry, timings: dict[bool, Timing]) -> tuple[bool, str]:
    """The better memory format of ``entry`` and a note on how the two compared."""
    if len(timings) == 1:
        return False, "channels-first"
    best = min(timings, key=lambda cl: timings[cl].median_ms)
    other = timings[not best]
    factor = other.median_ms / timings[best].median_ms
    name = "channels-last" if best else "channels-first"
    return best, f"{name} ({factor:.2f}× faster than {'channels-first' if best else 'channels-last'})"


def _run_group(group: Group, batch: int, size: int, primary: bool, device: torch.device, budgets: Budgets) -> GroupRun:
    cases = {(e.key, c.channels_last): c for e in group.entries for c in e.cases(batch, size)}
    runs = {f"{key}|{int(cl)}": build_run(case, device) for (key, cl), case in cases.items()}
    budget = budgets.slow if group.slow else budgets.normal
    train = any(e.train for e in group.entries)
    with torch.enable_grad() if train else torch.inference_mode():
        timed, outputs = time_interleaved(runs, device, budget)
    timings = {(key, cl): timed[f"{key}|{int(cl)}"] for key, cl in cases}
    rows = {}
    for entry in group.entries:
        best, note = _format_note(entry, {cl: t for (key, cl), t in timings.items() if key == entry.key})
        rows[entry.key] = ModelRow(entry, cases[entry.key, best], timings[entry.key, best], note)
    differences = {}
    for target in group.targets:
        if target.same_output and target.metric == "time":
            top = outputs[f"{target.numerator}|{int(rows[target.numerator].case.channels_last)}"]
            bottom = outputs[f"{target.denominator}|{int(rows[target.denominator].case.channels_last)}"]
            differences[target.label] = (top.float() - bottom.float()).abs().max().item()
    return GroupRun(group, batch, size, rows, timings, primary, differences)


def _ratio_rows(run: GroupRun) -> list[RatioRow]:
    rows = []
    for target in run.group.targets:
        top, bottom = run.rows[target.numerator], run.rows[target.denominator]
        bound = target.target if run.primary or target.every_batch else None
        if target.metric == "time":
            value = paired_ratio(
                run.timings[target.numerator, top.case.channels_last],
                run.timings[target.denominator, bottom.case.channels_last],
            )
            note = f"medians {top.timing.median_ms:.1f} / {bottom.timing.median_ms:.1f} ms"
            if target.label in run.differences:
                note += f"; outputs differ by at most {run.differences[target.label]:.1e}"
        else:
            if top.peak_bytes is None or bottom.peak_bytes is None:
                continue
            value = top.peak_bytes / bottom.peak_bytes
            note = f"{top.peak_bytes / MIB:.1f} / {bottom.peak_bytes / MIB:.1f} MiB"
        label = f"{target.label}, {target.metric}"
        rows.append(RatioRow(label, run.batch, run.size, value, bound, note))
    return rows


def _measure_memory(runs: Sequence[GroupRun], device: torch.device, progress: tqdm) -> None:
    """Fill in the peak memory of every inference row, one fresh process each."""
    with ModelMemoryProbe(device, MEMORY_WORKERS) as memory:
        futures = {
            (i, key): memory.case(row.case)
            for i, run in enumerate(runs)
            for key, row in run.rows.items()
            if not row.case.train
        }
        for (i, key), future in futures.items():
            runs[i].rows[key].peak_bytes = future.result()
            progress.update()


# --- the plot -----------------------------------------------------------------------------------


def _zoo_table_flops() -> dict[str, float]:
    """FLOPs (MACs) at 224 x 224 of every model in ``benchmarks/results/zoo.md``."""
    if not ZOO_TABLE.exists():
        return {}
    flops = {}
    for line in ZOO_TABLE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and (name := re.fullmatch(r"`(\w+)`", cells[0])):
            if value := re.fullmatch(r"([\d.]+)G", cells[4]):
                flops[name.group(1)] = float(value.group(1)) * 1e9
    return flops


def _flops(names: Sequence[str], size: int) -> dict[str, float]:
    """FLOPs at ``size`` x ``size``: from the zoo table at 224, else counted."""
    known = _zoo_table_flops() if size == 224 else {}
    flops = {}
    for name in names:
        if name not in known:
            model = build_model(ModelCase(name, 1, size), torch.device("cpu"))
            known[name] = count_flops(model, input_size=(1, 3, size, size))
        flops[name] = known[name]
    return flops


def plot_throughput(points: Mapping[str, tuple[float, float]], batch: int, size: int, threads: int, path: Path) -> Path:
    """FLOPs against measured images per second, one labelled point per model, coloured by family.

    Args:
        points: ``{model: (flops, images_per_s)}``; FLOPs are multiply-adds per image.
        batch: The batch size the throughput was measured at.
        size: The input side the FLOPs and throughput are for.
        threads: The CPU threads (or, on a GPU, any count; it is only written in the title).
        path: The PNG file to write.

    Returns:
        The path written.
    """
    names = sorted(points)
    families = [(family.name if (family := zoo_family(name)) else name) for name in names]
    return scatter_plot(
        path,
        [points[name][0] / 1e9 for name in names],
        [points[name][1] for name in names],
        names,
        f"FLOPs (G multiply-adds per image, {size}×{size})",
        f"measured images/s (batch {batch}, fp32 inference)",
        f"unifiedops zoo: FLOPs against measured throughput ({threads} threads)",
        groups=families,
    )


def _throughput(
    names: Sequence[str],
    batch: int,
    size: int,
    runs: Sequence[GroupRun],
    device: torch.device,
    budgets: Budgets,
    progress: tqdm,
) -> dict[str, float]:
    """Images per second of each model at ``batch``: from the groups' loops where they timed it, else timed alone."""
    known = {}
    for run in runs:
        if run.batch == batch and run.size == size:
            for row in run.rows.values():
                if row.case.path == "auto" and not row.case.train:
                    known.setdefault(row.case.model, row.images_per_s)
    speeds = {}
    for name in names:
        if name not in known:
            run = build_run(ModelCase(name, batch, size), device)
            with torch.inference_mode():
                timings, _ = time_interleaved({name: run}, device, budgets.plot)
            del run
            known[name] = batch / (timings[name].median_ms / 1e3)
        speeds[name] = known[name]
        progress.update()
    return speeds


# --- the report ---------------------------------------------------------------------------------


def _header(device: torch.device, command: str, quick: bool) -> str:
    facts = "\n".join(f"- {line}" for line in machine_description(device))
    mode = "quick (smoke test: tiny inputs, few repetitions, timings meaningless)" if quick else "full"
    source = "`torch.cuda.max_memory_allocated`" if device.type == "cuda" else "the torch profiler's allocation events"
    return f"""# Model benchmark

{facts}
- Run: {mode}; `{command}`

Inference is a forward pass in `torch.inference_mode()`, fp32, models in `eval()`, on a fixed random
input; a training step is `zero_grad`, forward and backward in `train()` mode. The models of a group
are timed in one interleaved loop per batch size after warm-up (A B C, C B A, ...), and convolutional
networks in both memory formats, of which the faster is reported and named. Times are medians; a time
ratio is the median over the loop's rounds of the ratio of the two samples of a round, so that load
changing between rounds cancels out. Peak memory is the most memory a forward pass holds above its
parameters and input (output included), after a warm-up call, in a fresh process per model, from
{source}. "Reference path" means every `unifiedops.Aggregation` in the model set to `path="reference"`
(the literal unfold-multiply-sum formula). Targets apply at the group's first batch size (batch 8
unless the group says otherwise); ratios marked "info" have no target.
"""


def _group_section(run: GroupRun) -> str:
    table = markdown_table(
        ["model", "path", "memory format", "median time (ms)", "images/s", "calls timed", "peak memory (MiB)"],
        [row.cells() for row in run.rows.values()],
        "lllrrrr",
    )
    note = f"\n{run.group.note}\n" if run.group.note else ""
    return f"## {run.group.title}: batch {run.batch}, {run.size}×{run.size}\n{note}\n{table}\n"


def _ratio_section(rows: Sequence[RatioRow]) -> str:
    table = markdown_table(
        ["measurement", "batch", "input", "measured", "target", "result", "note"],
        [row.cells() for row in rows],
        "lrlrlll",
    )
    return f"## Targets\n\n{table}\n"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _plot_section(
    flops: dict[str, float], speeds: dict[str, float], batch: int, size: int, plots: Sequence[Path]
) -> str:
    rows = [
        [f"`{name}`", f"{flops[name] / 1e9:.3f}", f"{speeds[name]:.1f}", f"{speeds[name] * flops[name] / 1e9:.1f}"]
        for name in sorted(flops, key=flops.get)
    ]
    table = markdown_table(["model", "GFLOPs", "images/s", "GMAC/s achieved"], rows, "lrrr")
    written = ", ".join(f"`{_relative(p)}`" for p in plots)
    image = f"Plot: {written}.\n\n" if plots else "Plot not written (quick runs write it next to `--output`).\n\n"
    return (
        f"## FLOPs against measured throughput (batch {batch}, {size}×{size})\n\n"
        f"FLOPs are multiply-adds per image (`unifiedops.flops.count_flops`, as in the zoo table); "
        f"images/s from the loops above where a group timed the model, else from a loop of its own.\n\n"
        f"{image}{table}\n"
    )


# --- the command --------------------------------------------------------------------------------


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be comma-separated positive integers, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"--batch must be comma-separated positive integers, got {text!r}")
    return batches


def _group_keys(text: str) -> list[str]:
    keys = [key.strip() for key in text.split(",")]
    unknown = [key for key in keys if key not in GROUPS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown group {unknown}; choose from {', '.join(GROUPS)}")
    return keys


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs, batch 2, few models: a smoke test")
    parser.add_argument(
        "--batch", type=_batches, default=None, help="inference batch sizes, comma-separated (default 8,1; quick: 2)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown file to write (default: {_relative(RESULTS)} for full runs; none with --quick)",
    )
    parser.add_argument(
        "--groups",
        type=_group_keys,
        default=None,
        help=f"comparisons to run, comma-separated, from {', '.join(GROUPS)} (default: all; quick: a few)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"PNG file of the plot (default: {PLOT_NAME} beside --output; for full runs without --output, "
        "in benchmarks/results/ and docs/img/)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the FLOPs-against-throughput plot and its table")
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> list[tuple[Group, int, int, bool]]:
    """The loops to run: (group, batch, size, whether the group's targets apply at this batch)."""
    keys = args.groups or [key for key, g in GROUPS.items() if g.quick or not args.quick]
    batches = args.batch or ((2,) if args.quick else (8, 1))
    plan = []
    for group in (GROUPS[key] for key in keys):
        size = group.quick_size if args.quick else group.size
        if args.quick:
            entries = tuple(e for e in group.entries if e.quick)
            kept = {e.key for e in entries}
            targets = tuple(t for t in group.targets if {t.numerator, t.denominator} <= kept)
            group = replace(group, entries=entries, targets=targets)
        group_batches = batches if args.quick or group.batches is None else group.batches
        plan.extend((group, batch, size, batch == group_batches[0]) for batch in group_batches)
    return plan


def _plot_paths(args: argparse.Namespace) -> list[Path]:
    """Where to write the plot: ``--plot``, else beside ``--output``, else (full runs) the results and docs folders."""
    if args.plot is not None:
        return [args.plot]
    if args.output is not None:
        return [args.output.parent / PLOT_NAME]
    return [] if args.quick else [RESULTS.parent / PLOT_NAME, DOCS_IMG / PLOT_NAME]


def _plot_models(args: argparse.Namespace, plan: Sequence[tuple[Group, int, int, bool]], size: int) -> list[str]:
    """Every zoo model; in a quick run, a few small ones and those the groups time at the plot's size."""
    zoo_models = set(zoo.list_models())
    if not args.quick:
        return sorted(zoo_models)
    timed = {e.model for g, _, s, _ in plan if s == size for e in g.entries if e.path == "auto" and not e.train}
    return sorted((timed & zoo_models) | set(QUICK_PLOT_MODELS))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its report and write it (and the plot) to files.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 (missed targets are reported, not errors).
    """
    args = _parse(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    budgets = QUICK if args.quick else FULL
    command = " ".join(["python -m benchmarks.models", *(sys.argv[1:] if argv is None else argv)])
    output = args.output or (None if args.quick else RESULTS)
    plan = _plan(args)
    plot_batch = 1 if not args.quick else (args.batch or (2,))[-1]
    plot_size = 64 if args.quick else 224
    plot_models = [] if args.no_plot else _plot_models(args, plan, plot_size)
    inference_rows = sum(len(g.entries) for g, _, _, _ in plan if not any(e.train for e in g.entries))
    header = _header(device, command, args.quick)
    runs: list[GroupRun] = []
    with tqdm(total=len(plan) + inference_rows + len(plot_models), file=sys.stderr, disable=None) as progress:
        for group, batch, size, primary in plan:
            progress.set_description(f"{group.key}, batch {batch}")
            loop_started = time.perf_counter()
            runs.append(_run_group(group, batch, size, primary, device, budgets))
            tqdm.write(f"{group.key}, batch {batch}: {time.perf_counter() - loop_started:.0f} s", file=sys.stderr)
            progress.update()
        speeds = {}
        if plot_models:
            progress.set_description("plot")
            phase_started = time.perf_counter()
            speeds = _throughput(plot_models, plot_batch, plot_size, runs, device, budgets, progress)
            tqdm.write(f"throughput for the plot: {time.perf_counter() - phase_started:.0f} s", file=sys.stderr)
        progress.set_description("peak memory")
        phase_started = time.perf_counter()
        _measure_memory(runs, device, progress)
        tqdm.write(f"peak memory: {time.perf_counter() - phase_started:.0f} s", file=sys.stderr)
    ratios = [row for run in runs for row in _ratio_rows(run)]
    ratios.sort(key=lambda r: r.target is None)
    sections = [header, _ratio_section(ratios), *(_group_section(run) for run in runs)]
    if plot_models:
        flops = _flops(plot_models, plot_size)
        plots = _plot_paths(args)
        threads = torch.get_num_threads()
        for path in plots:
            plot_throughput({n: (flops[n], speeds[n]) for n in plot_models}, plot_batch, plot_size, threads, path)
        if output == RESULTS:
            _results.save(
                _results.MODELS_JSON,
                {
                    "command": command,
                    "machine": machine_description(device),
                    "batch": plot_batch,
                    "size": plot_size,
                    "threads": threads,
                    "images_per_s": {n: round(speeds[n], 3) for n in plot_models},
                },
            )
        sections.append(_plot_section(flops, speeds, plot_batch, plot_size, plots))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    sections.append(f"Benchmark wall time: {time.perf_counter() - started:.0f} s; load average at the end: {load}.\n")
    report = "\n".join(sections)
    print(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
