"""DCD ResNets: ResNet-18 and ResNet-50 whose block convolutions and classifier are DCD layers.

Li et al., "Revisiting Dynamic Convolution via Matrix Decomposition", ICLR 2021 (arXiv:2103.08756);
the official models are ``resnet_dcd.py`` of liyunsheng13/dcd.

Which layers become [`DCDConv2d`][unifiedops.dcd.DCDConv2d] (the official choice): every convolution
inside the blocks. In a basic block (ResNet-18) the context is pooled to ``2 x 2`` and the latent size
is ``int(sqrt(4 C))``; in a bottleneck (ResNet-50) it is pooled to ``1 x 1`` with ``int(sqrt(C))``
([`dcd_dims`][unifiedops.dcd.dcd_dims]). The stem and the projection shortcuts stay plain; the
classifier is DCD's dynamic ``Linear`` ([`DCDLinear`][unifiedops.dcd.DCDLinear], latent size 32).

Parameter names inside the blocks are the official ones; the official model keeps its classifier in
``classifier.0`` (``classifier.1`` behind a dropout) where timm's ResNet has ``fc``:
[`convert_official_dcd_resnet`][zoo.dcd_resnet.convert_official_dcd_resnet] renames it. The official
model pools with a fixed ``AvgPool2d(7)``, which only fits 224 x 224 inputs; this one pools globally
(timm's head), the same at 224 and correct at any size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unifiedops.dcd import DCDConv2d, DCDLinear, convert_official_dycls, switch_off_low_rank_
from zoo.blocks import register_variants
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv

__all__ = ["DCDResNet", "convert_official_dcd_resnet"]


class DCDResNet(ResNetLayout):
    """A ResNet whose block convolutions and classifier are DCD layers (stem and shortcuts plain).

    Args:
        block: ``"basic"`` (ResNet-18) or ``"bottleneck"`` (ResNet-50).
        layers: Blocks per stage.
        **kwargs: [`ResNetLayout`][zoo.blocks.resnet_layout.ResNetLayout] arguments (``num_classes``,
            ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``widths``).
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), **kwargs: Any) -> None:
        pool = 2 if block == "basic" else 1

        def factory(spec: ConvSpec) -> nn.Module:
            if spec.role in ("stem", "downsample"):
                return plain_conv(spec)
            return DCDConv2d(spec.in_chs, spec.out_chs, spec.kernel_size, spec.stride, pool=pool)

        super().__init__(block, layers, factory, **kwargs)
        switch_off_low_rank_(self)  # after the layout's initialisation of every conv

    @staticmethod
    def _linear(num_features: int, num_classes: int) -> nn.Module:
        return DCDLinear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def convert_official_dcd_resnet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DCD ResNet state dict to this module's.

    A ``module.`` prefix (``DataParallel``) is dropped and the classifier (``classifier.0``, or
    ``classifier.1`` behind the optional dropout) becomes ``fc``, with its ``cls``, ``cls_q`` and ``cls_p``
    renamed as [`convert_official_dycls`][unifiedops.dcd.convert_official_dycls] does (its ``(O, C)``
    weights become ``(O, C, 1, 1)``); the block convolutions' tensors are passed through.

    Args:
        state_dict: The official model's ``state_dict()``.

    Returns:
        A state dict that loads into [`DCDResNet`][zoo.dcd_resnet.DCDResNet] with ``strict=True``.
    """
    renamed = {re.sub(r"^classifier\.[01]\.", "fc.", k.removeprefix("module.")): v for k, v in state_dict.items()}
    return convert_official_dycls(renamed, "fc.")


register_variants(
    DCDResNet,
    {
        "dcd_resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
        "dcd_resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
    },
    module=__name__,
    first_conv="conv1",
    classifier="fc",
    paper="arXiv:2103.08756",
    crop_pct=0.875,
    license="mit",
)
