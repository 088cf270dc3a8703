"""Argument checks that name the offending argument and what it accepts."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Raise unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Raise unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {name}={value!r}")
    return value  # type: ignore[return-value]


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise unless ``divisor`` divides ``value``."""
    if value % divisor:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def check_input(x: object, channels: int, channels_last: bool) -> None:
    """Raise unless ``x`` is a 4-D floating tensor with ``channels`` channels in the stated layout."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    shape = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D {shape}, got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype={x.dtype}")
    got = x.shape[-1] if channels_last else x.shape[1]
    if got != channels:
        raise ValueError(
            f"x has {got} channels but the module was built for channels={channels} "
            f"(layout {shape}, channels_last={channels_last})"
        )
