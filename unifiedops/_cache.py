"""Memoised geometry tables (index maps and masks that depend only on shapes)."""

from __future__ import annotations

import functools

import torch


def _to_device(tables, device: torch.device):
    if isinstance(tables, torch.Tensor):
        return tables.to(device)
    if isinstance(tables, tuple) and hasattr(tables, "_fields"):
        return type(tables)(*(_to_device(t, device) for t in tables))
    if isinstance(tables, tuple):
        return tuple(_to_device(t, device) for t in tables)
    return tables


def cached_tables(build):
    """Memoise a geometry-table builder, per argument tuple and device.

    ``cached(*args, device=None)`` returns ``build(*args)`` with its tensors on ``device``. Tables are
    built outside inference mode: a cached tensor created under ``torch.inference_mode`` could never
    again take part in autograd.
    """

    @functools.lru_cache(maxsize=64)
    def on_cpu(*args):
        # Tables are geometry: build them on the CPU even inside `with torch.device("meta")`.
        with torch.inference_mode(False), torch.device("cpu"):
            return build(*args)

    @functools.lru_cache(maxsize=64)
    def on_device(device: torch.device, *args):
        with torch.inference_mode(False):
            return _to_device(on_cpu(*args), device)

    @functools.wraps(build)
    def cached(*args, device: torch.device | str | None = None):
        if device is None or torch.device(device).type == "cpu":
            return on_cpu(*args)
        return on_device(torch.device(device), *args)

    return cached
