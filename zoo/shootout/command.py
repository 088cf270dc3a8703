"""``unifiedops shootout``: the command-line face of [`run_shootout`][zoo.shootout.run_shootout].

The parser lives in ``unifiedops.cli`` (so ``unifiedops --help`` does not import the zoo); this module turns its
arguments into a shoot-out. Everything is checked before the first run trains, and a bad argument ends the
command with status 2 and a message naming it. ``SIGTERM`` is handled like ``Ctrl-C``: the run in progress writes
its checkpoint, and the same command started again resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from zoo.builder import BackboneSpec
from zoo.shootout.api import default_backbone, run_shootout
from zoo.shootout.data import digits_splits, image_folder_splits
from zoo.shootout.mixers import DEFAULT_MIXERS
from zoo.shootout.recipe import Recipe

__all__ = ["run"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _recipe(args: argparse.Namespace) -> Recipe:
    base = Recipe.quick() if args.quick else Recipe()
    changes = {
        name: getattr(args, name)
        for name in ("epochs", "batch_size", "lr", "warmup_epochs")
        if getattr(args, name) is not None
    }
    if "epochs" in changes and "warmup_epochs" not in changes:
        changes["warmup_epochs"] = min(base.warmup_epochs, changes["epochs"] - 1)
    return dataclasses.replace(base, **changes)


def _spec(path: str | None) -> BackboneSpec:
    if path is None:
        return default_backbone()
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--spec: cannot read a JSON backbone spec from {path}: {e}") from e
    return BackboneSpec.from_dict(config)


def run(args: argparse.Namespace) -> int:
    """Run the shoot-out the parsed arguments describe, and print its table.

    Args:
        args: From ``unifiedops.cli.build_parser()``'s ``shootout`` subcommand.

    Returns:
        0 when every run finished; 130 when interrupted (rerun the command to resume).

    Raises:
        ValueError: For a bad argument: unknown mixer, a mixer that cannot fill the slot, a missing or malformed
            data folder, an unreadable spec (``main`` turns it into status 2).
    """
    if args.list_mixers:
        for entry in DEFAULT_MIXERS:
            print(f"{entry.name}: {entry.mixer} {dict(entry.options)} stages={entry.stages}")
        return 0
    mixers = None if args.mixers is None else [m.strip() for m in args.mixers.split(",") if m.strip()]
    seeds = args.seeds if args.seeds is not None else ((0, 1) if args.quick else (0, 1, 2))
    recipe = _recipe(args)
    if args.data is None:
        splits = digits_splits(args.img_size or 32)
    else:
        splits = image_folder_splits(args.data, args.img_size or 224, argument="--data")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_shootout(
            _spec(args.spec),
            mixers,
            splits,
            recipe,
            seeds,
            args.out,
            device=args.device,
            progress=not args.no_progress,
            workers=args.workers
            if args.workers is not None
            else (0 if args.data is None else min(8, os.cpu_count() or 1)),
        )
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume from {args.out}", file=sys.stderr)
        return 130
    if result.table:
        print(result.table)
        print(f"\nreport: {result.out_dir}/summary.md, runs.csv, summary.csv, shootout.json, accuracy_vs_flops.png")
    return 0
