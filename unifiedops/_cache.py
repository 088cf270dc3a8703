"""Memoised geometry tables (index maps and masks that depend only on shapes)."""

from __future__ import annotations

import contextlib
import functools
import operator

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing


def _to_device(tables, device: torch.device):
    if isinstance(tables, torch.Tensor):
        return tables.to(device)
    if isinstance(tables, tuple) and hasattr(tables, "_fields"):
        return type(tables)(*(_to_device(t, device) for t in tables))
    if isinstance(tables, tuple):
        return tuple(_to_device(t, device) for t in tables)
    return tables


@contextlib.contextmanager
def _eager():
    """Real tensors, untraced: suspend the fake-tensor and tracing modes of ``torch.export``."""
    with unset_fake_temporarily(), disable_proxy_modes_tracing(), torch.inference_mode(False):
        yield


def cached_tables(build):
    """Memoise a geometry-table builder, per argument tuple and device.

    ``cached(*args, device=None)`` returns ``build(*args)`` with its tensors on ``device``. Tables are
    built outside inference mode: a cached tensor created under ``torch.inference_mode`` could never
    again take part in autograd.

    Under ``torch.compile``, ``cached`` is a constant: Dynamo calls it eagerly at trace time and puts
    its tensors in the graph as constants, instead of tracing the builder (whose ``.item()`` calls,
    ``torch.device`` context and ``lru_cache`` would each break the graph). Its arguments must then
    be Python constants: ints, dtypes, and neighbourhoods that exist outside the compiled function (a
    neighbourhood constructed inside it cannot be passed). Symbolic sizes (``dynamic=True``, or the
    automatic dynamic shapes after a second input size) are specialised to ints: the module then
    recompiles for each input size, as it does with ``dynamic=False``, instead of breaking the graph.

    Under ``torch.export``, which runs the forward pass on fake tensors, the builder runs on real
    tensors outside the trace (a traced builder's ``.item()`` would be data-dependent, and fake tensors
    would end up in the cache); the tables enter the exported program as constants.
    """

    @functools.lru_cache(maxsize=64)
    def on_cpu(*args):
        # Tables are geometry: build them on the CPU even inside `with torch.device("meta")`.
        with _eager(), torch.device("cpu"):
            return build(*args)

    @functools.lru_cache(maxsize=64)
    def on_device(device: torch.device, *args):
        with _eager():
            return _to_device(on_cpu(*args), device)

    @functools.wraps(build)
    def cached(*args, device: torch.device | str | None = None):
        if device is None or torch.device(device).type == "cpu":
            return on_cpu(*args)
        return on_device(torch.device(device), *args)

    constant = torch.compiler.assume_constant_result(cached)

    @functools.wraps(build)
    def specialised(*args, device: torch.device | str | None = None):
        # With dynamic shapes, sizes arrive as SymInts, which Dynamo cannot pass to a constant function (the
        # graph would break at every table): specialise them, as the tables are built per size anyway.
        # Dynamo sees a SymInt as an int, and operator.index specialises it (int() would keep it symbolic).
        sizes = [
            operator.index(a) if isinstance(a, (int, torch.SymInt)) and not isinstance(a, bool) else a for a in args
        ]
        return constant(*sizes, device=device)

    return specialised
