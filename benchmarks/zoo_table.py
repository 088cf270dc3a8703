"""The zoo's size and cost against the published figures: parameters and FLOPs of every model.

    python -m benchmarks.zoo_table [--models PATTERN] [--output PATH]

Parameters are counted on the ``meta`` device; FLOPs (multiply-accumulates at 224 x 224, batch 1)
with [`count_flops`][unifiedops.count_flops]. A full run writes ``benchmarks/results/zoo.md``,
which the docs page on the zoo includes. It takes a few minutes on a 2-core CPU (tracing the
inhomogeneous DWNets alone takes a minute and a half).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

import zoo
from benchmarks._harness import markdown_table
from unifiedops.flops import count_flops
from zoo.published import PUBLISHED, rounds_to

__all__ = ["main", "measure"]

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


def _row(name: str, params: int, flops: float) -> list[str]:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the models and print (and, for all models, save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="*", help="shell-style pattern over zoo.list_models()")
    parser.add_argument("--output", type=Path, default=None, help=f"where to write the table (all models: {RESULTS})")
    args = parser.parse_args(argv)
    names = zoo.list_models(args.models)
    if not names:
        parser.error(f"--models {args.models!r} matches no zoo model")
    rows = []
    for name in names:
        params, flops = measure(name)
        rows.append(_row(name, params, flops))
        print(" | ".join(rows[-1]), flush=True)
    header = ["model", "params", "published", "check", "FLOPs", "published", "Δ"]
    table = markdown_table(header, rows)
    print(table)
    output = args.output or (RESULTS if args.models == "*" else None)
    if output is not None:
        output.write_text(table + "\n")
    return 0 if not any("MISS" in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
