"""ACmix-ResNet: a ResNet-50 layout whose bottleneck 3x3 convolution is an ACmix module.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022 (arXiv:2111.14556).
The official ImageNet ResNet (LeapLabTHU/ACmix, ``ResNet/ResNet_ImageNet.py``) is torchvision's
v1.5 bottleneck ResNet with ``conv2`` replaced by ``ACmix(width, width, 7, 4, 3, stride)``
(7x7 attention window, 4 heads, 3x3 shift convolution), followed by ``bn2`` and ReLU as before;
stem, ``conv1``, ``conv3``, ``downsample`` and ``fc`` stay plain. Depths are 1,2,4,1 (ACmix-ResNet-26),
2,3,5,2 (-38) and 3,4,6,3 (-50).

The state dict is the official one (``layer{s}.{b}.conv2.{rate1,rate2,conv1,conv2,conv3,conv_p,fc,
dep_conv.weight}``), so an official checkpoint loads with ``strict=True``. Two behaviours differ,
both where the official code fails: a stride-2 ACmix on an odd map gives ``ceil(H / 2)`` rows (the
official module raises), so inputs that are not multiples of 32 work; and the attention runs on the
``halo_sdpa`` path instead of the official unfold (same result, far less memory).

The official model re-initialises every ``nn.Conv2d``, including the ones inside ACmix, with
Kaiming normal (fan-out), which overwrites the shift initialisation of ``dep_conv``; this model
does the same, so a freshly built network starts where the official one does.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from unifiedops import ACmix
from zoo.blocks import build_backbone
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv, resnet_cfg

__all__ = ["ACmixResNet", "acmix_conv_factory"]

_DEPTHS = {"acmix_resnet26": (1, 2, 4, 1), "acmix_resnet38": (2, 3, 5, 2), "acmix_resnet50": (3, 4, 6, 3)}


def acmix_conv_factory(spec: ConvSpec, kernel_att: int = 7, head: int = 4, kernel_conv: int = 3) -> nn.Module:
    """ACmix for a bottleneck's ``conv2``, ``nn.Conv2d`` everywhere else.

    Args:
        spec: The layer's place and shape.
        kernel_att: Attention window of ACmix.
        head: Heads of ACmix.
        kernel_conv: Kernel of ACmix's shift convolution.

    Returns:
        The layer.
    """
    if spec.role == "conv2":
        return ACmix(spec.in_chs, spec.out_chs, kernel_att, head, kernel_conv, spec.stride)
    return plain_conv(spec)


class ACmixResNet(ResNetLayout):
    """ACmix-ResNet: a bottleneck ResNet (v1.5) with ACmix as every ``conv2``.

    Args:
        layers: Blocks per stage.
        kernel_att: Attention window of every ACmix (official 7).
        head: Heads of every ACmix (official 4).
        kernel_conv: Shift-convolution kernel of every ACmix (official 3).
        **kwargs: [`ResNetLayout`][zoo.blocks.resnet_layout.ResNetLayout] arguments (``num_classes``,
            ``in_chans``, ``global_pool``, ``drop_rate``, ``drop_path_rate``, ...).

    Shape:
        ``(B, 3, H, W) -> (B, num_classes)``. Every ACmix input must exceed ``kernel_att // 2``
        pixels on each side (reflection padding): with the default window, ``H`` and ``W`` of at
        least 49 when ``layer4`` has one block (its ACmix reads the stride-16 map), 97 otherwise;
        smaller inputs raise a ``ValueError``.
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        **kwargs: Any,
    ) -> None:
        factory = functools.partial(acmix_conv_factory, kernel_att=kernel_att, head=head, kernel_conv=kernel_conv)
        super().__init__("bottleneck", layers, factory, **kwargs)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, ACmix):
                    nn.init.kaiming_normal_(m.dep_conv.weight, mode="fan_out", nonlinearity="relu")


default_cfgs = generate_default_cfgs(
    {name: resnet_cfg("arXiv:2111.14556", interpolation="bilinear") for name in _DEPTHS}
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ACmixResNet:
    return build_backbone(ACmixResNet, variant, pretrained, **{"layers": _DEPTHS[variant], **kwargs})


@register_model
def acmix_resnet26(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ACmix-ResNet-26: depths 1,2,4,1 (10.49M parameters; the paper gives 10.6M).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`ACmixResNet`][zoo.acmix_resnet.ACmixResNet] arguments, replacing the variant's
            (``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("acmix_resnet26", pretrained, **kwargs)


@register_model
def acmix_resnet38(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ACmix-ResNet-38: depths 2,3,5,2 (14.41M parameters; the paper gives 14.6M).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`ACmixResNet`][zoo.acmix_resnet.ACmixResNet] arguments, replacing the variant's
            (``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("acmix_resnet38", pretrained, **kwargs)


@register_model
def acmix_resnet50(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ACmix-ResNet-50: depths 3,4,6,3 (18.33M parameters; the paper gives 18.6M).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`ACmixResNet`][zoo.acmix_resnet.ACmixResNet] arguments, replacing the variant's
            (``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("acmix_resnet50", pretrained, **kwargs)
