"""The docs' generated table and figures: the one command that writes them, and their freshness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import zoo
from benchmarks import _results, diagrams, docs_assets, zoo_table
from unifiedops.catalog import PRESETS
from unifiedops.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_one_command_writes_the_table_and_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["docs", "--models", "van_b0", "--output-dir", str(tmp_path)]) == 0
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {
        "zoo.md",
        "zoo_throughput.png",
        "ops_time_vs_resolution.png",
        "relation_graph.svg",
        "preset_axes.svg",
    }
    rows = [line for line in (tmp_path / "zoo.md").read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == 1 and rows[0].startswith("| `van_b0` | 4.11M | 4.1M | rounds to paper | 0.869G")
    assert "official VAN" in rows[0]
    for png in ("zoo_throughput.png", "ops_time_vs_resolution.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_bad_pattern_is_rejected() -> None:
    with pytest.raises(SystemExit):
        docs_assets.main(["--models", "no_such_model*"])


def _table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in zoo_table.RESULTS.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"\| `(\w+)` \|", line):
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_committed_zoo_table_lists_every_model_with_its_current_parameter_count() -> None:
    # The table is generated; this catches a model added or changed without `unifiedops docs`.
    rows = _table_rows()
    assert sorted(rows) == zoo.list_models()
    for name, cells in rows.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in timm.create_model(name).parameters())
        assert cells[1] == f"{params / 1e6:.2f}M", name
        assert "MISS" not in cells[3], name


def test_committed_throughput_comes_from_the_benchmark_results() -> None:
    results = _results.load(_results.MODELS_JSON)
    assert results is not None and set(results["images_per_s"]) == set(zoo.list_models())
    for name, cells in _table_rows().items():
        assert cells[7] == f"{results['images_per_s'][name]:.1f}", name


def test_diagram_links_point_at_sections_of_the_presets_gallery(tmp_path: Path) -> None:
    gallery = (ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
    anchors = {heading.lower() for heading in re.findall(r"^## (\w+)\s*$", gallery, flags=re.M)}
    svg = diagrams.relation_graph(tmp_path / "graph.svg").read_text(encoding="utf-8")
    links = re.findall(r'<a xlink:href="([^"]+)" target="_top">', svg)
    linked_nodes = [node for node in diagrams.NODES if node.link]
    assert len(set(links)) == len(linked_nodes)
    for link in links:
        if link.startswith(diagrams.PRESETS_PAGE):
            assert link.split("#", 1)[1] in anchors, link
    chart = diagrams.axes_chart(tmp_path / "axes.svg").read_text(encoding="utf-8")
    chart_links = set(re.findall(r'xlink:href="\.\./presets/#(\w+)"', chart))
    assert chart_links == {entry.name.lower() for entry in PRESETS} and chart_links <= anchors
