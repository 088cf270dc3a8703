"""The README's first command runs the operator benchmark: keep it runnable (a smoke run, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_operator_benchmark_quick_run(tmp_path: Path) -> None:
    report = tmp_path / "ops.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ops", "--quick", "--sizes", "b,c,e", "--output", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    for row in (
        "DWConv / F.conv2d, time",
        "DynamicDWConv / DWConv, time",
        "WindowAttention / timm Swin, time",
        "NeighborhoodAttention / its reference path, memory",
        "ACmix / its reference path, time",
        "ACmix / its reference path, memory",
        "KWConv2d 1x / nn.Conv2d, time",
    ):
        assert row in text
    for preset in ("LKA(C)", "ACmixWindowAttention", "UniFormerLocalMHRA", "MixingAttention", "XVolution", "CondConv"):
        assert f"| {preset}" in text, preset
    assert "| `halo_sdpa` |" in text and "| `window_sdpa` |" in text
