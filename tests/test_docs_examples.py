"""Every ``python`` code block in the README and the docs runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _examples() -> list:
    cases = []
    for page in PAGES:
        # Blocks of one page run in order in one namespace, as a reader would run them.
        blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
        if blocks:
            cases.append(pytest.param(blocks, id=str(page.relative_to(ROOT))))
    return cases


def test_pages_have_examples() -> None:
    assert len(_examples()) >= 3


@pytest.mark.parametrize("blocks", _examples())
def test_example_runs(blocks: list[str]) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for code in blocks:
        exec(compile(code, "<docs example>", "exec"), namespace)
