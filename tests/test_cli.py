"""The ``unifiedops`` command and the catalog behind ``unifiedops list``: tables are well formed,
the catalog covers every preset and zoo model, per-stage breakdowns add up. No timings."""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from torch import nn

import unifiedops
import zoo
from unifiedops.aggregation import Aggregation
from unifiedops.catalog import NOT_PRESETS, PRESETS, ZOO_FAMILIES, preset_classes, preset_entry, zoo_family
from unifiedops.cli import main, markdown_table, stage_breakdown
from unifiedops.flops import count_flops

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``, as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
            if not all(set(c) <= set("-:") and c for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _number(cell: str) -> float:
    cell = cell.strip("*")
    units = {"G": 1e9, "M": 1e6, "K": 1e3}
    if cell[-1] in units:
        return float(cell[:-1]) * units[cell[-1]]
    return float(cell.replace(",", ""))


# --- the command as a program -------------------------------------------------------------------


def test_runs_as_a_module_without_importing_zoo_or_benchmarks() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "unifiedops.cli", "list", "--presets", "--format", "csv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[1].startswith("preset,DWConv,")
    # -X importtime logs every module imported, one per line: "import time: ... | <module>".
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if "import time:" in line}
    assert "unifiedops.catalog" in imported
    assert not {m for m in imported if m.split(".")[0] in ("zoo", "benchmarks")}


def test_version() -> None:
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stdout(io.StringIO()) as out:
        main(["--version"])
    assert raised.value.code == 0
    assert out.getvalue().strip() == f"unifiedops {unifiedops.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "--presets", "--models"],
        ["list", "--format", "json"],
        ["list", "--bogus"],
        ["flops"],
        ["flops", "van_b0", "--size", "64"],
        ["flops", "van_b0", "--size", "0", "64"],
        ["flops", "van_b0", "--batch", "-1"],
        ["flops", "van_b0", "--zoo"],
        ["flops", "--zoo", "--size", "64", "64"],
        ["bench"],
        ["bench", "everything"],
    ],
)
def test_bad_arguments_exit_with_status_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert "usage: unifiedops" in capsys.readouterr().err


def test_unknown_model_is_named_with_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["flops", "swin_tinny"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'swin_tinny'" in err
    assert "'swin_tiny'" in err  # the closest names
    assert "unifiedops list" in err


# --- list ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing() -> str:
    code, text = _run(["list"])
    assert code == 0
    return text


def test_list_has_both_sections(listing: str) -> None:
    assert listing.index("## Presets") < listing.index("## Zoo models")
    presets, models = _tables(listing)
    assert presets[0] == ["preset", "example", "sparsity", "shared over", "dynamism", "fast path", "params", "paper"]
    assert models[0] == ["model", "family", "mixer", "sparsity", "shared over", "dynamism", "params", "paper"]


def test_list_shows_every_preset_with_its_axes(listing: str) -> None:
    rows = _tables(listing)[0][1:]
    assert [r[0] for r in rows] == [f"`{e.name}`" for e in PRESETS]
    for row, entry in zip(rows, PRESETS, strict=True):
        assert all(row), row  # no empty cell
        assert row[2:5] == [entry.sparsity, entry.sharing, entry.dynamism]
        assert _number(row[6]) == entry.parameter_count()
    assert "| `DWConv` | `DWConv(96, 7)` |" in listing and "| 4,800 |" in listing


def test_list_shows_every_zoo_model_with_its_axes(listing: str) -> None:
    rows = _tables(listing)[1][1:]
    assert [r[0] for r in rows] == [f"`{name}`" for name in zoo.list_models()]
    assert len(rows) >= 40
    for row in rows:
        assert all(cell and cell != "?" for cell in row), row
        assert "arXiv:" in row[7]
    swin = next(r for r in rows if r[0] == "`swin_tiny`")
    window = preset_entry("WindowAttention")
    assert swin[1:6] == ["Swin", "`WindowAttention`", window.sparsity, window.sharing, window.dynamism]
    uniformer = next(r for r in rows if r[0] == "`uniformer_small`")
    assert uniformer[2] == "`UniFormerLocalMHRA`, `UniFormerGlobalMHRA`" and uniformer[5] == "static / attention"
    assert abs(_number(swin[6]) - 28_288_354) < 5e3  # Swin-T: 28.29M


def test_list_csv() -> None:
    code, text = _run(["list", "--presets", "--format", "csv"])
    assert code == 0
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in records] == [e.name for e in PRESETS]
    assert {r["kind"] for r in records} == {"preset"}
    assert int(records[0]["params"]) == 4800
    assert all(r["sparsity"] and r["sharing"] and r["dynamism"] and r["fast_path"] for r in records)


