"""Test helpers: check an operator against the reference path, and hypothesis strategies to drive it.

Every [`Aggregation`][unifiedops.Aggregation] can run the literal formula ``y_i = sum_j w_ij x_ij``
(``path="reference"``) as well as its fast path. A new weight source, a composite module or a whole
model is correct when its fast paths agree with that formula on every configuration and input.
[`assert_matches_reference`][unifiedops.testing.assert_matches_reference] checks one operator on
one input; the strategies ([`aggregations`][unifiedops.testing.aggregations],
[`neighbourhoods`][unifiedops.testing.neighbourhoods],
[`weight_sources`][unifiedops.testing.weight_sources], [`shapes`][unifiedops.testing.shapes],
[`feature_maps`][unifiedops.testing.feature_maps], [`inputs_for`][unifiedops.testing.inputs_for])
let [hypothesis](https://hypothesis.readthedocs.io) search the configurations and inputs.

``assert_matches_reference`` and ``randomize_`` need only torch. The strategies need hypothesis
(``pip install hypothesis``); it is imported when a strategy function is called, so importing this
module never requires it.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unifiedops.aggregation import Aggregation
from unifiedops.dcd import DCDKernel
from unifiedops.neighbourhoods import BORDERS, Global, Neighbourhood, Point, Sliding, Window
from unifiedops.paths import PATHS
from unifiedops.weights import DenseKernel, PositionKernel, QKAttention, SampleKernel, StaticKernel, WeightSource

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "NEIGHBOURHOOD_KINDS",
    "SOURCE_KINDS",
    "aggregations",
    "assert_matches_reference",
    "feature_maps",
    "inputs_for",
    "neighbourhoods",
    "randomize_",
    "shapes",
    "weight_sources",
]

NEIGHBOURHOOD_KINDS = ("sliding", "window", "global", "point")
"""Names [`neighbourhoods`][unifiedops.testing.neighbourhoods] draws from: [`Sliding`][unifiedops.Sliding],
[`Window`][unifiedops.Window], [`Global`][unifiedops.Global], [`Point`][unifiedops.Point]."""

SOURCE_KINDS = ("static", "dense", "sample", "decomposed", "position", "attention")
"""Names [`weight_sources`][unifiedops.testing.weight_sources] draws from:
[`StaticKernel`][unifiedops.StaticKernel], [`DenseKernel`][unifiedops.DenseKernel],
[`SampleKernel`][unifiedops.SampleKernel], [`DCDKernel`][unifiedops.DCDKernel],
[`PositionKernel`][unifiedops.PositionKernel], [`QKAttention`][unifiedops.QKAttention]."""

# Which neighbourhoods and sources make each fast path the automatic choice (see unifiedops.paths).
_CONV_BORDERS = ("zeros", "reflect", "mask")
_PATH_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "conv": (("sliding", "point"), ("static", "dense")),
    "decomposed": (("sliding", "point"), ("decomposed",)),
    "batched_conv": (("sliding", "point"), ("sample",)),
    "shifted_sum": (("sliding", "point"), ("position",)),
    "window_sdpa": (("window",), ("attention",)),
    "halo_sdpa": (("sliding",), ("attention",)),
    "global_sdpa": (("global",), ("attention",)),
}


# --- comparing against the reference path -------------------------------------------------------------


@torch.no_grad()
def randomize_(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Overwrite every parameter with ``N(0, scale^2)`` noise and BatchNorm statistics with non-trivial values.

    Default initialisations hide bugs: a zero ``bias``, a near-zero relative-position table or
    identity BatchNorm statistics make a dropped or misindexed term invisible. Compare randomised
    modules. Draws from torch's global generator (seed it with ``torch.manual_seed``).

    Args:
        module: Any module; changed in place.
        scale: Standard deviation of the parameter noise.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> from unifiedops import DynamicDWConv
        >>> from unifiedops.testing import randomize_
        >>> dyn = DynamicDWConv(8, 3)
        >>> bool(dyn.bias.eq(0).all())  # DWNet initialises the bias at zero
        True
        >>> bool(randomize_(dyn).bias.ne(0).all())
        True
    """
    for p in module.parameters():
        p.copy_(torch.randn_like(p) * scale)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn_like(b) * 0.3)
        elif name.endswith("running_var"):
            b.copy_(torch.rand_like(b) + 0.5)
    return module


