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

# Importing a family module registers its models with timm.
from zoo import (
    acmix_resnet,
    convnext_family,
    dcd_mobilenetv2,
    dcd_resnet,
    dwnet,
    kw_mobilenetv2,
    kw_resnet,
    mixformer,
    od_mobilenetv2,
    od_resnet,
    swin_family,
    uniformer,
    van,
)
from zoo.builder import BackboneSpec, SpecBackbone, StageSpec, register_backbone, register_mixer
from zoo.checkpoint_io import load, save

__all__ = [
    "BackboneSpec",
    "SpecBackbone",
    "StageSpec",
    "acmix_resnet",
    "convnext_family",
    "dcd_mobilenetv2",
    "dcd_resnet",
    "dwnet",
    "kw_mobilenetv2",
    "kw_resnet",
    "list_models",
    "load",
    "mixformer",
    "od_mobilenetv2",
    "od_resnet",
    "register_backbone",
    "register_mixer",
    "save",
    "swin_family",
    "uniformer",
    "van",
]


def list_models(pattern: str = "*") -> list[str]:
    """Names of the published models the zoo registers with timm.

    Backbones registered with [`register_backbone`][zoo.builder.register_backbone] are the
    caller's, not the zoo's, and are not listed (``timm.list_models`` has them).

    Args:
        pattern: A shell-style pattern (``"kw_*"``).

    Returns:
        The sorted matching names.
    """
    names = []
    for name in timm.list_models(pattern):
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith(f"{__name__}.") and not module.startswith(f"{__name__}.builder"):
            names.append(name)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))
