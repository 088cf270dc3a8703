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


def check_bool(name: str, value: object) -> bool:
    """Raise unless ``value`` is a bool (``0``, ``1`` or ``"yes"`` would silently mean something)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_number(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None, positive: bool = False
) -> float:
    """Raise unless ``value`` is a real number (not a bool) in ``[minimum, maximum]``, and ``> 0`` with ``positive``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {name}={value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {name}={value!r}")
    return value


def check_heads(dim_name: str, dim: object, heads_name: str, heads: object) -> None:
    """Raise unless ``dim`` and ``heads`` are positive ints and ``heads`` divides ``dim``."""
    check_int(dim_name, dim, minimum=1)
    check_int(heads_name, heads, minimum=1)
    check_divisible(dim_name, dim, heads_name, heads)


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
    """Raise unless ``x`` is a 4-D floating tensor with ``channels`` channels and a non-empty map in the stated
    layout (shape checks only: no data is read, so the check costs no device sync and compiles)."""
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
    spatial = x.shape[1:3] if channels_last else x.shape[2:]
    if spatial[0] == 0 or spatial[1] == 0:
        raise ValueError(f"x must have H >= 1 and W >= 1 {shape}, got shape {tuple(x.shape)}")