def _flatten(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output: a tensor, or lists, tuples and dicts of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in out for t in _flatten(out[key])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    raise TypeError(f"op must return tensors (or lists, tuples or dicts of them), got {type(out).__name__}")


def _plans(aggs: dict[str, Aggregation], paths: str | Sequence[str] | None) -> list[tuple[str, dict[str, str]]]:
    """``(label, {aggregation name: path})`` for every run compared against the all-reference run."""

    def show(name: str) -> str:
        return name or "op"

    if paths is None:
        current = {name: agg.path for name, agg in aggs.items()}
        if all(p == "reference" for p in current.values()):
            raise ValueError(
                "every Aggregation in op already runs path='reference', so there is nothing to compare; "
                "set a fast path or pass paths='all'"
            )
        fast = [f"{show(n)}={p!r}" for n, p in current.items() if p != "reference"]
        shown = ", ".join(fast) if len(fast) <= 4 else ", ".join(fast[:3]) + f", ... {len(fast)} in all"
        return [(f"current paths ({shown})", current)]
    if paths == "all":
        plans = []
        for name, agg in aggs.items():
            for p in agg.paths[:-1]:
                plan = dict.fromkeys(aggs, "reference")
                plan[name] = p
                plans.append((f"{show(name)} on path {p!r}", plan))
        if not plans:
            raise ValueError("no Aggregation in op has a fast path: only path='reference' applies")
        return plans
    names = [paths] if isinstance(paths, str) else list(paths)
    if not names:
        raise ValueError("paths must name at least one path, or be None or 'all'")
    plans = []
    for p in names:
        if p not in PATHS or p == "reference":
            fast = [name for name in PATHS if name != "reference"]
            raise ValueError(f"paths must be None, 'all' or fast paths from {fast}; got {p!r}")
        plan = {name: p if p in agg.paths else "reference" for name, agg in aggs.items()}
        if all(v == "reference" for v in plan.values()):
            raise ValueError(f"path {p!r} applies to no Aggregation in op")
        plans.append((f"path {p!r}", plan))
    return plans


def _run(
    op: nn.Module,
    aggs: dict[str, Aggregation],
    plan: dict[str, str],
    x: torch.Tensor,
    seed: int,
    grad: bool,
    cotangents: list[torch.Tensor] | None,
) -> tuple[list[torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor], list[torch.Tensor | None] | None]:
    for name, agg in aggs.items():  # parents before children: a composite's setter runs first
        agg.path = plan[name]
    op.zero_grad(set_to_none=True)
    xx = x.detach().clone()
    if grad and xx.is_floating_point():
        xx.requires_grad_(True)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # dropout and other random layers draw the same numbers on every path (torch.manual_seed would
        # also queue a lazy CUDA seeding with a stack trace, which costs more than a small forward)
        torch.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        with torch.set_grad_enabled(grad):
            outs = _flatten(op(xx))
        if grad:
            if cotangents is None:
                g = torch.Generator().manual_seed(seed)
                cotangents = [
                    torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) if o.requires_grad else None
                    for o in outs
                ]
            pairs = [(o, c) for o, c in zip(outs, cotangents, strict=True) if c is not None and o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [c for _, c in pairs])
    gx = xx.grad.detach() if xx.grad is not None else None
    gp = {n: p.grad.detach().clone() for n, p in op.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], gx, gp, cotangents