def test_list_presets_only_skips_the_zoo() -> None:
    code, text = _run(["list", "--presets"])
    assert code == 0
    assert "## Presets" in text and "## Zoo models" not in text


# --- the catalog --------------------------------------------------------------------------------


def test_catalog_covers_every_exported_preset() -> None:
    """The rule: an exported nn.Module class not in NOT_PRESETS is a preset and needs an entry."""
    exported = preset_classes()
    assert set(exported) == {e.name for e in PRESETS}, "add a PresetEntry (or a NOT_PRESETS reason)"
    for entry in PRESETS:
        assert exported[entry.name] is entry.cls
    assert set(NOT_PRESETS) <= set(unifiedops.__all__)
    assert len({e.name for e in PRESETS}) == len(PRESETS)


def test_catalog_rule_catches_a_new_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    class NewPreset(nn.Module):
        pass

    monkeypatch.setattr(unifiedops, "NewPreset", NewPreset, raising=False)
    monkeypatch.setattr(unifiedops, "__all__", [*unifiedops.__all__, "NewPreset"])
    assert "NewPreset" in preset_classes()
    assert set(preset_classes()) != {e.name for e in PRESETS}


_WORDS = {"static": "static", "sample": "per sample", "position": "per position", "attention": "attention"}


@pytest.mark.parametrize("entry", PRESETS, ids=lambda e: e.name)
def test_catalog_entry_matches_its_example(entry) -> None:
    torch.manual_seed(0)
    module = entry.build().eval()
    preset = next(m for m in module.modules() if isinstance(m, entry.cls))
    paths = list(dict.fromkeys(m.path for m in module.modules() if isinstance(m, Aggregation)))
    assert entry.fast_path == " + ".join(paths)
    if isinstance(preset, Aggregation):
        assert entry.dynamism.startswith(_WORDS[preset.source.dynamism])
        assert entry.sparsity.startswith(type(preset.neighbourhood).__name__.lower())
    assert entry.parameter_count() == entry.parameter_count(module) > 0
    with torch.no_grad():
        y = module(torch.randn(entry.input_shape))
    assert torch.isfinite(y).all()
    assert entry.example.startswith((entry.name + "(", "Warehouse().reserve(", "XVolution("))


def test_preset_entry_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="name"):
        preset_entry("Convolution")


def test_every_zoo_model_has_one_family() -> None:
    names = zoo.list_models()
    for name in names:
        assert sum(f.matches(name) for f in ZOO_FAMILIES) == 1, name
    for family in ZOO_FAMILIES:
        assert any(family.matches(name) for name in names), family.name
        for mixer in family.mixers:
            preset_entry(mixer)


def test_family_mixers_are_what_the_models_build() -> None:
    """Building one model of each family constructs its mixers (some models register a
    composite's children directly, so constructions are counted, not submodules)."""
    built: list[type] = []
    original = nn.Module.__init__

    def recording_init(self: nn.Module, *args, **kwargs) -> None:
        built.append(type(self))
        original(self, *args, **kwargs)

    for family in ZOO_FAMILIES:
        name = next(n for n in zoo.list_models() if family.matches(n))
        built.clear()
        with mock.patch.object(nn.Module, "__init__", recording_init), torch.device("meta"):
            model = timm.create_model(name)
        names = {cls.__name__ for cls in built}
        assert set(family.mixers) <= names, (name, family.mixers, sorted(names & set(preset_classes())))
        assert str(model.pretrained_cfg["paper_ids"]) in family.paper
        assert zoo_family(name) is family


# --- flops --------------------------------------------------------------------------------------


def test_stage_breakdown_adds_up_for_van() -> None:
    torch.manual_seed(0)
    model = timm.create_model("van_b0")
    parts, unsupported = stage_breakdown(model, (1, 3, 64, 64))
    assert [p.name for p in parts] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert parts[0].modules == ("patch_embed1",)
    assert parts[2].modules == ("patch_embed2", "block2", "norm2")
    assert sum(p.params for p in parts) == sum(p.numel() for p in model.parameters())
    assert sum(p.flops for p in parts) == count_flops(model, input_size=(1, 3, 64, 64))
    assert all(p.flops > 0 for p in parts)
    assert unsupported == {}


