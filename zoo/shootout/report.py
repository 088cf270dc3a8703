"""The shoot-out's report: per-mixer summary over seeds, as a markdown table, CSV, JSON and a PNG plot."""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown_summary", "plot_accuracy_vs_flops", "summarize", "write_report"]

SUMMARY_COLUMNS = (
    "mixer",
    "seeds",
    "top1_mean",
    "top1_std",
    "top1_min",
    "params",
    "flops",
    "throughput",
    "train_seconds",
)
RUN_COLUMNS = ("mixer", "seed", "top1", "params", "flops", "throughput", "train_seconds", "steps", "world_size")


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per mixer, in first-seen order: top-1 mean, sample standard deviation and minimum over its seeds,
    parameters, FLOPs, and the mean throughput and training time.

    Args:
        runs: Run results (from [`run_one`][zoo.shootout.runner.run_one]).

    Returns:
        Rows with the keys of ``SUMMARY_COLUMNS``; ``top1_std`` is 0 for a single seed.
    """
    by_mixer: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_mixer.setdefault(run["mixer"], []).append(run)
    rows = []
    for mixer, group in by_mixer.items():
        top1 = [r["top1"] for r in group]
        rows.append(
            {
                "mixer": mixer,
                "seeds": len(group),
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "top1_min": min(top1),
                "params": group[0]["params"],
                "flops": group[0]["flops"],
                "throughput": statistics.fmean(r["throughput"] for r in group),
                "train_seconds": statistics.fmean(r["train_seconds"] for r in group),
            }
        )
    return rows


def markdown_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a markdown table.

    Args:
        rows: From [`summarize`][zoo.shootout.report.summarize].

    Returns:
        The table, without a trailing newline.
    """
    from unifiedops.cli import markdown_table

    header = ["mixer", "top-1 % (mean ± std)", "min", "seeds", "params", "MFLOPs", "images/s", "train s"]
    cells = [
        [
            r["mixer"],
            f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}",
            f"{r['top1_min']:.2f}",
            str(r["seeds"]),
            f"{r['params'] / 1e3:.1f}K",
            f"{r['flops'] / 1e6:.2f}",
            f"{r['throughput']:.0f}",
            f"{r['train_seconds']:.1f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells, align="lrrrrrrr")


def plot_accuracy_vs_flops(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Top-1 against FLOPs, one point per mixer with its standard deviation over seeds as an error bar.

    Args:
        rows: From [`summarize`][zoo.shootout.report.summarize].
        path: The PNG to write.
        title: The plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in rows:
        x = row["flops"] / 1e6
        axes.errorbar(x, row["top1_mean"], yerr=row["top1_std"], fmt="o", capsize=3)
        axes.annotate(row["mixer"], (x, row["top1_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("MFLOPs (multiply-accumulates per image)")
    axes.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def write_report(
    out_dir: str | os.PathLike,
    runs: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> str:
    """Write ``summary.md``, ``runs.csv``, ``summary.csv``, ``shootout.json`` and ``accuracy_vs_flops.png``.

    Args:
        out_dir: The shoot-out's folder.
        runs: Run results.
        rows: Their summary, from [`summarize`][zoo.shootout.report.summarize].
        meta: The configuration (backbone, recipe, data, mixers, seeds), stored in the JSON.

    Returns:
        The markdown table.
    """
    out = Path(out_dir)
    table = markdown_summary(rows)
    (out / "summary.md").write_text(table + "\n")
    for name, columns, records in (("runs.csv", RUN_COLUMNS, runs), ("summary.csv", SUMMARY_COLUMNS, rows)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
    (out / "shootout.json").write_text(json.dumps({**meta, "summary": list(rows), "runs": list(runs)}, indent=1))
    plot_accuracy_vs_flops(rows, out / "accuracy_vs_flops.png", title=str(meta.get("data", "")))
    return table
