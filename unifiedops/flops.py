"""FLOP counts that are right for every execution path and for whole models.

Counts are **multiply-accumulates (MACs)**, fvcore's convention: one fused multiply-add is one
"flop". The FLOPs published for Swin, ConvNeXt, DWNet, VAN, UniFormer and most timm models are
MACs in this sense, so ``count_flops(model)`` compares with them directly.

The counter is fvcore's [`FlopCountAnalysis`](https://detectron2.readthedocs.io/en/latest/modules/fvcore.html)
(a ``torch.jit`` trace of one forward pass) with the handles below added or replaced.

**Kept from fvcore.** ``conv`` (any groups, including the batch-folded groups of
``batched_conv``), ``linear``, ``addmm``, ``bmm``, ``mm``, the norms (batch norm counts one
operation per element in eval mode, layer and group norm two), ``upsample_*``,
``adaptive_avg_pool2d`` and ``grid_sampler``.

**Added or replaced** (the table is [`FLOP_HANDLES`][unifiedops.flops.FLOP_HANDLES]):

* ``scaled_dot_product_attention`` and its fused variants: ``batch * Lq * Lk * (Dqk + Dv)``, the
  ``q k^T`` and ``attn v`` products, ``batch`` the broadcast of the leading dimensions; a mask, a
  scale and the softmax add nothing (fvcore counts the whole call 0);
* ``einsum``: exact, the product of the sizes of all indices of each pairwise contraction,
  evaluated left to right (fvcore's count is a float rounded to four significant digits);
* ``matmul``: ``batch * n * k * m`` with broadcast batch dimensions (fvcore's assumes the first
  operand carries the batch); ``baddbmm`` as ``bmm``;
* ``addcmul``: one per output element, the multiply-accumulate step of the ``shifted_sum`` path;
* ``sum`` of a ``mul`` of two floating-point tensors: one per element of the product, a
  contraction written as multiply then sum (unfold-based local aggregation, the ``reference``
  path); any other ``sum`` is free.

**Free.** Element-wise arithmetic (``add``, ``mul``, ``div``, activations, ``softmax``, ...),
reductions other than the contraction above (``mean``, ``amax``, ...), pooling other than
``adaptive_avg_pool2d``, and data movement (``pad``, ``roll``, ``index_select``, ...) count 0, as in
fvcore and in the published numbers; they are listed in [`FREE_OPS`][unifiedops.flops.FREE_OPS] and
do not warn. Any other operator fvcore has no handle for still counts 0, but is logged by fvcore
(``Unsupported operator aten::... encountered N time(s)``) and is listed by
``flop_counter(...).unsupported_ops()``: nothing with real arithmetic is skipped silently.

**Aggregations** (the convention for the operators of this library). An
[`Aggregation`][unifiedops.Aggregation] costs one MAC per output element per neighbour slot, times
the input channels of its group for a dense source, *whatever path runs it*:

* convolution (``conv``, ``batched_conv``): ``B * O * Ho * Wo * (C / groups) * K``; a depth-wise
  one ``B * C * Ho * Wo * K``, static, per-sample (DWNet's dynamic) or per-position (DWNet's
  inhomogeneous, involution); DWNet's official ``flops()`` counts its depth-wise conv the same way
  (``N * C * k^2`` in all three variants);
* the per-position product of LKA and other gates (``Point()``, one slot): ``B * C * H * W``. The
  official VAN code writes it as ``u * attn``, which fvcore counts 0; the difference is
  ``sum C * H * W`` over the blocks, 0.6 M MACs for VAN-B0 (0.07% of its 0.868 G);
* attention: ``B * heads * Ho * Wo * K * (Dqk + Dv)`` with ``K`` the neighbourhood's slots:
  ``k^2`` for ``Sliding(k)``, ``w^2`` for ``Window(w)``, ``H * W`` for ``Global()``, for every
  border rule (as a convolution counts its zero-padded taps and Swin counts masked pairs of its
  shifted windows). The ``halo_sdpa`` path computes more than this (each query tile attends to a
  key block of ``(T + k - 1)^2`` keys, masked down to its ``k^2``) and ``window_sdpa`` computes
  padded windows when the input is not a multiple of the window; so inside an attention
  aggregation on an SDPA path the traced SDPA count is replaced by the formula. The operator's
  definition, not the kernel's workaround, is what published counts measure.
* the weight generation (``qkv`` and output projections, kernel predictors, relative-position
  bias gathers) is counted as traced, with the rules above (``window_sdpa`` projects the padded
  input, as timm's and the official Swin do).

With these rules the count of an aggregation does not depend on its path, and a timm model counts
the same with fused attention (SDPA) on or off. DCD is the exception: its two forms do different
arithmetic (the ``decomposed`` path, its default and the official computation, convolves with the
static kernel and the narrow ``1 x 1`` factors; the kernel-space paths assemble ``B`` full kernels),
and each is counted as it runs.

Published figures and their tools: Swin and ConvNeXt were counted with fvcore (``4.5G``:
timm's ``swin_tiny_patch4_window7_224`` counts 4.509 G here, ``convnext_tiny`` 4.470 G, the same
as plain fvcore); DWNet with the hand-written ``flops()`` methods of its Swin-derived code (MACs,
with the depth-wise conv as above, plus a few element-wise terms); UniFormer ships an fvcore
``check_model.py``. VAN's README and paper give GFLOPs without naming the tool: the official
VAN-B0 counts 0.868 G with plain fvcore and here (published 0.9 G); counting its element-wise
GELU, additions and products as well (as ptflops-style tools do) would add 1% (0.877 G).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from unifiedops.aggregation import Aggregation

with warnings.catch_warnings():
    # fvcore 0.1.5 calls torch.jit.script at import, deprecated since torch 2.9.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ["FLOP_HANDLES", "FREE_OPS", "FlopCounter", "count_flops", "einsum_macs", "flop_breakdown", "flop_counter"]

Handle = Callable[[list, list], "int | Counter[str]"]

_SDPA = "scaled_dot_product_attention"
_SDPA_PATHS = frozenset({"window_sdpa", "halo_sdpa", "global_sdpa"})
_FLOATS = frozenset({"Float", "Double", "Half", "BFloat16"})


def _broadcast(*shapes: Sequence[int]) -> list[int]:
    """Right-aligned broadcast of leading dimensions; the larger size wins, so grouped-query
    attention (``Hq`` query heads over ``Hkv`` key heads) counts ``Hq`` heads."""
    rank = max((len(s) for s in shapes), default=0)
    padded = [[1] * (rank - len(s)) + list(s) for s in shapes]
    return [max(dims) for dims in zip(*padded, strict=True)]


def _sdpa_flop(inputs: list, outputs: list) -> Counter[str]:
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = _broadcast(q[:-2], k[:-2], v[:-2])
    return Counter({_SDPA: math.prod(batch) * q[-2] * k[-2] * (q[-1] + v[-1])})


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """Exact MACs of ``torch.einsum(equation, *operands)`` evaluated pairwise, left to right.

    Each pairwise contraction costs the product of the sizes of every index of its two operands
    (one multiply-add per term); a single operand costs nothing.

    Args:
        equation: The einsum equation, e.g. ``"bhnd,bhmd->bhnm"``; ``...`` is allowed.
        shapes: The operand shapes.

    Returns:
        The number of multiply-accumulates.

    Examples:
        >>> from unifiedops.flops import einsum_macs
        >>> einsum_macs("bhnd,bhmd->bhnm", [(2, 4, 49, 32), (2, 4, 49, 32)])
        614656
        >>> einsum_macs("...ij,...jk->...ik", [(3, 5, 7), (7, 2)])
        210
    """
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    operands = lhs.split(",")
    if len(operands) != len(shapes):
        raise ValueError(f"equation {equation!r} has {len(operands)} operands but {len(shapes)} shapes were given")
    if "..." in equation:
        # Broadcast dimensions get fresh letters, right-aligned across operands.
        free = [c for c in map(chr, range(0x100, 0x200)) if c not in equation]
        spans = [len(s) - (len(op) - 3) if "..." in op else 0 for op, s in zip(operands, shapes, strict=True)]
        width = max(spans)
        operands = [op.replace("...", "".join(free[width - n : width])) for op, n in zip(operands, spans, strict=True)]
        out = out.replace("...", "".join(free[:width]))
    if not arrow:
        letters = "".join(operands)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for op, shape in zip(operands, shapes, strict=True):
        for letter, size in zip(op, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    macs, current = 0, operands[0]
    for i, op in enumerate(operands[1:], start=1):
        involved = dict.fromkeys(current + op)
        macs += math.prod(sizes[c] for c in involved)
        later = out + "".join(operands[i + 1 :])
        current = "".join(c for c in involved if c in later)
    return macs


def _einsum_flop(inputs: list, outputs: list) -> Counter[str]:
    equation = inputs[0].toIValue()
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    return Counter({"einsum": einsum_macs(equation, shapes)})


def _matmul_flop(inputs: list, outputs: list) -> Counter[str]:
    a, b = get_shape(inputs[0]), get_shape(inputs[1])
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    return Counter({"matmul": math.prod(_broadcast(a[:-2], b[:-2])) * a[-2] * a[-1] * b[-1]})


def _baddbmm_flop(inputs: list, outputs: list) -> Counter[str]:
    a, b = get_shape(inputs[1]), get_shape(inputs[2])
    return Counter({"bmm": a[0] * a[1] * a[2] * b[2]})


def _addcmul_flop(inputs: list, outputs: list) -> Counter[str]:
    return Counter({"addcmul": math.prod(get_shape(outputs[0]))})


def _is_float_tensor(value: Any) -> bool:
    kind = value.type()
    if not isinstance(kind, torch._C.TensorType):
        return False
    dtype = kind.scalarType()
    shape = get_shape(value)
    return (dtype is None or dtype in _FLOATS) and bool(shape)


def _sum_flop(inputs: list, outputs: list) -> Counter[str]:
    producer = inputs[0].node()
    if producer.kind() not in ("aten::mul", "aten::mul_"):
        return Counter()
    a, b = list(producer.inputs())[:2]
    if not (_is_float_tensor(a) and _is_float_tensor(b)):
        return Counter()  # a scaled sum or an integer table computation, not a contraction
    return Counter({"mul_sum": math.prod(get_shape(inputs[0]))})


FLOP_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::_scaled_dot_product_attention_math": _sdpa_flop,
    "aten::_scaled_dot_product_flash_attention": _sdpa_flop,
    "aten::_scaled_dot_product_flash_attention_for_cpu": _sdpa_flop,
    "aten::_scaled_dot_product_efficient_attention": _sdpa_flop,
    "aten::_scaled_dot_product_cudnn_attention": _sdpa_flop,
    "aten::einsum": _einsum_flop,
    "aten::matmul": _matmul_flop,
    "aten::baddbmm": _baddbmm_flop,
    "aten::addcmul": _addcmul_flop,
    "aten::addcmul_": _addcmul_flop,
    "aten::sum": _sum_flop,
}
"""Handles added to fvcore's defaults, by traced operator name; each maps ``(inputs, outputs)``
(``torch._C.Value`` lists) to a ``Counter`` of MACs by operator."""

_ELEMENTWISE = (
    "abs add add_ addcdiv addcdiv_ bitwise_and bitwise_or clamp_min clamp_max div div_ elu exp exp_ fill_ "
    "gelu gelu_ hardsigmoid hardswish hardswish_ hardtanh hardtanh_ le leaky_relu leaky_relu_ log log_softmax "
    "logical_and logical_not logical_or lt masked_fill_ maximum minimum mish mul mul_ ne neg pow reciprocal "
    "relu6 rsqrt rsub sigmoid sigmoid_ silu silu_ sign softmax softplus sqrt sub sub_ tanh tanh_ where "
    "dropout_ feature_dropout alpha_dropout lerp"
)
_REDUCTIONS = (
    "all amax amin any argmax argmin cumsum linalg_vector_norm logsumexp mean norm frobenius_norm prod std "
    "var var_mean scatter_reduce avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d "
    "max_pool2d_with_indices adaptive_max_pool2d adaptive_avg_pool1d"
)
_DATA = (
    "alias as_strided broadcast_to linspace logspace clone col2im constant_pad_nd diagonal empty_like expand_as flip "
    "index_add index_fill index_put index_select im2col lift_fresh masked_scatter meshgrid movedim "
    "new_ones new_tensor ones_like pad pixel_shuffle pixel_unshuffle rand_like randn_like reflection_pad1d "
    "reflection_pad2d repeat repeat_interleave replication_pad2d roll scatter scatter_ select_scatter "
    "slice_scatter split_with_sizes stack tensor_split tile to type_as unbind unflatten unfold "
    "upsample_nearest1d view_as zero_ zeros_like"
)
FREE_OPS: frozenset[str] = frozenset(f"aten::{op}" for op in f"{_ELEMENTWISE} {_REDUCTIONS} {_DATA}".split())
"""Operators counted as 0 without a warning: element-wise arithmetic, reductions, pooling and
data movement (fvcore already ignores shape operators such as ``view`` and ``permute``)."""


def _attention_macs(module: Aggregation, shape: Sequence[int]) -> int | None:
    """The closed-form count of an attention aggregation's SDPA on an input of ``shape``
    ``(B, C, H, W)``: ``B * heads * (Ho * Wo * K) * (Dqk + Dv)``; ``None`` for a source without
    ``heads`` and ``head_dim``."""
    source = module.source
    heads, head_dim = getattr(source, "heads", None), getattr(source, "head_dim", None)
    if heads is None or head_dim is None:
        return None
    b, _, h, w = (int(n) for n in shape)
    nb = module.neighbourhood
    pairs = math.prod(nb.axis(h).index.shape) * math.prod(nb.axis(w).index.shape)
    return b * heads * pairs * 2 * head_dim


@contextlib.contextmanager
def _counting(model: nn.Module, aliases: dict) -> Iterator[dict[str, int]]:
    """Eval mode, no autograd, no tracer or fvcore deprecation warnings, and every aggregation's
    path wrapped so that the ops it runs carry the aggregation's scope (even when a composite calls
    ``module._run`` directly) and its closed-form attention count is recorded by module name."""
    modes = [(m, m.training) for m in model.modules()]
    wrapped: list[tuple[Aggregation, Any]] = []
    records: dict[str, int] = {}

    def wrap(module: Aggregation, name: str, run: Callable) -> Callable:
        def traced_run(mod: Aggregation, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            state = torch._C._get_tracing_state()
            if module.path in _SDPA_PATHS:
                # The count is bookkeeping: keep its small integer computations out of the trace.
                torch._C._set_tracing_state(None)
                try:
                    macs = _attention_macs(module, x.shape)
                finally:
                    torch._C._set_tracing_state(state)
                if macs is not None:
                    records[name] = records.get(name, 0) + macs
            if state:
                state.push_scope(name)
            try:
                return run(mod, x, *args, **kwargs)
            finally:
                if state:
                    state.pop_scope()

        return traced_run

    try:
        model.eval()
        for module in model.modules():
            if isinstance(module, Aggregation) and "_run" in vars(module):
                run = module._run
                wrapped.append((module, run))
                module._run = wrap(module, aliases[module], run)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield records
    finally:
        for module, run in wrapped:
            module._run = run
        for module, training in modes:
            module.train(training)


class FlopCounter(FlopCountAnalysis):
    """fvcore's ``FlopCountAnalysis`` with the handles and conventions of this module.

    The trace runs lazily on the first query, in eval mode under ``torch.no_grad()``; the
    training flags of every submodule are restored afterwards. Everything fvcore offers
    (``total``, ``by_operator``, ``by_module``, ``by_module_and_operator``, ``unsupported_ops``,
    ``uncalled_modules``, ``fvcore.nn.flop_count_table(counter)``) sees the corrected counts.

    Args:
        model: The model.
        inputs: Its positional inputs.

    Examples:
        >>> import torch
        >>> from unifiedops import GlobalAttention
        >>> from unifiedops.flops import FlopCounter
        >>> counter = FlopCounter(GlobalAttention(32, num_heads=2), torch.randn(1, 32, 4, 4))
        >>> counter.by_operator()["scaled_dot_product_attention"]  # 1 * 2 * 16 * 16 * (16 + 16)
        16384
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor | tuple[Any, ...]) -> None:
        super().__init__(model, inputs)
        for name, handle in FLOP_HANDLES.items():
            self.set_op_handle(name, handle)
        for name in FREE_OPS:
            self.set_op_handle(name, None)
        self.tracer_warnings("none")
        # Sources use their submodules' weights functionally (F.linear(x, module.qkv.weight)), so
        # those submodules are never called; the warning would only be noise.
        self.uncalled_modules_warnings(False)

    def unsupported_ops(self, module_name: str = "") -> Counter[str]:
        """Operators without a handle that are not known to be free, with their call counts; they
        count 0. Unlike fvcore's, this runs the analysis if it has not run yet.

        Args:
            module_name: A submodule name; ``""`` is the whole model.

        Returns:
            Occurrences by traced operator name (e.g. ``aten::cdist``).
        """
        self._analyze()
        return super().unsupported_ops(module_name)

    def _analyze(self):  # type: ignore[override]
        if self._stats is not None:
            return self._stats
        with _counting(self._model, self._aliases) as records:
            stats = super()._analyze()
        counts = stats.counts
        for name, macs in records.items():
            module = self._named_modules[name]
            children = (self._aliases[child] for child in module.children())
            direct = counts[name][_SDPA] - sum(counts[child][_SDPA] for child in children)
            for ancestor in self._get_all_ancestors(name):
                counts[ancestor][_SDPA] += macs - direct
        return stats


