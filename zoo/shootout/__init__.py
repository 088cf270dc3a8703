"""The operator shoot-out: one backbone, one recipe, one data order, every mixer in its slot.

[`run_shootout`][zoo.shootout.run_shootout] (and the ``unifiedops shootout`` command) trains a builder backbone
once per (mixer, seed), holding everything but the mixer fixed, and reports top-1 mean ± std over seeds,
parameters, FLOPs, throughput and training time per mixer. The modules have one job each: ``data`` (digits or an
image folder), ``mixers`` (the contestants and the slot check), ``recipe`` (timm's optimizer and scheduler,
temperatures, precision), ``state`` (safetensors checkpoints), ``runner`` (one resumable run), ``report``.

Examples:
    >>> from zoo.shootout import DEFAULT_MIXERS, default_backbone
    >>> default_backbone().dims, len(DEFAULT_MIXERS)
    ((32, 64, 128), 11)
"""

from zoo.shootout.api import ShootoutResult, default_backbone, run_shootout
from zoo.shootout.data import Splits, digits_splits, image_folder_splits
from zoo.shootout.mixers import DEFAULT_MIXERS, MixerEntry, check_slot, resolve_mixers
from zoo.shootout.recipe import TEMPERATURE_SCHEDULES, Recipe, temperature_schedules
from zoo.shootout.report import markdown_summary, plot_accuracy_vs_flops, summarize, write_report
from zoo.shootout.runner import RunContext, build_model, run_one

__all__ = [
    "DEFAULT_MIXERS",
    "TEMPERATURE_SCHEDULES",
    "MixerEntry",
    "Recipe",
    "RunContext",
    "ShootoutResult",
    "Splits",
    "build_model",
    "check_slot",
    "default_backbone",
    "digits_splits",
    "image_folder_splits",
    "markdown_summary",
    "plot_accuracy_vs_flops",
    "resolve_mixers",
    "run_one",
    "run_shootout",
    "summarize",
    "temperature_schedules",
    "write_report",
]
