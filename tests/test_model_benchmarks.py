"""The model benchmark runs and writes a well-formed report and plot (a smoke run, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import models
from benchmarks._harness import Timing
from benchmarks._model_cases import ModelCase, build_model, build_run, force_path

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULTS = {"PASS", "**MISS**", "info"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    report = tmp_path_factory.mktemp("models") / "models.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.models", "--quick", "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, report


def _tables(text: str, header_start: str) -> list[list[list[str]]]:
    """Every markdown table whose header starts with ``header_start``: rows of cells, header and rule included."""
    lines = text.splitlines()
    tables = []
    for start in (i for i, line in enumerate(lines) if line.startswith(header_start)):
        rows = []
        for line in lines[start:]:
            if not line.startswith("|"):
                break
            assert line.endswith(" |"), line
            rows.append([cell.strip() for cell in line[1:-1].split(" | ")])
        tables.append(rows)
    assert tables, header_start
    return tables


def _table(text: str, header_start: str) -> list[list[str]]:
    """The one table whose header starts with ``header_start``."""
    (table,) = _tables(text, header_start)
    return table


def test_quick_run_writes_well_formed_targets_table(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, report = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    assert text.strip() in result.stdout  # the report is also printed
    assert "- CPU: " in text and "- Run: quick" in text  # the machine's description
    rows = _table(text, "| measurement |")
    header, rule, body = rows[0], rows[1], rows[2:]
    assert header == ["measurement", "batch", "input", "measured", "target", "result", "note"]
    assert len(rule) == len(header) and all(set(cell) <= set("-:") for cell in rule)
    assert all(len(row) == len(header) for row in body)
    assert {row[5] for row in body} <= RESULTS
    for row in body:
        float(row[3])  # the measured ratio is a number
        assert (row[4] == "—") == (row[5] == "info"), row
    labels = {row[0] for row in body if row[5] != "info"}
    assert labels == {
        "zoo swin_tiny / timm swin_tiny_patch4_window7_224, time",
        "dynamic_dwnet_tiny / dwnet_tiny, time",
        "dwnet_tiny / timm swin_tiny, time",
        "kw_resnet18_1x / timm resnet18, time",
        "acmix_resnet50 fast path / reference path, time",
        "acmix_resnet50 fast path / reference path, memory",
        "training step: dwnet_tiny / timm swin_tiny, time",
    }


def test_quick_run_model_tables_have_time_throughput_and_memory(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, report = quick_run
    text = report.read_text(encoding="utf-8")
    tables = _tables(text, "| model | path | memory format |")
    assert len(tables) == 4  # swin, resnet18, resnet50 (acmix), training
    rows = []
    for table in tables:
        assert table[0][3:] == ["median time (ms)", "images/s", "calls timed", "peak memory (MiB)"]
        assert all(len(row) == len(table[0]) for row in table)
        rows += table[2:]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4]) > 0 and int(row[5]) >= 1
        if "train step" in row[0]:
            assert row[6] == "—"
        else:
            assert float(row[6]) > 0, row  # inference rows have a measured peak
    conv = next(row for row in rows if row[0] == "timm resnet18")
    assert conv[2].startswith(("channels-last (", "channels-first (")), conv  # both formats timed, the better named


def test_quick_run_writes_png_plot(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, report = quick_run
    plot = report.parent / models.PLOT_NAME
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert f"Plot: `{plot}`." in report.read_text(encoding="utf-8")
    flops_rows = _table(report.read_text(encoding="utf-8"), "| model | GFLOPs |")
    assert "`van_b0`" in {row[0] for row in flops_rows}


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--batch", "a,1"], ["--groups", "nope"], ["--bogus"]])
def test_bad_arguments_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        models.main(argv)
    assert excinfo.value.code == 2


def test_plan_runs_targets_at_their_batches() -> None:
    plan = models._plan(models._parse([]))
    loops = {(group.key, batch): (size, primary) for group, batch, size, primary in plan}
    assert loops[("swin", 8)] == (224, True) and loops[("swin", 1)] == (224, False)
    assert ("resnet50", 1) in loops and ("resnet50", 8) not in loops  # reference path: batch 1 only
    assert ("training", 8) in loops and ("training", 1) not in loops
    quick = models._plan(models._parse(["--quick"]))
    assert {batch for _, batch, _, _ in quick} == {2}
    assert all(entry.quick for group, _, _, _ in quick for entry in group.entries)


def test_zoo_table_flops_are_read() -> None:
    flops = models._zoo_table_flops()
    assert set(flops) == set(models.zoo.list_models())
    assert flops["swin_tiny"] == pytest.approx(4.509e9)


def test_ratio_rows_and_formats() -> None:
    assert models.RatioRow("a", 8, 224, 0.19, "1/5", "").result == "PASS"
    assert models.RatioRow("a", 8, 224, 0.21, "1/5", "").result == "**MISS**"
    assert models.RatioRow("a", 1, 224, 9.0, None, "").result == "info"
    entry = models.Entry("k", "resnet18", "resnet18", conv=True)
    fast, slow = Timing((0.1, 0.1, 0.1), 1), Timing((0.2, 0.2, 0.2), 1)
    best, note = models._format_note(entry, {False: slow, True: fast})
    assert best is True and note == "channels-last (2.00× faster than channels-first)"


def test_reference_path_needs_an_aggregation() -> None:
    with pytest.raises(ValueError, match="Aggregation"):
        build_model(ModelCase("resnet18", 1, 32, path="reference"), torch.device("cpu"))
    with pytest.raises(ValueError, match="path"):
        ModelCase("resnet18", 1, 32, path="fast")


def test_channels_last_case_keeps_outputs() -> None:
    first = build_run(ModelCase("kw_resnet18_1x", 1, 32), torch.device("cpu"))
    last = build_run(ModelCase("kw_resnet18_1x", 1, 32, channels_last=True), torch.device("cpu"))
    with torch.inference_mode():
        torch.testing.assert_close(first(), last(), rtol=1e-4, atol=1e-4)
    model = build_model(ModelCase("van_b0", 1, 32), torch.device("cpu"))
    assert force_path(model, "reference") > 0
