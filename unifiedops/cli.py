"""The ``unifiedops`` command: the catalog of presets and zoo models, FLOPs per stage, benchmarks.

    unifiedops list [--presets | --models] [--format markdown|csv]
    unifiedops flops MODEL [--size H W] [--batch N]
    unifiedops flops --zoo
    unifiedops bench ops|models [ARGS ...]
    unifiedops docs [--models PATTERN] [--output-dir DIR]
    unifiedops shootout [--quick] [--mixers A,B,...] [--seeds 0,1] [--data PATH] [--out DIR] [...]

``list`` prints every preset and every zoo model with its point on the three axes (sparsity,
sharing, dynamism), its parameter count and its paper. ``flops`` prints the parameters and FLOPs
(multiply-accumulates, the convention of the published tables) of any ``timm.create_model`` name,
per stage and in total, beside the published figures where ``zoo.published`` has them. ``bench``
runs ``python -m benchmarks.ops`` or ``python -m benchmarks.models`` with the remaining arguments.
``docs`` regenerates every generated table and figure of the docs (``python -m benchmarks.docs_assets``).
``shootout`` trains one backbone with each mixer under one recipe (``zoo.shootout``).
Tables are markdown on stdout. Exit status: 0 on success, 2 for a bad argument (an unknown model
included), 1 when a model cannot run at the requested size.

``zoo``, ``timm`` models and the benchmarks are imported only by the subcommands that need them.
The docs page on the command (`docs/cli.md`) shows example output.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Part", "main", "markdown_table", "stage_breakdown"]

_PROG = "unifiedops"


# --- formatting ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table (cells are escaped for ``|``).

    Args:
        header: Column titles.
        rows: Cells, already formatted; each row has one cell per column.
        align: One character per column, ``l`` or ``r`` (default: all left).

    Returns:
        The table, without a trailing newline.

    Raises:
        ValueError: If a row or ``align`` does not have one entry per column.

    Examples:
        >>> print(markdown_table(["a", "b"], [["1", "x|y"]], align="rl"))
        | a | b |
        | ---: | --- |
        | 1 | x\\|y |
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must have one 'l' or 'r' per column, got align={align!r}")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"rows must have {len(header)} cells, got {len(row)}: {row!r}")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [list(header), rule, *([cell.replace("|", "\\|") for cell in row] for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _count(n: float, unit: str) -> str:
    scale, decimals = {"G": (1e9, 3), "M": (1e6, 2), "K": (1e3, 1)}[unit]
    return f"{n / scale:.{decimals}f}{unit}"


def _params(n: int) -> str:
    return _count(n, "M") if n >= 1e6 else _count(n, "K") if n >= 1e3 else str(n)


def _percent(ratio: float) -> str:
    text = f"{100 * ratio:+.1f}%"
    return "+0.0%" if text == "-0.0%" else text


def _unit_for(total: float) -> str:
    return "G" if total >= 1e8 else "M" if total >= 1e5 else "K"


# --- list ---------------------------------------------------------------------------------------

_PRESET_HEADER = ["preset", "example", "sparsity", "shared over", "dynamism", "fast path", "params", "paper"]
_MODEL_HEADER = ["model", "family", "mixer", "sparsity", "shared over", "dynamism", "params", "paper"]
_CSV_HEADER = ["kind", "name", "example", "family", "mixer", "sparsity", "sharing", "dynamism", "fast_path"]
_CSV_HEADER += ["params", "paper"]


def _preset_records() -> list[dict[str, Any]]:
    from unifiedops.catalog import PRESETS

    return [
        {
            "kind": "preset",
            "name": entry.name,
            "example": entry.example,
            "family": "",
            "mixer": entry.name,
            "sparsity": entry.sparsity,
            "sharing": entry.sharing,
            "dynamism": entry.dynamism,
            "fast_path": entry.fast_path,
            "params": entry.parameter_count(),
            "paper": entry.paper,
        }
        for entry in PRESETS
    ]


def _model_records() -> list[dict[str, Any]]:
    import timm

    import zoo
    from unifiedops.catalog import zoo_family

    records = []
    for name in zoo.list_models():
        with torch.device("meta"):
            model = timm.create_model(name)
        params = sum(p.numel() for p in model.parameters())
        family = zoo_family(name)
        paper_ids = str(getattr(model, "pretrained_cfg", {}).get("paper_ids", "") or "")
        if family is not None:
            sparsity, sharing, dynamism = family.axes()
            paper = family.paper if paper_ids in family.paper else f"{family.paper}; {paper_ids}".rstrip("; ")
        else:
            sparsity = sharing = dynamism = "?"
            paper = paper_ids or "?"
        records.append(
            {
                "kind": "model",
                "name": name,
                "example": "",
                "family": family.name if family else "?",
                "mixer": " + ".join(family.mixers) if family else "?",
                "sparsity": sparsity,
                "sharing": sharing,
                "dynamism": dynamism,
                "fast_path": "",
                "params": params,
                "paper": paper,
            }
        )
    return records


def _run_list(args: argparse.Namespace) -> int:
    show_presets = args.presets or not args.models
    show_models = args.models or not args.presets
    presets = _preset_records() if show_presets else []
    models = _model_records() if show_models else []
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_CSV_HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows([*presets, *models])
        sys.stdout.write(buffer.getvalue())
        return 0
    sections = []
    if show_presets:
        rows = [
            [
                f"`{r['name']}`",
                f"`{r['example']}`",
                r["sparsity"],
                r["sharing"],
                r["dynamism"],
                f"`{r['fast_path']}`",
                f"{r['params']:,}",
                r["paper"],
            ]
            for r in presets
        ]
        sections.append(
            f"## Presets ({len(rows)})\n\nParameters of the example instance; ∥ separates parallel branches, "
            "→ sequential layers.\n\n" + markdown_table(_PRESET_HEADER, rows, align="llllllrl")
        )
    if show_models:
        rows = [
            [
                f"`{r['name']}`",
                r["family"],
                ", ".join(f"`{m}`" for m in r["mixer"].split(" + ")),
                r["sparsity"],
                r["sharing"],
                r["dynamism"],
                _count(r["params"], "M"),
                r["paper"],
            ]
            for r in models
        ]
        sections.append(
            f"## Zoo models ({len(rows)})\n\nThe axes are those of the token mixer(s), separated by / in the "
            "order the stages use them; parameters at the default number of classes.\n\n"
            + markdown_table(_MODEL_HEADER, rows, align="llllllrl")
        )
    print("\n\n".join(sections))
    return 0


# --- flops --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One row of a per-stage breakdown.

    Attributes:
        name: ``"stem"``, ``"stage 1"``, ..., ``"head"``, or ``"other"`` (parameters held outside the
            stages, such as KernelWarehouse's shared cells, and FLOPs of the model's own forward
            outside its submodules).
        modules: The submodules it covers, in the order they run (for ``"other"``, what holds its
            parameters: modules that never run, or parameters of the model itself).
        params: Its parameters (a parameter shared by several parts counts in the first).
        flops: Its multiply-accumulates.
    """

    name: str
    modules: tuple[str, ...]
    params: int
    flops: float


