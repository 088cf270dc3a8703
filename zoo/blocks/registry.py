"""Registering zoo models with timm: pretrained configs without weights, and the common builder."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from torch import nn

__all__ = ["build_backbone", "pretrained_cfg"]


def pretrained_cfg(
    *, first_conv: str, classifier: str, paper: str, crop_pct: float = 0.9, license: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """A timm pretrained config for a model whose weights this package does not host.

    It has no ``url`` or ``hf_hub_id``, so ``pretrained=False`` never downloads and
    ``pretrained=True`` only loads a file the caller names (``pretrained_cfg_overlay=dict(file=...)``).

    Args:
        first_conv: Dotted name of the stem convolution (for ``in_chans`` adaptation).
        classifier: Dotted name of the classifier (for ``num_classes`` adaptation).
        paper: The paper the architecture comes from (arXiv id or URL).
        crop_pct: Evaluation centre-crop fraction.
        license: Licence of the official implementation.
        **overrides: Other ``timm.models.PretrainedCfg`` fields.

    Returns:
        Keyword arguments for ``timm.models.generate_default_cfgs``.
    """
    cfg = dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=crop_pct,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv=first_conv,
        classifier=classifier,
        paper_ids=paper,
        license=license,
    )
    cfg.update(overrides)
    return cfg


def build_backbone(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered zoo model through timm, so ``features_only`` and ``pretrained_cfg`` work.

    ``features_only=True`` wraps the model in timm's ``FeatureGetterNet``, which calls the
    model's ``forward_intermediates`` and returns the four stage maps.

    Args:
        model_cls: A [`Backbone`][zoo.blocks.Backbone] subclass.
        variant: The registered model name.
        pretrained: Load the weights the pretrained config names.
        **kwargs: Constructor arguments, and timm's (``features_only``, ``out_indices``, ...).

    Returns:
        The model (or its feature wrapper).
    """
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )
