"""Regenerate every generated table and figure of the docs, from the code and the last benchmark runs.

    python -m benchmarks.docs_assets [--models PATTERN] [--output-dir DIR]
    unifiedops docs                  # the same

It writes:

* ``benchmarks/results/zoo.md``, the zoo table that ``docs/zoo/index.md`` includes: parameters and
  FLOPs measured now, images/s from ``results/models.json``, checkpoints from ``zoo.checkpoints``;
* ``docs/img/zoo_throughput.png``: FLOPs (measured now) against images/s (``results/models.json``);
* ``docs/img/ops_time_vs_resolution.png``: forward time against resolution per preset
  (``results/ops.json``);
* ``docs/img/relation_graph.svg``: the relation graph of the DWNet paper, linked to the presets;
* ``docs/img/preset_axes.svg``: every preset of ``unifiedops.catalog.PRESETS`` on the axes.

Nothing is timed: ``results/*.json`` are written by full runs of ``python -m benchmarks.models``
and ``python -m benchmarks.ops``, which also draw their plots when they run. Measuring the FLOPs
of all 40 models takes a few minutes on a 2-core CPU. ``--output-dir`` writes everything into one
folder instead (the tests use it); ``--models`` restricts the table and the throughput plot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import zoo
from benchmarks import _results, diagrams, zoo_table
from benchmarks.models import plot_throughput
from benchmarks.ops import plot_sweep

__all__ = ["DOCS_IMG", "main"]

ROOT = Path(__file__).resolve().parent.parent
DOCS_IMG = ROOT / "docs" / "img"
"""Where the docs' figures go (mkdocs serves files under ``docs/`` only)."""


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", help="shell-style pattern over zoo.list_models() (default: all)")
    parser.add_argument("--output-dir", type=Path, default=None, help="write every file into this folder instead")
    args = parser.parse_args(argv)
    if not zoo.list_models(args.models):
        parser.error(f"--models {args.models!r} matches no zoo model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write the zoo table and every figure of the docs.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 1 if a parameter count misses its published figure, else 0.
    """
    args = _parse(argv)
    img = args.output_dir or DOCS_IMG
    table_path = args.output_dir / "zoo.md" if args.output_dir else zoo_table.RESULTS
    written = []

    names = zoo.list_models(args.models)
    table, measured = zoo_table.build_table(names, progress=False)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(table + "\n", encoding="utf-8")
    written.append(table_path)

    models = _results.load(_results.MODELS_JSON)
    if models is not None:
        speeds = models["images_per_s"]
        points = {name: (measured[name][1], speeds[name]) for name in names if name in speeds}
        if points:
            written.append(
                plot_throughput(points, models["batch"], models["size"], models["threads"], img / "zoo_throughput.png")
            )
    ops = _results.load(_results.OPS_JSON)
    if ops is not None:
        written.append(plot_sweep(ops["sweep"], img / "ops_time_vs_resolution.png"))
    written.append(diagrams.relation_graph(img / "relation_graph.svg"))
    written.append(diagrams.axes_chart(img / "preset_axes.svg"))

    for path in written:
        print(f"wrote {_relative(path)}")
    for missing, source in ((models, _results.MODELS_JSON), (ops, _results.OPS_JSON)):
        if missing is None:
            print(f"skipped the plot from {_relative(source)}: no full benchmark run has written it", file=sys.stderr)
    return 1 if "MISS" in table else 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