def _stem_patterns(model: nn.Module) -> list[re.Pattern[str]]:
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        return []
    try:
        groups = matcher(coarse=True)
    except (NotImplementedError, TypeError):
        return []
    stem = groups.get("stem") if isinstance(groups, dict) else None
    if stem is None:
        return []
    if isinstance(stem, str):
        return [re.compile(stem)]
    return [re.compile(s[0] if isinstance(s, (tuple, list)) else s) for s in stem]


def _feature_modules(model: nn.Module, names: set[str]) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)):
        return []
    found = [f.get("module") for f in info if isinstance(f, dict)]
    return [f for f in found if isinstance(f, str) and f in names]


def _units(model: nn.Module, features: Sequence[str]) -> list[str]:
    """The modules a breakdown is made of: the children of the model and, recursively, the
    children of every module that contains a feature module (``layers`` for ``layers.0``)."""
    expanded = {""}
    for feature in features:
        parts = feature.split(".")
        expanded.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return [
        name
        for name, _ in model.named_modules()
        if name not in expanded and name.rpartition(".")[0] in expanded and name != ""
    ]


def stage_breakdown(
    model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)
) -> tuple[list[Part], dict[str, int]]:
    """Parameters and FLOPs (MACs) of a model per stage: stem, one part per stage, head.

    The stages are the model's ``feature_info`` modules (timm's convention, also the zoo's). The
    model is cut into its children, or, where a feature module is nested (``layers.0``), the
    children of its parents, and these run in some order during one forward pass (recorded while
    the FLOPs are traced). Stage ``i`` is its feature module with everything that runs after stage
    ``i - 1`` (downsampling layers outside the stage module, VAN's ``patch_embed2`` and ``block2``
    before ``norm2``); the stem is what runs up to the last module matching the stem pattern of the
    model's timm ``group_matcher`` (a feature module inside it, such as ResNet's ``act1``, is not a
    stage); the head is what runs after the last stage. Whatever is left, parameters outside these
    modules (KernelWarehouse's warehouses) and FLOPs of the model's own ``forward``, is an
    ``"other"`` part, present only when non-zero; the parts always sum to the totals. A model without
    ``feature_info`` gets a single ``"model"`` part.

    FLOPs are counted by [`flop_counter`][unifiedops.flop_counter] (fvcore with this library's
    handles), on a random input of ``input_size``.

    Args:
        model: The model.
        input_size: The input shape ``(B, C, H, W)``.

    Returns:
        The parts, in the order they run, and the operators fvcore could not count (name to
        occurrences; they count 0).

    Examples:
        >>> import timm
        >>> from unifiedops.cli import stage_breakdown
        >>> parts, unsupported = stage_breakdown(timm.create_model("resnet18"), (1, 3, 64, 64))
        >>> [p.name for p in parts]
        ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head']
        >>> parts[0].modules, sum(p.params for p in parts), int(sum(p.flops for p in parts))
        (('conv1', 'bn1', 'act1', 'maxpool'), 11689512, 148965376)
    """
    from unifiedops.flops import flop_counter

    modules = dict(model.named_modules())
    features = _feature_modules(model, set(modules))
    units = _units(model, features)
    calls: dict[str, int] = {}

    def recorder(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            calls.setdefault(name, len(calls))

        return hook

    # Every module is watched: a unit such as an nn.ModuleList is never called itself, and runs
    # when its first descendant does.
    handles = [module.register_forward_pre_hook(recorder(name)) for name, module in modules.items() if name]
    fvcore_logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)  # unsupported operators are returned instead
    try:
        counter = flop_counter(model, input_size=input_size)
        total = float(counter.total())
        by_module = counter.by_module()
        unsupported = dict(counter.unsupported_ops())
    finally:
        fvcore_logger.setLevel(level)
        for handle in handles:
            handle.remove()

    order: dict[str, int] = {}
    for unit in units:
        first_call = min((i for name, i in calls.items() if name == unit or name.startswith(unit + ".")), default=None)
        if first_call is not None:
            order[unit] = first_call
    ran = sorted(order, key=order.__getitem__)
    features = sorted((f for f in features if f in order), key=order.__getitem__)
    patterns = _stem_patterns(model)
    last = order[features[-1]] if features else len(calls)
    stem_end = max((order[u] for u in ran if order[u] < last and any(p.match(u) for p in patterns)), default=-1)
    features = [f for f in features if order[f] > stem_end]

    groups: list[tuple[str, list[str]]] = [("stem", [u for u in ran if order[u] <= stem_end])]
    if features:
        start = stem_end
        for i, feature in enumerate(features, start=1):
            groups.append((f"stage {i}", [u for u in ran if start < order[u] <= order[feature]]))
            start = order[feature]
        groups.append(("head", [u for u in ran if order[u] > start]))
    else:
        groups = [("model", list(ran))]
    row_of = {unit: name for name, members in groups for unit in members}

    params: dict[str, int] = {name: 0 for name, _ in groups}
    params["other"] = 0
    holders: list[str] = []  # what holds the "other" parameters: units that never ran, the model itself
    by_depth = sorted(units, key=len, reverse=True)
    for pname, p in model.named_parameters():
        owner = next((u for u in by_depth if pname.startswith(u + ".")), None)
        row = row_of.get(owner) if owner is not None else None
        if row is None:
            row = "stem" if any(pat.match(pname) for pat in patterns) and "stem" in params else "other"
            if row == "other" and (owner or pname) not in holders:
                holders.append(owner or pname)
        params[row] += p.numel()

    parts = [
        Part(name, tuple(members), params[name], float(sum(by_module.get(u, 0) for u in members)))
        for name, members in groups
    ]
    other_flops = total - sum(p.flops for p in parts)
    if params["other"] or other_flops:
        parts.append(Part("other", tuple(holders), params["other"], other_flops))
    parts = [p for p in parts if p.name not in ("stem", "head") or p.modules or p.params]
    return parts, unsupported


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _modules_cell(modules: Sequence[str], limit: int = 4) -> str:
    shown = [f"`{m}`" for m in modules[:limit]]
    if len(modules) > limit:
        shown.append(f"… ({len(modules)} modules)")
    return ", ".join(shown)


