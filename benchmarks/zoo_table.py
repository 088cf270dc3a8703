"""The zoo table: size and cost against the published figures, measured speed, loadable checkpoints.

    python -m benchmarks.zoo_table [--models PATTERN] [--output PATH]

For every zoo model: parameters (counted on the ``meta`` device) and FLOPs (multiply-accumulates at
224 x 224, batch 1, [`count_flops`][unifiedops.count_flops]) beside the published figures; images
per second from the last full model benchmark (``benchmarks/results/models.json``, written by
``python -m benchmarks.models``; nothing is timed here); and the checkpoints that load into it
([`zoo.checkpoints`][zoo.checkpoints]). A full run writes ``benchmarks/results/zoo.md``, which the
docs page on the zoo includes; ``python -m benchmarks.docs_assets`` runs it together with the
docs' figures. It takes a few minutes on a 2-core CPU (tracing the inhomogeneous DWNets alone
takes a minute and a half).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

import zoo
from benchmarks import _results
from benchmarks._harness import markdown_table
from unifiedops.flops import count_flops
from zoo.checkpoints import checkpoint_sources
from zoo.published import PUBLISHED, rounds_to

__all__ = ["build_table", "main", "measure"]

RESULTS = Path(__file__).parent / "results" / "zoo.md"
"""Where a full run writes its table."""


def measure(name: str) -> tuple[int, float]:
    """Parameters and FLOPs (MACs at 224 x 224) of one registered model.

    Args:
        name: A model name from [`zoo.list_models`][zoo.list_models].

    Returns:
        ``(parameters, flops)``.
    """
    with torch.device("meta"):
        params = sum(p.numel() for p in timm.create_model(name).parameters())
    torch.manual_seed(0)
    flops = count_flops(timm.create_model(name), input_size=(1, 3, 224, 224))
    return params, flops


def _throughput() -> tuple[dict[str, float], str]:
    """Images/s of each model from the last full model benchmark, and a note on where they come from."""
    results = _results.load(_results.MODELS_JSON)
    if results is None:
        return {}, "no model benchmark has been run (`python -m benchmarks.models` writes them)"
    # "Key: value" lines; others (the torch version and threads) carry no key
    facts = {key: value.strip() for key, sep, value in (line.partition(":") for line in results["machine"]) if sep}
    where = (
        f"images/s: `{results['command']}`, batch {results['batch']}, {results['size']}×{results['size']}, "
        f"fp32 inference, {facts.get('CPU', facts.get('Device', '?'))}, {results['threads']} threads, "
        f"{facts.get('Date', '?')}"
    )
    return results["images_per_s"], where


def _row(name: str, params: int, flops: float, images_per_s: float | None) -> list[str]:
    speed = "—" if images_per_s is None else f"{images_per_s:.1f}"
    checkpoints = "<br>".join(source.describe() for source in checkpoint_sources(name)) or "—"
    return [*_size_cells(name, params, flops), speed, checkpoints]


def _size_cells(name: str, params: int, flops: float) -> list[str]:
    published = PUBLISHED.get(name)
    if published is None:
        return [f"`{name}`", f"{params / 1e6:.2f}M", "—", "", f"{flops / 1e9:.3f}G", "—", ""]
    if published.official_params is not None:
        params_check = "= official code" if params == published.official_params else "MISS"
    elif published.params is not None:
        params_check = "rounds to paper" if rounds_to(params, published.params) else "MISS"
    else:
        params_check = ""
    flops_check = ""
    if published.flops_value is not None:
        flops_check = f"{100 * (flops / published.flops_value - 1):+.1f}%"
    return [
        f"`{name}`",
        f"{params / 1e6:.2f}M",
        published.params or "—",
        params_check,
        f"{flops / 1e9:.3f}G",
        published.flops or "—",
        flops_check,
    ]


def build_table(names: Sequence[str], progress: bool = True) -> tuple[str, dict[str, tuple[int, float]]]:
    """Measure the models and format the zoo table.

    Args:
        names: Zoo model names.
        progress: Print each row as it is measured.

    Returns:
        The markdown table (with a line on where the throughput comes from), and the measured
        ``(parameters, FLOPs)`` of each model.
    """
    speeds, where = _throughput()
    rows, measured = [], {}
    for name in names:
        measured[name] = measure(name)
        rows.append(_row(name, *measured[name], speeds.get(name)))
        if progress:
            print(" | ".join(rows[-1]), flush=True)
    header = ["model", "params", "published", "check", "FLOPs", "published", "Δ", "images/s", "checkpoints that load"]
    return markdown_table(header, rows, "lrrlrrrrl") + f"\n\n{where}.", measured


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", help="shell-style pattern over zoo.list_models()")
    parser.add_argument("--output", type=Path, default=None, help=f"where to write the table (all models: {RESULTS})")
    args = parser.parse_args(argv)
    if not zoo.list_models(args.models):
        parser.error(f"--models {args.models!r} matches no zoo model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the models, print the table and, for all models or with ``--output``, write it.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 1 if a parameter count misses its published figure, else 0.
    """
    args = _parse(argv)
    table, _ = build_table(zoo.list_models(args.models))
    print(table)
    output = args.output or (RESULTS if args.models == "*" else None)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n", encoding="utf-8")
    return 1 if "MISS" in table else 0


if __name__ == "__main__":
    sys.exit(main())