def assert_matches_reference(
    op: nn.Module,
    x: torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    paths: str | Sequence[str] | None = None,
    dtype: torch.dtype | None = torch.float64,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    grad: bool = True,
    seed: int = 0,
    copy: bool = True,
) -> float:
    """Assert that ``op`` computes what it computes with every aggregation on the reference path.

    ``op`` is an [`Aggregation`][unifiedops.Aggregation] or any module that contains some (a
    composite preset, a block, a whole zoo model). The check runs ``op`` on the fast paths chosen by
    ``paths``, then with every aggregation on ``path="reference"``, and compares the outputs and,
    with ``grad``, the gradients of the input and of every parameter for one random cotangent.

    By default ``op`` itself is never changed: the runs use a deep copy, cast to ``dtype``. Float64 is the
    default because fast paths reorder sums: in float32 they differ from the reference by ~1e-6
    relative, which would hide real errors of that size. Train and eval mode are kept as they are;
    every run starts from the same random seed, so dropout draws the same masks on every path.

    Args:
        op: The module to check; must contain at least one ``Aggregation``.
        x: Input tensor, e.g. ``(B, C, H, W)``; cast to ``dtype``. Give ``x`` or ``input_shape``.
        input_shape: Shape of a standard-normal input drawn from ``seed``, e.g. ``(2, 8, 7, 7)``.
        paths: Which runs to compare with the reference run. ``None``: one run on the paths the
            aggregations have now. ``"all"``: one run per aggregation and per fast path that can
            compute it, with every other aggregation on the reference path (a failure names the
            aggregation). A path name or a list of them: one run per name, every aggregation that
            the path can compute on it and the others on the reference path.
        dtype: Floating dtype of the copy and the input; ``None`` keeps them as they are.
        rtol: Relative tolerance of ``torch.testing.assert_close``.
        atol: Absolute tolerance of ``torch.testing.assert_close``.
        grad: Also compare the input gradient and every parameter gradient.
        seed: Seed of the drawn input, the cotangent and the random state of each run.
        copy: Run on a deep copy of ``op``. ``False`` runs on ``op`` itself, for a module that cannot
            be deep-copied or to save the copy: ``op`` is not cast (``dtype`` casts only the input),
            and its paths and ``.grad`` attributes are restored afterwards, also when the check fails.
            BatchNorm statistics of a module in train mode are updated by every run either way.

    Returns:
        The largest absolute difference found over all compared tensors (outputs and gradients), so
        a test can report how close the paths are.

    Raises:
        AssertionError: If an output or gradient differs beyond the tolerances, the reference
            output or gradient is not finite, or the paths give gradients to different parameters.
            The message names the run (path, and aggregation with ``paths="all"``) and the tensor.
        TypeError: If ``op`` is not an ``nn.Module``, or cannot be deep-copied (with ``copy``).
        ValueError: If ``op`` contains no ``Aggregation``, if not exactly one of ``x`` and
            ``input_shape`` is given, if ``paths`` names an unknown path or one that applies to no
            aggregation, or if there is no fast path to compare (every aggregation is on the
            reference path and ``paths`` is ``None``).

    Examples:
        >>> import torch
        >>> from unifiedops import DWConv, NeighborhoodAttention
        >>> from unifiedops.testing import assert_matches_reference
        >>> assert_matches_reference(DWConv(8, 3), input_shape=(2, 8, 6, 6)) < 1e-12
        True
        >>> block = torch.nn.Sequential(DWConv(8, 3), torch.nn.GELU(), NeighborhoodAttention(8, 2, 3))
        >>> assert_matches_reference(block, torch.randn(2, 8, 5, 7), paths="all") < 1e-12
        True
    """
    if not isinstance(op, nn.Module):
        raise TypeError(f"op must be an nn.Module, got {type(op).__name__}")
    if (x is None) == (input_shape is None):
        raise ValueError("give exactly one of x and input_shape")
    if x is not None and not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not any(isinstance(m, Aggregation) for m in op.modules()):
        raise ValueError(f"op contains no Aggregation, so there is no reference path to compare with: {op!r}"[:500])
    if copy:
        try:
            op = _copy.deepcopy(op)
        except Exception as error:
            raise TypeError(
                f"op cannot be deep-copied ({type(error).__name__}: {error}); pass copy=False to check op itself"
            ) from error
        if dtype is not None:
            op = op.to(dtype)
        return _compare(op, x, input_shape, paths, dtype, rtol, atol, grad, seed)
    aggs = [m for m in op.modules() if isinstance(m, Aggregation)]
    saved_paths = [m.path for m in aggs]
    saved_grads = [(p, p.grad) for p in op.parameters()]
    try:
        return _compare(op, x, input_shape, paths, dtype, rtol, atol, grad, seed)
    finally:
        for m, path in zip(aggs, saved_paths, strict=True):  # parents first, as set
            m.path = path
        for p, g in saved_grads:
            p.grad = g