def _published_table(name: str, params: int, flops_per_image: float, size: tuple[int, int]) -> str:
    from zoo.published import PUBLISHED, rounds_to

    published = PUBLISHED.get(name)
    if published is None:
        return f"No published figures for `{name}` (`zoo.published.PUBLISHED` has the zoo's)."
    rows = []
    if published.params is not None:
        agree = "rounds to it" if rounds_to(params, published.params) else "does not round to it"
        delta = f"{_percent(params / published.params_value - 1)} ({agree})"
        rows.append(["params", _count(params, "M"), published.params, delta])
    if published.official_params is not None:
        same = "equal" if params == published.official_params else f"{params - published.official_params:+,}"
        rows.append(["params (official code)", f"{params:,}", f"{published.official_params:,}", same])
    if published.flops is not None:
        if size == (224, 224):
            delta = _percent(flops_per_image / published.flops_value - 1)
        else:
            delta = "— (published at 224×224; run with --size 224 224)"
        rows.append([f"FLOPs per image at {size[0]}×{size[1]}", _count(flops_per_image, "G"), published.flops, delta])
    if not rows:
        return f"No published figures for `{name}`."
    table = markdown_table(["", "ours", "published", "Δ"], rows, align="lrrl")
    return f"Published: {published.source}.\n\n{table}"