def _inputs(
    model: nn.Module, inputs: torch.Tensor | tuple[Any, ...] | None, input_size: tuple[int, ...]
) -> tuple[Any, ...]:
    if inputs is None:
        if not isinstance(input_size, tuple) or not all(isinstance(n, int) and n > 0 for n in input_size):
            raise ValueError(f"input_size must be a tuple of positive ints, got input_size={input_size!r}")
        like = next(model.parameters(), None)
        device, dtype = (like.device, like.dtype) if like is not None else (None, None)
        return (torch.randn(input_size, device=device, dtype=dtype),)
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, tuple):
        return inputs
    raise TypeError(f"inputs must be a tensor, a tuple of tensors or None, got {type(inputs).__name__}")


def flop_counter(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
) -> FlopCounter:
    """A [`FlopCounter`][unifiedops.flops.FlopCounter] (fvcore ``FlopCountAnalysis``) for ``model``.

    Args:
        model: The model.
        inputs: Its input tensor or tuple of positional inputs; ``None`` draws a random tensor of
            ``input_size`` on the model's device and dtype.
        input_size: Shape of the random input when ``inputs`` is ``None``.

    Returns:
        The lazy analysis; query it with ``total()``, ``by_operator()``, ``by_module()``,
        ``unsupported_ops()`` and the other fvcore methods.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``inputs`` has an unsupported type.
        ValueError: If ``input_size`` is not a tuple of positive ints.

    Examples:
        >>> import torch
        >>> from unifiedops import DWConv
        >>> from unifiedops.flops import flop_counter
        >>> counter = flop_counter(DWConv(8, 3), torch.randn(1, 8, 5, 5))
        >>> counter.total(), dict(counter.unsupported_ops())
        (1800, {})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return FlopCounter(model, _inputs(model, inputs, input_size))


def count_flops(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
) -> float:
    """Multiply-accumulates of one forward pass of ``model`` (the "FLOPs" of published tables).

    Args:
        model: The model; it runs once in eval mode under ``torch.no_grad()``, and its training
            flags are restored afterwards.
        inputs: Its input tensor or tuple of positional inputs; ``None`` draws a random tensor of
            ``input_size`` on the model's device and dtype.
        input_size: Shape of the random input when ``inputs`` is ``None``.

    Returns:
        The total MAC count (divide by ``1e9`` for GFLOPs as papers print them).

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``inputs`` has an unsupported type.
        ValueError: If ``input_size`` is not a tuple of positive ints.

    Examples:
        >>> import torch
        >>> from unifiedops import DWConv
        >>> from unifiedops.flops import count_flops
        >>> count_flops(DWConv(96, 7), input_size=(2, 96, 14, 14))  # B * C * H * W * k^2
        1843968.0
    """
    return float(flop_counter(model, inputs, input_size=input_size).total())


def flop_breakdown(
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    input_size: tuple[int, ...] = (1, 3, 224, 224),
    by: str = "operator",
) -> dict[str, float]:
    """Multiply-accumulates of one forward pass, split by operator or by module.

    Args:
        model: The model (run as in [`count_flops`][unifiedops.flops.count_flops]).
        inputs: Its input tensor or tuple of positional inputs; ``None`` draws a random tensor of
            ``input_size``.
        input_size: Shape of the random input when ``inputs`` is ``None``.
        by: ``"operator"``: MACs per operator name (``conv``, ``linear``,
            ``scaled_dot_product_attention``, ``addcmul``, ...), summing to the total; ``"module"``:
            MACs per submodule name, each including its descendants (``""`` is the whole model).

    Returns:
        Non-zero counts by key.

    Raises:
        ValueError: If ``by`` is neither ``"operator"`` nor ``"module"``.

    Examples:
        >>> import torch
        >>> from unifiedops import WindowAttention
        >>> from unifiedops.flops import flop_breakdown
        >>> flop_breakdown(WindowAttention(32, num_heads=2, window_size=4), input_size=(1, 32, 8, 8))
        {'linear': 262144.0, 'scaled_dot_product_attention': 65536.0}
    """
    if by not in ("operator", "module"):
        raise ValueError(f"by must be 'operator' or 'module', got by={by!r}")
    counter = flop_counter(model, inputs, input_size=input_size)
    counts = counter.by_operator() if by == "operator" else counter.by_module()
    return {key: float(value) for key, value in counts.items() if value}