def test_stage_breakdown_other_part() -> None:
    """Parameters no stage holds and FLOPs of the model's own forward go to "other"."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.stages = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1))
            self.store = nn.ParameterList([nn.Parameter(torch.zeros(10))])  # never called
            self.scale = nn.Parameter(torch.ones(8, 8))
            self.feature_info = [{"module": "stages.0"}, {"module": "stages.1"}]

        def group_matcher(self, coarse: bool = False) -> dict:
            return {"stem": r"^stem", "blocks": r"^stages\.(\d+)"}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stages(self.stem(x)).mean((2, 3))
            return x @ self.scale  # counted in the model's own forward

    parts, _ = stage_breakdown(Net(), (1, 3, 8, 8))
    assert [p.name for p in parts] == ["stem", "stage 1", "stage 2", "other"]
    other = parts[-1]
    assert other.params == 10 + 64 and other.modules == ("scale", "store")
    assert other.flops == 64
    assert parts[1].flops == 8 * 8 * 8 * 8 * 9 and parts[2].flops == 8 * 4 * 4 * 8 * 9  # O Ho Wo C k²


def test_flops_command_on_a_zoo_model() -> None:
    code, text = _run(["flops", "van_b0", "--size", "64", "64"])
    assert code == 0
    parts, published = _tables(text)
    assert parts[0] == ["part", "modules", "params", "FLOPs", "share"]
    body, total = parts[1:-1], parts[-1]
    assert [r[0] for r in body] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert total[0] == "**total**"
    # The rows add up to the total, up to the rounding of the printed figures.
    assert sum(_number(r[3]) for r in body) == pytest.approx(_number(total[3]), abs=len(body) * 5e5)
    assert sum(_number(r[2]) for r in body) == pytest.approx(_number(total[2]), abs=len(body) * 5e3)
    assert published[0] == ["", "ours", "published", "Δ"]
    assert published[1][:3] == ["params", "4.11M", "4.1M"]
    assert published[2][0] == "FLOPs per image at 64×64" and published[2][2] == "0.9G"
    assert "published at 224×224" in published[2][3]


def test_flops_command_on_a_timm_model_without_published_figures() -> None:
    code, text = _run(["flops", "resnet18", "--size", "64", "64", "--batch", "2"])
    assert code == 0
    assert "at 2×3×64×64" in text
    assert "No published figures for `resnet18`" in text
    (parts,) = _tables(text)
    assert [r[0] for r in parts[1:]] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head", "**total**"]
    assert parts[1][1] == "`conv1`, `bn1`, `act1`, `maxpool`"  # timm's act1 feature is inside the stem
    assert _number(parts[-1][2]) == pytest.approx(11.69e6, abs=1e4)


def test_flops_command_reports_a_model_that_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "vit_tiny_patch16_224", "--size", "48", "48"]) == 1
    assert "vit_tiny_patch16_224 does not run on an input of (1, 3, 48, 48)" in capsys.readouterr().err


def test_flops_zoo_writes_the_docs_table(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("benchmarks.zoo_table")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks.zoo_table", fake)
    import benchmarks

    monkeypatch.setattr(benchmarks, "zoo_table", fake, raising=False)
    assert main(["flops", "--zoo"]) == 0
    assert calls == [[]]


def test_zoo_table_rows_compare_with_the_publication(tmp_path: Path) -> None:
    from benchmarks import zoo_table

    table = tmp_path / "zoo.md"
    assert zoo_table.main(["--models", "van_b0", "--output", str(table)]) == 0
    header, _rule, row, _blank, source = table.read_text(encoding="utf-8").splitlines()
    assert header == (
        "| model | params | published | check | FLOPs | published | Δ | images/s | checkpoints that load |"
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["`van_b0`", "4.11M", "4.1M", "rounds to paper"]
    assert cells[5] == "0.9G" and -5 <= float(cells[6].rstrip("%")) <= 5
    assert float(cells[7]) > 0 and cells[8].startswith("official VAN")
    assert source.startswith("images/s: `python -m benchmarks.models`")


# --- bench --------------------------------------------------------------------------------------


def test_bench_ops_quick_run(tmp_path: Path) -> None:
    report = tmp_path / "ops.md"
    code, text = _run(["bench", "ops", "--quick", "--sizes", "e", "--output", str(report)])
    assert code == 0
    written = report.read_text(encoding="utf-8")
    for output in (text, written):
        assert "| operator | path | median time (ms) |" in output
        assert "| KWConv2d(C, C, 3), 1x | `batched_conv` |" in output


def test_bench_passes_its_arguments_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("benchmarks.models")
    fake.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, "benchmarks.models", fake)
    assert main(["bench", "models", "--quick", "--batch", "1"]) == 3
    assert calls == [["--quick", "--batch", "1"]]


def test_bench_argument_errors_are_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["bench", "ops", "--sizes", "z"])
    assert raised.value.code == 2
    assert "unknown configuration" in capsys.readouterr().err


def test_markdown_table_checks_its_rows() -> None:
    assert markdown_table(["a"], [["x"]]) == "| a |\n| --- |\n| x |"
    with pytest.raises(ValueError, match="rows"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [["x", "y"]], align="lx")
