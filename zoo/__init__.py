"""Backbones assembled from unifiedops presets and registered with timm.

Importing ``zoo`` registers every model, after which ``timm.create_model("van_b0")`` works:

    >>> import timm
    >>> import zoo
    >>> "van_b0" in zoo.list_models()
    True
"""

from __future__ import annotations

import fnmatch

import timm

__all__ = ["list_models"]


def list_models(pattern: str = "*") -> list[str]:
    """Names of the models this package registers with timm.

    Args:
        pattern: A shell-style pattern (``"kw_*"``).

    Returns:
        The sorted matching names.
    """
    return sorted(
        name
        for name in timm.list_models(pattern)
        if timm.models.model_entrypoint(name).__module__.startswith(f"{__name__}.") and fnmatch.fnmatch(name, pattern)
    )
