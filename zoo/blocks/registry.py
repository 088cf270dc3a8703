"""Registering zoo models with timm: pretrained configs without weights, and the common builder."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["build_backbone", "pretrained_cfg", "register_variants"]


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


def register_variants(
    model_cls: type[nn.Module], variants: Mapping[str, Mapping[str, Any]], *, module: str, **cfg: Any
) -> None:
    """Register one timm entrypoint per variant of a model class, as if written in ``module``.

    Each entrypoint ``name(pretrained=False, **kwargs)`` builds ``model_cls(**variants[name], **kwargs)``
    through [`build_backbone`][zoo.blocks.build_backbone] (so ``features_only`` works), is set as an
    attribute of ``module``, and gets a pretrained config without weights.

    Args:
        model_cls: A [`Backbone`][zoo.blocks.Backbone] subclass.
        variants: Constructor arguments of each variant, by model name.
        module: The module the entrypoints belong to (``__name__`` of the caller); timm files them under it.
        **cfg: Arguments of [`pretrained_cfg`][zoo.blocks.pretrained_cfg] (``first_conv``, ``classifier``,
            ``paper``, ...).

    Raises:
        ValueError: If timm already has a model of one of the names from another module.
    """
    mod = sys.modules[module]
    for name in variants:
        if timm.is_model(name) and timm.models.model_entrypoint(name).__module__ != module:
            raise ValueError(f"timm already has a model named {name!r}; register it as 'uo_{name}'")
    mod.default_cfgs = {
        **getattr(mod, "default_cfgs", {}),
        **generate_default_cfgs({name: pretrained_cfg(**cfg) for name in variants}),
    }
    for name, arch in variants.items():
        setattr(mod, name, register_model(_entrypoint(model_cls, name, dict(arch), module)))


def _entrypoint(model_cls: type[nn.Module], name: str, arch: dict[str, Any], module: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build_backbone(model_cls, name, pretrained, **{**arch, **kwargs})

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    args = ", ".join(f"{k}={v!r}" for k, v in arch.items())
    entrypoint.__doc__ = _ENTRYPOINT_DOC.format(name=name, cls=model_cls.__name__, args=args)
    return entrypoint


# Shapes are stated for images and the timm feature wrapper, whose maps are channels-first for every model.
_ENTRYPOINT_DOC = """``{name}``: ``{cls}({args})``; keyword arguments override these.

Registered with timm: ``timm.create_model("{name}", ...)`` calls it.

Args:
    pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
        ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
    **kwargs: ``{cls}`` arguments, replacing the variant's (``num_classes``, ``in_chans``,
        ``drop_path_rate``, ...), and timm's (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

Returns:
    The ``{cls}``: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``, or
    to the pooled features ``(B, head_hidden_size)`` with ``num_classes=0``. With ``features_only=True``,
    timm's ``FeatureGetterNet`` around it, whose forward returns the list of stage maps
    ``(B, C_i, H/r_i, W/r_i)`` (channels-first) picked by ``out_indices`` (all four by default), with
    ``C_i`` and ``r_i`` as its ``feature_info`` lists them (strides 4, 8, 16, 32 in every zoo family).
"""