def _compare(
    op: nn.Module,
    x: torch.Tensor | None,
    input_shape: Sequence[int] | None,
    paths: str | Sequence[str] | None,
    dtype: torch.dtype | None,
    rtol: float,
    atol: float,
    grad: bool,
    seed: int,
) -> float:
    if x is None:
        g = torch.Generator().manual_seed(seed)
        param = next(op.parameters(), None)
        x = torch.randn(tuple(input_shape), generator=g, dtype=dtype or torch.get_default_dtype())
        if param is not None:
            x = x.to(param.device)
    elif dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    aggs = {name: m for name, m in op.named_modules() if isinstance(m, Aggregation)}
    plans = _plans(aggs, paths)

    y_ref, gx_ref, gp_ref, cotangents = _run(op, aggs, dict.fromkeys(aggs, "reference"), x, seed, grad, None)
    for i, y in enumerate(y_ref):
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise AssertionError(f"output {i} of the reference path is not finite; the comparison means nothing")
    if grad and any(p.requires_grad for p in op.parameters()) and not gp_ref:
        raise AssertionError("the reference path gave no parameter a gradient: does op's output depend on them?")
    worst = 0.0

    def compare(actual: torch.Tensor, expected: torch.Tensor, what: str, label: str) -> None:
        nonlocal worst
        if actual.shape != expected.shape:
            raise AssertionError(f"{label}: {what} has shape {tuple(actual.shape)}, reference {tuple(expected.shape)}")
        if expected.numel():
            worst = max(worst, (actual.double() - expected.double()).abs().max().item())
        torch.testing.assert_close(
            actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{label}: {what} differs from the reference: {m}"
        )

    for label, plan in plans:
        ys, gx, gp, _ = _run(op, aggs, plan, x, seed, grad, cotangents)
        if len(ys) != len(y_ref):
            raise AssertionError(f"{label}: op returned {len(ys)} tensors, the reference path {len(y_ref)}")
        for i, (y, r) in enumerate(zip(ys, y_ref, strict=True)):
            compare(y, r, "the output" if len(ys) == 1 else f"output {i}", label)
        if not grad:
            continue
        if (gx is None) != (gx_ref is None):
            raise AssertionError(f"{label}: the input gradient exists on one path only")
        if gx is not None:
            if not torch.isfinite(gx_ref).all():
                raise AssertionError("the input gradient of the reference path is not finite")
            compare(gx, gx_ref, "the input gradient", label)
        if set(gp) != set(gp_ref):
            raise AssertionError(
                f"{label}: gradients reach different parameters; only on this path: {sorted(set(gp) - set(gp_ref))}, "
                f"only on the reference path: {sorted(set(gp_ref) - set(gp))}"
            )
        for name in gp_ref:
            compare(gp[name], gp_ref[name], f"the gradient of {name}", label)
    return worst


# --- hypothesis strategies -----------------------------------------------------------------------------


def _st():
    try:
        from hypothesis import strategies
    except ImportError as error:  # pragma: no cover - hypothesis is a dev dependency
        raise ImportError("the strategies of unifiedops.testing need hypothesis: pip install hypothesis") from error
    return strategies


def _strategy(value: Any, name: str) -> SearchStrategy:
    """``value`` if it is a strategy, else a strategy of that one value (or of the listed values)."""
    st = _st()
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must not be empty")
        return st.sampled_from(value)
    return st.just(value)


def _cached(strategy_function):
    """Build each strategy once per argument set: the per-path test strategies call the public ones on
    every draw, and a new strategy object costs hypothesis a validation."""
    cache: dict = {}

    @functools.wraps(strategy_function)
    def wrapper(*args, **kwargs):
        def freeze(v):
            return tuple(v) if isinstance(v, list) else v

        try:
            key = (tuple(freeze(a) for a in args), tuple(sorted((k, freeze(v)) for k, v in kwargs.items())))
            hash(key)
        except TypeError:
            return strategy_function(*args, **kwargs)
        if key not in cache:
            cache[key] = strategy_function(*args, **kwargs)
        return cache[key]

    return wrapper


def _divisors(n: int, limit: int) -> list[int]:
    return [r for r in range(1, min(n, limit) + 1) if n % r == 0]


