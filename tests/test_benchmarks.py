"""The README's first command runs the operator benchmark: keep it runnable (a smoke run, not a
timing), with its NATTEN rows (or the note that NATTEN is missing), its resolution sweep and plot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _cases, ops
from benchmarks.plots import line_plot, scatter_plot

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"

try:
    import natten  # noqa: F401

    HAS_NATTEN = True
except ImportError:
    HAS_NATTEN = False


def _run_ops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ops", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Cells of the markdown table rows of ``text`` whose first cell starts with ``first_cell``."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith(f"| {first_cell}")]
    return [[cell.strip() for cell in row] for row in rows]


def test_operator_benchmark_quick_run(tmp_path: Path) -> None:
    report = tmp_path / "ops.md"
    result = _run_ops("--sizes", "b,c,e,g", "--output", str(report))
    text = report.read_text()
    assert text.strip() in result.stdout  # the table goes to stdout too
    for row in (
        "DWConv / F.conv2d, time",
        "DynamicDWConv / DWConv, time",
        "WindowAttention / timm Swin, time",
        "NeighborhoodAttention / its reference path, memory",
        "ACmix / its reference path, time",
        "ACmix / its reference path, memory",
        "KWConv2d 1x / nn.Conv2d, time",
        "NeighborhoodAttention / NATTEN NeighborhoodAttention2D, time",
    ):
        assert row in text
    for preset in ("LKA(C)", "ACmixWindowAttention", "UniFormerLocalMHRA", "MixingAttention", "XVolution", "CondConv"):
        assert f"| {preset}" in text, preset
    assert "| `halo_sdpa` |" in text and "| `window_sdpa` |" in text

    # NATTEN: measured against ours when installed, its version recorded; otherwise said so.
    (natten_ratio,) = _table_rows(text, "NeighborhoodAttention / NATTEN")
    if HAS_NATTEN:
        assert re.fullmatch(r"\d+\.\d{4}", natten_ratio[1]), natten_ratio
        assert natten_ratio[3] in ("PASS", "**MISS**") and "outputs differ by at most" in natten_ratio[4]
        assert re.search(r"NATTEN \d+\.\d+\.\d+, `na2d` backend `[\w-]+`", text)
    else:
        assert natten_ratio[3] == "not run" and "NATTEN not installed" in natten_ratio[4]

    # The sweep: every preset at each quick resolution, a positive time in each cell, and the plot.
    assert "## Time vs resolution" in text
    assert "| operator | path | 7x7 (ms) | 14x14 (ms) |" in text
    presets = ("DWConv", "DynamicDWConv", "InhomogeneousDWConv", "WindowAttention", "NeighborhoodAttention")
    for preset in (*presets, "GlobalAttention"):
        (row,) = [r for r in _table_rows(text, f"{preset}(") if len(r) == 4]  # the sweep's 4 columns
        assert all(float(cell) > 0 for cell in row[2:]), row
    plot = tmp_path / "ops_time_vs_resolution.png"
    assert plot.read_bytes().startswith(PNG)
    assert str(plot) in text


def test_operator_benchmark_says_when_natten_is_missing(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without NATTEN (as when ``import natten`` fails) the run goes on and says so."""
    monkeypatch.setattr(_cases, "_natten", lambda: None)
    report = tmp_path / "ops.md"
    ops.main(["--quick", "--sizes", "g", "--resolutions", "none", "--output", str(report)])
    text = report.read_text()
    assert text.strip() in capsys.readouterr().out
    assert "- NATTEN not installed (`pip install --no-build-isolation natten`)" in text
    (natten_ratio,) = _table_rows(text, "NeighborhoodAttention / NATTEN")
    assert natten_ratio[1:4] == ["—", "≤ 1/10", "not run"] and "NATTEN not installed" in natten_ratio[4]
    assert "| NeighborhoodAttention(C, 3, 7) | `halo_sdpa` |" in text  # ours is still measured
    assert "NATTEN 0" not in text  # no NATTEN row
    assert "Time vs resolution" not in text and not (tmp_path / "ops_time_vs_resolution.png").exists()


@pytest.mark.parametrize("args", [["--sizes", "a,z"], ["--resolutions", "28,14"], ["--resolutions", "x"]])
def test_bad_command_lines_are_refused(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        ops.main(args)
    assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_plots_write_png_files(tmp_path: Path) -> None:
    lines = line_plot(
        tmp_path / "sub" / "lines.png",
        {"a": ([14, 28, 56], [0.1, 0.4, 1.6]), "b": ([14, 28], [1.0, 2.0])},
        "side",
        "ms",
        "time",
        xticks=[14, 28, 56],
    )
    points = scatter_plot(tmp_path / "points.png", [4.5, 1.8], [310.0, 720.0], ["x", "y"], "GMACs", "img/s", "cost")
    for path in (lines, points):
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 5000


@pytest.mark.parametrize(
    "call",
    [
        lambda p: line_plot(p, {}, "x", "y", "t"),
        lambda p: line_plot(p, {"a": ([1, 2], [1.0])}, "x", "y", "t"),
        lambda p: line_plot(p, {"a": ([1, 2], [1.0, 0.0])}, "x", "y", "t"),  # 0 on a log axis
        lambda p: scatter_plot(p, [1.0], [2.0], ["a", "b"], "x", "y", "t"),
        lambda p: scatter_plot(p, [], [], [], "x", "y", "t"),
        lambda p: scatter_plot(p, [float("nan")], [1.0], ["a"], "x", "y", "t", log=False),
    ],
)
def test_plots_refuse_bad_data(tmp_path: Path, call) -> None:
    with pytest.raises(ValueError):
        call(tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
