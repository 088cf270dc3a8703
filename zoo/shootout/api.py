"""``run_shootout``: every mixer in one backbone slot, trained with one recipe on one data order, over seeds."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unifiedops._checks import check_int
from zoo.builder import BackboneSpec
from zoo.shootout.data import Splits, digits_splits
from zoo.shootout.mixers import MixerEntry, check_slot, resolve_mixers
from zoo.shootout.recipe import Recipe
from zoo.shootout.report import summarize, write_report
from zoo.shootout.runner import CHECKPOINT, RESULT, RunContext, run_one
from zoo.shootout.state import saved_step

__all__ = ["ShootoutResult", "default_backbone", "run_shootout"]

CONFIG = "config.json"


def default_backbone() -> BackboneSpec:
    """The shoot-out's default backbone: a small three-stage pyramid for 32×32 images, slot filled with DW conv.

    A ``4 × 4`` patch-embedding stem (the digits are 8×8 images upsampled, so it sees their native pixels),
    one pre-norm MetaFormer block per stage (mixer, then an MLP of ratio 2) of widths 32, 64 and 128 on maps of
    8, 4 and 2 pixels, LayerNorm, patch merging between stages. Every stage is the slot; an entry restricted to
    late stages (global attention) leaves the DW conv in the others.

    Returns:
        The spec.
    """
    return BackboneSpec.pyramid(
        32,
        (1, 1, 1),
        stage=dict(mixer="dwconv", mixer_kwargs={"kernel_size": 7}, mlp_ratio=2.0),
        patch_size=4,
        img_size=32,
        drop_path_rate=0.0,
    )


@dataclass(frozen=True)
class ShootoutResult:
    """What a shoot-out measured.

    Attributes:
        runs: One result per (mixer, seed), in the order trained.
        summary: One row per mixer (see [`summarize`][zoo.shootout.report.summarize]).
        table: The summary as markdown (empty on ranks other than 0).
        out_dir: Where the report and the runs are.
    """

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str
    out_dir: Path


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"seeds must be a non-empty sequence of ints, got seeds={seeds!r}")
    for s in seeds:
        check_int("seed", s, minimum=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got seeds={list(seeds)}")
    return tuple(seeds)


def _context(
    device: str | torch.device | None, progress: bool, on_step: Callable[[int], None] | None, workers: int
) -> RunContext:
    """One process, or this process's part of a ``torchrun`` job (its process group joined here)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size == 1:
        chosen = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
        return RunContext(chosen, progress=progress, on_step=on_step, workers=workers)
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return RunContext(chosen, dist.get_rank(), dist.get_world_size(), progress, on_step, workers)


def _run_config(spec: BackboneSpec, entry: MixerEntry, splits: Splits, recipe: Recipe, seed: int) -> dict[str, Any]:
    return {
        "backbone": entry.apply(spec).to_dict(),
        "mixer": entry.to_dict(),
        "data": splits.description,
        "recipe": recipe.to_dict(),
        "seed": seed,
    }


def _claim_run_dir(run_dir: Path, config: dict[str, Any], rank: int) -> None:
    """Record the run's configuration, or check that an earlier, resumed run had the same one."""
    path = run_dir / CONFIG
    config = json.loads(json.dumps(config))  # tuples become lists, as in the file
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != config:
            changed = sorted(k for k in config if earlier.get(k) != config[k])
            raise ValueError(
                f"out_dir: {run_dir} holds a run with another configuration (differing in {changed}); "
                "use another out_dir, or delete that run to retrain it"
            )
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=1))


def run_shootout(
    spec: BackboneSpec | None = None,
    mixers: Sequence[str | MixerEntry] | None = None,
    data: Splits | None = None,
    recipe: Recipe | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | os.PathLike = "shootout",
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    workers: int = 0,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> ShootoutResult:
    """Train the backbone once per (mixer, seed) with the identical recipe and data order, and report.

    Every mixer is checked against the slot before anything trains. Runs go to ``out_dir/runs/<mixer>/seed<s>``;
    a finished run is read back, not retrained, and an interrupted one resumes from its checkpoint, so calling
    this again after an interruption finishes the shoot-out. Under ``torchrun`` each process trains its share of
    every global batch (DDP, ``DistributedSampler``, SyncBatchNorm) and rank 0 writes the files.

    Args:
        spec: The backbone with the mixer slot (``None``: [`default_backbone`][zoo.shootout.default_backbone]);
            its reference ``img_size`` becomes the data's, which the mixers are fitted to.
        mixers: Names or entries (``None``: [`DEFAULT_MIXERS`][zoo.shootout.DEFAULT_MIXERS]).
        data: The data (``None``: [`digits_splits`][zoo.shootout.digits_splits]).
        recipe: The recipe (``None``: ``Recipe()``).
        seeds: Seeds; each sets the initialisation and the data order, the same for every mixer.
        out_dir: The shoot-out's folder.
        device: Training device (``None``: CUDA when available, else the CPU).
        progress: Show a progress bar per run.
        workers: Data-loading processes per training process (0: load in the main process, right for the
            in-memory digits; an image folder wants several).
        on_step: Called with the global step after every optimizer step.
        log: Where one line per finished run goes (``None``: nowhere).

    Returns:
        The runs, the per-mixer summary and its markdown table.

    Raises:
        ValueError: For an unknown mixer, a mixer that cannot fill the slot, bad seeds, or an ``out_dir`` holding a
            run of the same mixer and seed with another configuration; before anything trains.
    """
    spec = spec if spec is not None else default_backbone()
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a BackboneSpec, got {type(spec).__name__}")
    entries = resolve_mixers(mixers)
    seeds = _check_seeds(seeds)
    recipe = recipe if recipe is not None else Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    splits = data if data is not None else digits_splits()
    if not isinstance(splits, Splits):
        raise TypeError(f"data must be a Splits, got {type(splits).__name__}")
    spec = dataclasses.replace(spec, img_size=splits.img_size)
    for entry in entries:
        check_slot(spec, entry)

    out = Path(out_dir)
    check_int("workers", workers, minimum=0)
    ctx = _context(device, progress, on_step, workers)
    plan = [(entry, seed, out / "runs" / entry.name / f"seed{seed}") for entry in entries for seed in seeds]
    for entry, seed, run_dir in plan:
        _claim_run_dir(run_dir, _run_config(spec, entry, splits, recipe, seed), ctx.rank)
    if ctx.world_size > 1:  # the other ranks read what rank 0 wrote
        dist.barrier()

    runs = []
    for entry, seed, run_dir in plan:
        was_done = (run_dir / RESULT).is_file()
        if not was_done and (run_dir / CHECKPOINT).is_file() and log is not None and ctx.rank == 0:
            log(f"{entry.name} seed {seed}: resuming from step {saved_step(run_dir / CHECKPOINT)}")
        result = run_one(spec, entry, splits, recipe, seed, run_dir, ctx)
        runs.append(result)
        if log is not None and ctx.rank == 0:
            how = "done earlier" if was_done else f"{result['train_seconds']:.1f} s"
            log(f"{entry.name} seed {seed}: top-1 {result['top1']:.2f}% ({how})")

    table, summary = "", []
    if ctx.rank == 0:
        meta = {
            "backbone": spec.to_dict(),
            "mixers": [e.to_dict() for e in entries],
            "seeds": list(seeds),
            "data": splits.description,
            "recipe": recipe.to_dict(),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "torch": torch.__version__,
        }
        summary = summarize(runs)
        table = write_report(out, runs, summary, meta)
    return ShootoutResult(runs, summary, table, out)