def _run_flops(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import timm

    import zoo  # registers the zoo's models with timm

    if args.zoo == (args.model is not None):
        parser.error("give either a MODEL or --zoo (the table of every zoo model)")
    if args.zoo:
        if args.size is not None or args.batch != 1:
            parser.error("--zoo measures every model at 224x224, batch 1; drop --size and --batch")
        from benchmarks import zoo_table

        return zoo_table.main([])
    name = args.model
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        parser.error(
            f"unknown model {name!r}: not a zoo or timm model name.{hint} "
            f"Run `{_PROG} list --models` for the zoo's {len(zoo.list_models())} models, or see timm.list_models()."
        )
    torch.manual_seed(0)
    model = timm.create_model(name)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, *default_size = cfg.get("input_size", (3, 224, 224))
    size = tuple(args.size) if args.size else tuple(default_size)
    input_size = (args.batch, channels, *size)
    try:
        parts, unsupported = stage_breakdown(model, input_size)
    except (AssertionError, RuntimeError, ValueError) as error:  # timm checks input sizes with assert
        print(f"{_PROG} flops: error: {name} does not run on an input of {input_size}: {error}", file=sys.stderr)
        return 1
    total_params = sum(p.params for p in parts)
    total_flops = sum(p.flops for p in parts)
    unit = _unit_for(total_flops)
    rows = [
        [
            p.name,
            _modules_cell(p.modules),
            _params(p.params),
            _count(p.flops, unit),
            f"{100 * p.flops / total_flops:.1f}%" if total_flops else "—",
        ]
        for p in parts
    ]
    rows.append(["**total**", "", f"**{_count(total_params, 'M')}**", f"**{_count(total_flops, unit)}**", "100%"])
    shape = "×".join(str(n) for n in input_size)
    print(f"## `{name}`: parameters and FLOPs at {shape}\n")
    print("FLOPs are multiply-accumulates (fvcore's convention, that of the published tables), for the whole batch.\n")
    print(markdown_table(["part", "modules", "params", "FLOPs", "share"], rows, align="llrrr"))
    print()
    print(_published_table(name, total_params, total_flops / args.batch, size))
    if any(p.name == "other" for p in parts):
        print(
            "\n`other`: parameters that no stage holds (modules that never run themselves, such as "
            "KernelWarehouse's warehouses, or parameters of the model itself) and FLOPs of the model's "
            "own forward outside its submodules."
        )
    if unsupported:
        ops = ", ".join(f"`{op}` ×{n}" for op, n in sorted(unsupported.items()))
        print(f"\nOperators fvcore cannot count (they count 0): {ops}.")
    return 0


# --- bench --------------------------------------------------------------------------------------


def _run_bench(args: argparse.Namespace) -> int:
    import importlib

    module_name = f"benchmarks.{'docs_assets' if args.command == 'docs' else args.suite}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in ("benchmarks", module_name):
            raise
        print(
            f"{_PROG} bench: error: {module_name} is not available ({error}); "
            "the benchmarks ship with a source checkout or a pip install of the repository.",
            file=sys.stderr,
        )
        return 1
    if args.command == "docs":
        argv = ["--models", args.models, *(["--output-dir", args.output_dir] if args.output_dir else [])]
    else:
        argv = list(args.args)
    result = module.main(argv)
    return result if isinstance(result, int) else 0


# --- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unifiedops`` command (used by [`main`][unifiedops.cli.main]).

    Returns:
        The parser, with the subcommands ``list``, ``flops``, ``bench``, ``docs`` and ``shootout``.
    """
    from unifiedops import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="One aggregation operator: the catalog of presets and zoo models, FLOPs, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,flops,bench,docs,shootout}")

    listing = commands.add_parser(
        "list", help="every preset and zoo model with its point on the three axes, parameters and paper"
    )
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--presets", action="store_true", help="only the presets")
    which.add_argument("--models", action="store_true", help="only the zoo models")
    listing.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="output format")

    flops = commands.add_parser(
        "flops", help="parameters and FLOPs (MACs) of a model per stage, beside the published figures"
    )
    flops.add_argument(
        "model",
        nargs="?",
        help="a timm.create_model name: a zoo model (`unifiedops list --models`) or timm's; omit with --zoo",
    )
    flops.add_argument(
        "--zoo",
        action="store_true",
        help="every zoo model at 224x224 against its published figures; writes benchmarks/results/zoo.md, "
        "the table the docs show (a few minutes)",
    )
    flops.add_argument(
        "--size",
        nargs=2,
        type=_positive_int,
        metavar=("H", "W"),
        default=None,
        help="input size (default: the model's, 224 224)",
    )
    flops.add_argument("--batch", type=_positive_int, default=1, help="batch size (default: 1)")
    flops.set_defaults(subparser=flops)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark: ops (python -m benchmarks.ops) or models (python -m benchmarks.models)",
        description="Run a benchmark; the arguments after the suite go to it (`unifiedops bench ops --help`).",
    )
    bench.add_argument("suite", choices=("ops", "models"), help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the benchmark, e.g. --quick")

    docs = commands.add_parser(
        "docs",
        help="regenerate the docs' zoo table and figures from the code and the last benchmark results "
        "(python -m benchmarks.docs_assets; a few minutes)",
        description="Regenerate the docs' zoo table and figures (python -m benchmarks.docs_assets).",
    )
    docs.add_argument("--models", default="*", help="shell-style pattern over the zoo's models (default: all)")
    docs.add_argument("--output-dir", default=None, help="write every file into this folder instead")
    _add_shootout_parser(commands)
    return parser


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated ints, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated ints >= 0, got {text!r}")
    return seeds


def _add_shootout_parser(commands: argparse._SubParsersAction) -> None:
    shootout = commands.add_parser(
        "shootout",
        help="train one backbone with each mixer under one recipe and compare them (zoo.shootout)",
        description="Train one backbone once per (mixer, seed) with the identical recipe and data order; report "
        "top-1 mean and std over seeds, parameters, FLOPs, throughput and training time per mixer. Runs resume "
        "where they stopped; under torchrun the same command trains with DDP.",
    )
    shootout.add_argument("--quick", action="store_true", help="the short recipe and seeds 0,1 (minutes on a CPU)")
    shootout.add_argument("--mixers", help="comma-separated mixer names (default: every preset that fits the slot)")
    shootout.add_argument("--list-mixers", action="store_true", help="print the default mixers and exit")
    shootout.add_argument("--seeds", type=_seed_list, help="comma-separated seeds (default: 0,1,2; --quick: 0,1)")
    shootout.add_argument(
        "--data", help="an image folder with train/ and val/, one sub-folder per class (default: scikit-learn's digits)"
    )
    shootout.add_argument("--img-size", type=_positive_int, help="image side (default: 32 digits, 224 folder)")
    shootout.add_argument("--spec", help="a JSON backbone spec (BackboneSpec.from_dict) with the mixer slot")
    shootout.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    shootout.add_argument("--batch-size", type=_positive_int, help="override the recipe's global batch size")
    shootout.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    shootout.add_argument("--warmup-epochs", type=int, help="override the recipe's warm-up epochs")
    shootout.add_argument(
        "--out", default="shootout", help="output folder; rerun with it to resume (default: shootout)"
    )
    shootout.add_argument("--device", help="training device (default: cuda if available, else cpu)")
    shootout.add_argument(
        "--workers", type=int, help="data-loading processes per training process (default: 0 digits, 8 folder)"
    )
    shootout.add_argument("--no-progress", action="store_true", help="no progress bars")
    shootout.set_defaults(subparser=shootout)


def _run_shootout(args: argparse.Namespace) -> int:
    from zoo.shootout.command import run

    try:
        return run(args)
    except (ValueError, TypeError) as e:
        args.subparser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unifiedops`` command.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 if a model cannot run at the requested size or a benchmark
        is unavailable (or the benchmark's own status). Bad arguments, an unknown model included,
        exit with status 2 through ``SystemExit``, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return _run_list(args)
        if args.command == "flops":
            return _run_flops(args, args.subparser)
        if args.command == "shootout":
            return _run_shootout(args)
        return _run_bench(args)
    except BrokenPipeError:  # `unifiedops list | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
