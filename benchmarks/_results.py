"""The raw measurements of the last full benchmark runs, as JSON beside their markdown reports.

The reports (``results/*.md``) are for reading; these files are for code: the docs' generated
tables and figures (``python -m benchmarks.docs_assets``) are drawn from them, so regenerating the
docs never re-runs a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MODELS_JSON", "OPS_JSON", "load", "save"]

RESULTS_DIR = Path(__file__).parent / "results"
MODELS_JSON = RESULTS_DIR / "models.json"
"""Throughput of every zoo model (images/s) from the last full model benchmark."""
OPS_JSON = RESULTS_DIR / "ops.json"
"""Forward time against resolution of every single-aggregation preset from the last full operator benchmark."""


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write one result file (sorted keys, so re-runs diff cleanly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> dict[str, Any] | None:
    """Read one result file, or ``None`` if no full run has written it yet."""
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
