"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed).

One function per kind of plot; each writes one PNG file and returns its path::

    line_plot("time.png", {"DWConv": ([14, 28, 56], [0.1, 0.4, 1.6])}, "resolution", "ms", "Time")
    scatter_plot("flops.png", [4.5, 1.8], [310.0, 720.0], ["swin_tiny", "resnet18"], "GMACs", "images/s", "Cost")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

__all__ = ["line_plot", "scatter_plot"]

DPI = 120
SIZE = (7.0, 4.8)


def _check_points(name: str, xs: Sequence[float], ys: Sequence[float], log: bool) -> None:
    if len(xs) != len(ys):
        raise ValueError(f"{name}: xs and ys differ in length ({len(xs)} != {len(ys)})")
    if not xs:
        raise ValueError(f"{name}: no points to plot")
    for value in (*xs, *ys):
        if not math.isfinite(value) or (log and value <= 0):
            raise ValueError(f"{name}: values must be finite{' and positive on log axes' if log else ''}, got {value}")


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, format="png")
    plt.close(figure)
    return path


def line_plot(
    path: str | os.PathLike[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    log: bool = True,
    xticks: Sequence[float] | None = None,
) -> Path:
    """One line with markers per series, e.g. time against resolution for each operator.

    Args:
        path: PNG file to write (its folder is created).
        series: ``{label: (xs, ys)}``, one line each, in legend order.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        title: Title of the plot.
        log: Log scale on both axes (then every value must be positive).
        xticks: Tick positions of the x axis, labelled with their values (default: matplotlib's).

    Returns:
        The path written.

    Raises:
        ValueError: If ``series`` is empty, or a series has no points, ``xs`` and ``ys`` of
            different lengths, or a non-finite (or, with ``log``, non-positive) value.
    """
    if not series:
        raise ValueError("series must hold at least one (xs, ys) pair")
    for label, (xs, ys) in series.items():
        _check_points(f"series {label!r}", xs, ys, log)
    figure, axes = plt.subplots(figsize=SIZE)
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    if log:
        axes.set_xscale("log")
        axes.set_yscale("log")
    if xticks is not None:
        axes.set_xticks(list(xticks), [f"{t:g}" for t in xticks])
        axes.xaxis.set_minor_locator(NullLocator())  # log axes would add unlabelled minor ticks
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def scatter_plot(
    path: str | os.PathLike[str],
    xs: Sequence[float],
    ys: Sequence[float],
    labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    log: bool = True,
    groups: Sequence[str] | None = None,
) -> Path:
    """One labelled point per item, e.g. FLOPs against measured throughput for each model.

    Args:
        path: PNG file to write (its folder is created).
        xs: x of each point.
        ys: y of each point.
        labels: Text written beside each point.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        title: Title of the plot.
        log: Log scale on both axes (then every value must be positive).
        groups: The group of each point (e.g. its model family): one colour and marker per group,
            with a legend. ``None`` draws every point alike.

    Returns:
        The path written.

    Raises:
        ValueError: If there are no points, ``xs``, ``ys``, ``labels`` (and ``groups``) differ in
            length, or a value is non-finite (or, with ``log``, non-positive).
    """
    _check_points("scatter_plot", xs, ys, log)
    if len(labels) != len(xs):
        raise ValueError(f"scatter_plot: labels and xs differ in length ({len(labels)} != {len(xs)})")
    if groups is not None and len(groups) != len(xs):
        raise ValueError(f"scatter_plot: groups and xs differ in length ({len(groups)} != {len(xs)})")
    figure, axes = plt.subplots(figsize=(10, 7) if groups is not None else SIZE)
    if groups is None:
        axes.scatter(xs, ys, s=18)
    else:
        for i, group in enumerate(sorted(set(groups))):
            members = [j for j, g in enumerate(groups) if g == group]
            axes.scatter(
                [xs[j] for j in members],
                [ys[j] for j in members],
                s=30,
                c=f"C{i % 10}",
                marker="osD^v"[i // 10 % 5],  # colours repeat after ten groups; markers keep them apart
                label=group,
            )
        axes.legend(fontsize="x-small", ncol=2, loc="lower left")
    for x, y, label in zip(xs, ys, labels, strict=True):
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize="x-small")
    if log:
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis in (axes.xaxis, axes.yaxis):
            # Plain numbers (0.5, 2, 10) read better than 10^x on axes spanning two decades.
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    return _save(figure, path)