def _check_kinds(name: str, kinds: Iterable[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise ValueError(f"{name} must not be empty")
    for kind in kinds:
        if kind not in allowed:
            raise ValueError(f"{name} must be drawn from {allowed}; got {kind!r}")
    return kinds


@_cached
def shapes(
    channels: int | SearchStrategy[int] | None = None,
    *,
    batch: int | SearchStrategy[int] | None = None,
    min_side: int = 1,
    max_side: int = 13,
    channels_last: bool = False,
) -> SearchStrategy[tuple[int, int, int, int]]:
    """Strategy of input shapes ``(B, C, H, W)`` (or ``(B, H, W, C)``).

    Small and odd sizes are where border handling breaks (a window larger than the image, a
    dilation longer than an axis), so the default range starts at 1.

    Args:
        channels: ``C``, or a strategy of it; default 1 to 12.
        batch: ``B``, or a strategy of it; default 1 to 3.
        min_side: Smallest ``H`` and ``W``.
        max_side: Largest ``H`` and ``W``.
        channels_last: Draw ``(B, H, W, C)`` instead.

    Returns:
        A strategy of 4-tuples of ints.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops.testing import shapes
        >>> find(shapes(8, min_side=3), lambda s: True)  # the simplest shape it draws
        (1, 8, 3, 3)
    """
    st = _st()
    if min_side < 1 or max_side < min_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    c = st.integers(1, 12) if channels is None else _strategy(channels, "channels")
    b = st.integers(1, 3) if batch is None else _strategy(batch, "batch")
    side = st.integers(min_side, max_side)
    if channels_last:
        return st.tuples(b, side, side, c)
    return st.tuples(b, c, side, side)


@_cached
def feature_maps(
    channels: int | SearchStrategy[int] | None = None,
    *,
    batch: int | SearchStrategy[int] | None = None,
    min_side: int = 1,
    max_side: int = 13,
    channels_last: bool = False,
    memory_formats: Sequence[torch.memory_format] = (torch.contiguous_format, torch.channels_last),
    dtype: torch.dtype = torch.float64,
) -> SearchStrategy[torch.Tensor]:
    """Strategy of standard-normal input tensors of shapes drawn by [`shapes`][unifiedops.testing.shapes].

    The values come from a drawn seed (hypothesis shrinks the shape, not the values). A
    ``(B, C, H, W)`` tensor is also drawn in the channels-last memory format, which every path must
    accept.

    Args:
        channels: ``C``, or a strategy of it; default 1 to 12.
        batch: ``B``, or a strategy of it; default 1 to 3.
        min_side: Smallest ``H`` and ``W``.
        max_side: Largest ``H`` and ``W``.
        channels_last: Draw ``(B, H, W, C)`` tensors (the layout of ``Aggregation(channels_last=True)``).
        memory_formats: Memory formats to draw ``(B, C, H, W)`` tensors in.
        dtype: Floating dtype.

    Returns:
        A strategy of tensors ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops.testing import feature_maps
        >>> x = find(feature_maps(4, batch=2, min_side=5), lambda x: x.is_contiguous())
        >>> x.shape, x.dtype
        (torch.Size([2, 4, 5, 5]), torch.float64)
    """
    st = _st()
    formats = _strategy(tuple(memory_formats), "memory_formats")

    @st.composite
    def draw_map(draw) -> torch.Tensor:
        shape = draw(shapes(channels, batch=batch, min_side=min_side, max_side=max_side, channels_last=channels_last))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        x = torch.randn(shape, generator=g, dtype=dtype)
        if not channels_last:
            x = x.contiguous(memory_format=draw(formats))
        return x

    return draw_map()


@_cached
def neighbourhoods(
    kinds: str | Sequence[str] = NEIGHBOURHOOD_KINDS,
    *,
    kernel_sizes: Sequence[int] = (1, 3, 5, 7),
    dilations: Sequence[int] = (1, 2, 3),
    borders: Sequence[str] = BORDERS,
    strides: Sequence[int] = (1,),
    window_sizes: Sequence[int] = (1, 2, 3, 4, 5),
    window_borders: Sequence[str] = ("zeros", "mask"),
) -> SearchStrategy[Neighbourhood]:
    """Strategy of neighbourhoods: [`Sliding`][unifiedops.Sliding], [`Window`][unifiedops.Window]
    (every shift ``0 <= shift < size``), [`Global`][unifiedops.Global], [`Point`][unifiedops.Point].

    Args:
        kinds: Names from [`NEIGHBOURHOOD_KINDS`][unifiedops.testing.NEIGHBOURHOOD_KINDS]; a name
            listed twice is drawn twice as often.
        kernel_sizes: Odd kernel sizes of ``Sliding``.
        dilations: Dilations of ``Sliding``.
        borders: Border rules of ``Sliding``, from [`BORDERS`][unifiedops.BORDERS].
        strides: Strides of ``Sliding``.
        window_sizes: Sizes of ``Window``.
        window_borders: Border rules of ``Window``.

    Returns:
        A strategy of neighbourhoods.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops.testing import neighbourhoods
        >>> find(neighbourhoods("window"), lambda nb: nb.shift > 0)
        Window(size=2, shift=1, border='zeros')
        >>> find(neighbourhoods("sliding", borders=["clamp"]), lambda nb: nb.dilation > 1)
        Sliding(kernel_size=1, dilation=2, border='clamp', stride=1)
    """
    st = _st()
    kinds = _check_kinds("kinds", kinds, NEIGHBOURHOOD_KINDS)
    for k in kernel_sizes:
        if k % 2 == 0:
            raise ValueError(f"kernel_sizes must be odd, got {k}")

    def choice(values: Sequence[Any], name: str) -> SearchStrategy:
        return _strategy(tuple(values), name)

    sliding = st.builds(
        Sliding,
        choice(kernel_sizes, "kernel_sizes"),
        choice(dilations, "dilations"),
        choice(borders, "borders"),
        stride=choice(strides, "strides"),
    )
    window_border = choice(window_borders, "window_borders")
    window_by_size = {
        size: st.builds(Window, st.just(size), shift=st.integers(0, size - 1), border=window_border)
        for size in window_sizes
    }
    by_kind = {
        "sliding": sliding,
        "window": choice(tuple(window_by_size), "window_sizes").flatmap(window_by_size.__getitem__),
        "global": st.just(Global()),
        "point": st.just(Point()),
    }
    return st.sampled_from(kinds).flatmap(by_kind.__getitem__)


def weight_sources(
    channels: int | SearchStrategy[int] | None = None,
    kinds: str | Sequence[str] = SOURCE_KINDS,
    *,
    groups: int | SearchStrategy[int] | None = None,
    neighbourhood: Neighbourhood | None = None,
) -> SearchStrategy[WeightSource]:
    """Strategy of the library's weight sources over their options, valid for ``channels``.

    Drawn options: ``groups`` (``None`` or a divisor of ``C``) and ``bias`` of the static kernels;
    ``out_channels`` and channel ``groups`` of ``DenseKernel``; ``reduction`` of the predicted
    kernels; ``out_channels``, ``latent``, ``squeeze``, ``pool`` and ``bias`` of ``DCDKernel``; heads,
    ``qkv_bias``, ``rel_pos_bias``, ``scale``, ``value_channels``, ``projection``, ``out_proj`` and
    ``coord_pos_embed`` of ``QKAttention``.

    Args:
        channels: ``C``, or a strategy of it; default ``G * w`` for ``G`` groups in 1 to 4 and
            ``w`` in 1 to 3 channels per group.
        kinds: Names from [`SOURCE_KINDS`][unifiedops.testing.SOURCE_KINDS]; a name listed twice is
            drawn twice as often.
        groups: Weight groups (attention heads), or a strategy of them; must divide ``C``. Default:
            a divisor of ``C`` up to 4.
        neighbourhood: The neighbourhood the source will be used with. Given a
            [`Global`][unifiedops.Global] one, only ``"attention"`` is drawn, without a relative-position
            table (it needs a fixed size); ACmix's coordinate embedding is drawn with ``Sliding`` only,
            DCD kernels with ``Point`` or zero-padded ``Sliding`` only.

    Returns:
        A strategy of weight sources.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops.testing import weight_sources
        >>> find(weight_sources(6, "attention"), lambda s: s.heads == 3 and not s.qkv_bias).value_channels is None
        True
    """
    kinds = _check_kinds("kinds", kinds, SOURCE_KINDS)
    # only two facts about the neighbourhood matter; keying the cache on them keeps it small
    fixed = neighbourhood is None or neighbourhood.slots is not None
    sliding = isinstance(neighbourhood, Sliding)
    if not fixed:
        kinds = tuple(k for k in kinds if k == "attention")
        if not kinds:
            raise ValueError(f"only attention sources work with {neighbourhood}, and kinds excludes 'attention'")
    if neighbourhood is not None and not _compatible(neighbourhood, DCDKernel(1, 1, 1, 1)):
        kinds = tuple(k for k in kinds if k != "decomposed")
        if not kinds:
            raise ValueError(f"DCD kernels need Point or zero-padded Sliding, got {neighbourhood}")
    return _weight_sources(channels, kinds, groups, fixed, sliding)


@_cached
def _weight_sources(
    channels: int | SearchStrategy[int] | None, kinds: tuple[str, ...], groups: Any, fixed: bool, sliding: bool
) -> SearchStrategy[WeightSource]:
    st = _st()

    @st.composite
    def channels_and_groups(draw) -> tuple[int, int]:
        if channels is None:
            g = draw(st.integers(1, 4)) if groups is None else draw(_strategy(groups, "groups"))
            return g * draw(st.integers(1, 3)), g
        c = draw(_strategy(channels, "channels"))
        g = draw(st.sampled_from(_divisors(c, 4))) if groups is None else draw(_strategy(groups, "groups"))
        return c, g

    sizes = channels_and_groups()
    kind_strategy = st.sampled_from(kinds)

    @st.composite
    def draw_source(draw) -> WeightSource:
        c, g = draw(sizes)
        kind = draw(kind_strategy)
        if kind == "static":
            return StaticKernel(c, groups=draw(st.sampled_from([None, g])), bias=draw(st.booleans()))
        if kind == "dense":
            return DenseKernel(
                c, g * draw(st.integers(1, 3)), groups=draw(st.sampled_from(_divisors(g, 4))), bias=draw(st.booleans())
            )
        if kind in ("sample", "position"):
            reduction = draw(st.sampled_from(_divisors(c, 4)))
            if kind == "sample":
                return SampleKernel(
                    c, groups=draw(st.sampled_from([None, g])), reduction=reduction, bias=draw(st.booleans())
                )
            return PositionKernel(c, groups=g, reduction=reduction)
        if kind == "decomposed":
            dims = (draw(st.integers(1, 4)) for _ in range(2))
            return DCDKernel(c, g * draw(st.integers(1, 3)), *dims, draw(st.integers(1, 2)), draw(st.booleans()))
        return QKAttention(
            c,
            heads=g,
            qkv_bias=draw(st.booleans()),
            rel_pos_bias=fixed and draw(st.booleans()),
            scale=draw(st.sampled_from([None, 0.37])),
            value_channels=draw(st.sampled_from([None, g * draw(st.integers(1, 3))])),
            projection=draw(st.sampled_from(["linear", "conv"])),
            out_proj=draw(st.booleans()),
            coord_pos_embed=sliding and draw(st.booleans()),
        )

    return draw_source()


def _compatible(nb: Neighbourhood, source: WeightSource) -> bool:
    """Whether ``Aggregation(nb, source)`` can be built (kernels and bias tables need a fixed size)."""
    if isinstance(source, DCDKernel):  # its 1x1 factors act on the centre tap of a zero-padded kernel
        return isinstance(nb, Point) or (isinstance(nb, Sliding) and nb.border == "zeros")
    if nb.slots is not None:
        return True
    if isinstance(source, QKAttention):
        return not source.rel_pos_bias
    return source.dynamism == "attention"


_neighbourhoods = neighbourhoods  # ``aggregations`` has an argument of that name


def aggregations(
    channels: int | SearchStrategy[int] | None = None,
    *,
    path: str | None = None,
    neighbourhoods: SearchStrategy[Neighbourhood] | None = None,
    sources: SearchStrategy[WeightSource] | None = None,
    channels_last: bool | None = None,
    randomize: bool = True,
    dtype: torch.dtype | None = torch.float64,
) -> SearchStrategy[Aggregation]:
    """Strategy of built [`Aggregation`][unifiedops.Aggregation] modules whose parts fit together.

    Kernel sources get neighbourhoods of fixed size, a relative-position table is drawn only where
    the neighbourhood has a fixed size, and with ``path`` every drawn module runs that fast path
    (its ``path`` after ``"auto"``). Draw inputs for a drawn module with
    [`inputs_for`][unifiedops.testing.inputs_for].

    Args:
        channels: ``C``, or a strategy of it; default as in
            [`weight_sources`][unifiedops.testing.weight_sources]. Ignored when ``sources`` is given.
        path: A fast path from [`PATHS`][unifiedops.paths.PATHS]: draw only the neighbourhoods and
            sources for which it is the automatic choice. ``None``: any valid pair.
        neighbourhoods: A strategy of neighbourhoods; default
            [`neighbourhoods`][unifiedops.testing.neighbourhoods] over every kind (restricted to
            those ``path`` runs).
        sources: A strategy of weight sources, e.g. ``st.builds(MySource, st.integers(1, 8))``;
            default [`weight_sources`][unifiedops.testing.weight_sources].
        channels_last: Build with ``channels_last`` (``True`` or ``False``); ``None`` draws it.
        randomize: Randomise the parameters and BatchNorm statistics with
            [`randomize_`][unifiedops.testing.randomize_] from a drawn seed, and put the module in
            eval mode.
        dtype: Cast the module to this dtype; ``None`` keeps float32.

    Returns:
        A strategy of ``Aggregation`` modules.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops.testing import aggregations
        >>> agg = find(aggregations(path="shifted_sum", channels_last=False), lambda m: True)
        >>> agg.path, type(agg.source).__name__, type(agg.neighbourhood).__name__
        ('shifted_sum', 'PositionKernel', 'Point')

        A property test of every configuration of a path (a code block, not a doctest):

        ```python
        from hypothesis import given, settings, strategies as st

        @settings(max_examples=50, deadline=None)
        @given(data=st.data())
        def test_shifted_sum(data):
            agg = data.draw(aggregations(path="shifted_sum"))
            assert_matches_reference(agg, data.draw(inputs_for(agg)))
        ```
    """
    st = _st()
    from hypothesis import assume

    if path is not None and path not in _PATH_KINDS:
        raise ValueError(f"path must be None or one of {tuple(_PATH_KINDS)}; got {path!r}")
    nb_kinds, source_kinds = _PATH_KINDS.get(path, (NEIGHBOURHOOD_KINDS, SOURCE_KINDS))
    if neighbourhoods is None:
        if path == "decomposed":
            nb_strategy = _neighbourhoods(nb_kinds, borders=("zeros",), strides=(1, 2, 3))
        elif path in ("conv", "batched_conv", "shifted_sum"):
            nb_strategy = _neighbourhoods(nb_kinds, borders=_CONV_BORDERS, strides=(1, 2, 3))
        elif path == "halo_sdpa":
            # the halo path takes a stride or a dilation, not both
            nb_strategy = _neighbourhoods(nb_kinds, strides=(1, 2, 3)).map(
                lambda nb: nb if nb.dilation == 1 else dataclasses.replace(nb, stride=1)
            )
        else:
            nb_strategy = _neighbourhoods(nb_kinds, strides=(1, 2))
    else:
        nb_strategy = neighbourhoods
    layouts = st.booleans() if channels_last is None else st.just(channels_last)

    @st.composite
    def draw_aggregation(draw) -> Aggregation:
        nb = draw(nb_strategy)
        if sources is None:
            kinds = source_kinds if nb.slots is not None else tuple(k for k in source_kinds if k == "attention")
            st_ = weight_sources(channels, kinds, neighbourhood=nb) if kinds else st.nothing()
            source = draw(st_)
        else:
            source = draw(sources)
        assume(_compatible(nb, source))
        if path is not None:
            assume(PATHS[path].applies(nb, source))
        module = Aggregation(nb, source, channels_last=draw(layouts))
        if dtype is not None:
            module = module.to(dtype)
        if randomize:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(draw(st.integers(0, 2**31 - 1)))
                randomize_(module)
            module.eval()
        return module

    return draw_aggregation()


def _min_side(neighbourhood: Neighbourhood) -> int:
    """Smallest input side a neighbourhood accepts (reflection padding must be shorter than the axis)."""
    if isinstance(neighbourhood, Sliding) and neighbourhood.border == "reflect":
        return neighbourhood.dilation * (neighbourhood.kernel_size // 2) + 1
    return 1


def inputs_for(
    module: Aggregation,
    *,
    batch: int | SearchStrategy[int] | None = None,
    max_side: int = 13,
    memory_formats: Sequence[torch.memory_format] = (torch.contiguous_format, torch.channels_last),
) -> SearchStrategy[torch.Tensor]:
    """Strategy of inputs an aggregation accepts: its channel count and layout, and sides long
    enough for a reflecting border.

    Args:
        module: An ``Aggregation`` (or a subclass, such as a preset).
        batch: ``B``, or a strategy of it; default 1 to 3.
        max_side: Largest ``H`` and ``W``.
        memory_formats: Memory formats to draw ``(B, C, H, W)`` tensors in.

    Returns:
        A strategy of tensors ``(B, C, H, W)`` (``(B, H, W, C)`` for a ``channels_last`` module) of
        the module's dtype.

    Examples:
        >>> from hypothesis import find
        >>> from unifiedops import Aggregation, Sliding, StaticKernel
        >>> from unifiedops.testing import inputs_for
        >>> agg = Aggregation(Sliding(5, border="reflect"), StaticKernel(4), channels_last=True)
        >>> find(inputs_for(agg), lambda x: True).shape  # 2 pixels of reflection need sides of 3
        torch.Size([1, 3, 3, 4])
    """
    if not isinstance(module, Aggregation):
        raise TypeError(f"module must be an Aggregation, got {type(module).__name__}")
    low = _min_side(module.neighbourhood)
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    return feature_maps(
        module.source.channels,
        batch=batch,
        min_side=low,
        max_side=max(low, max_side),
        channels_last=module.channels_last,
        memory_formats=memory_formats,
        dtype=dtype,
    )
