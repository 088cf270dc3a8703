"""DCD MobileNetV2: inverted residuals whose point-wise convolutions and classifier are DCD layers.

Li et al., "Revisiting Dynamic Convolution via Matrix Decomposition", ICLR 2021 (arXiv:2103.08756);
the official model is ``mobilenetv2_dcd.py`` of liyunsheng13/dcd, with ``fc_squeeze=16`` (the
published 5.72M parameters). MobileNetV2 itself is Sandler et al., CVPR 2018 (arXiv:1801.04381).

Which layers become DCD (the official choice): in every block with an expansion, the expansion and
the projection 1x1 convolutions ([`DCDConv2d`][unifiedops.dcd.DCDConv2d], latent size, context width
and context pooling by [`dcd_mobilenetv2_dims`][unifiedops.dcd.dcd_mobilenetv2_dims]), and the
classifier ([`DCDLinear`][unifiedops.dcd.DCDLinear]). The stem, the depth-wise 3x3 convolutions, the
first block (no expansion) and the head 1x1 to 1280 stay plain.

The network is the shared skeleton
[`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] in timm's names. The official
model keeps the layout of tonylins/pytorch-mobilenet-v2 (``features.<i>.conv.<j>``, the head in a
top-level ``conv``) and names a DCD layer's factors ``conv_q``/``conv_p`` (``q``/``p`` in its ResNet
and here); [`convert_official_dcd_mobilenetv2`][zoo.dcd_mobilenetv2.convert_official_dcd_mobilenetv2]
renames its state dicts. Initialisation is the official one, except that the low-rank branch starts
switched off ([`switch_off_low_rank_`][unifiedops.dcd.switch_off_low_rank_]).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from unifiedops.dcd import DCDConv2d, DCDLinear, convert_official_dycls, dcd_mobilenetv2_dims, switch_off_low_rank_
from zoo.blocks import register_variants
from zoo.blocks.mobilenetv2_layout import (
    MOBILENETV2_ROWS,
    MobileNetV2ConvSpec,
    MobileNetV2Layout,
    convert_official_mobilenetv2,
    plain_mobilenetv2_conv,
)

__all__ = ["DCDMobileNetV2", "convert_official_dcd_mobilenetv2"]


class DCDMobileNetV2(MobileNetV2Layout):
    """MobileNetV2 whose expansion and projection convolutions and classifier are DCD layers.

    Args:
        width_mult: Channel multiplier (1.0 for ``dcd_mobilenetv2_100``).
        fc_squeeze: Divisor of the DCD context width (the published model: 16).
        **kwargs: [`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] arguments
            (``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``, ``drop_path_rate``, ``rows``).

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; stage maps as
        [`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout].
    """

    def __init__(self, width_mult: float = 1.0, fc_squeeze: int = 16, **kwargs: Any) -> None:
        rows = tuple(kwargs.get("rows", MOBILENETV2_ROWS))

        def factory(spec: MobileNetV2ConvSpec) -> nn.Module:
            # The point-wise layers of the blocks that expand (t != 1); the layout validates rows.
            if spec.role not in ("pw", "pwl") or rows[spec.row][0] == 1:
                return plain_mobilenetv2_conv(spec)
            latent, squeeze, pool = dcd_mobilenetv2_dims(spec.in_chs, spec.out_chs, fc_squeeze)
            return DCDConv2d(spec.in_chs, spec.out_chs, 1, pool=pool, latent=latent, squeeze=squeeze)

        super().__init__(factory, width_mult=width_mult, **kwargs)
        switch_off_low_rank_(self)  # after the layout's initialisation of every conv

    @staticmethod
    def _linear(num_features: int, num_classes: int) -> nn.Module:
        return DCDLinear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def convert_official_dcd_mobilenetv2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DCD MobileNetV2 state dict to this module's.

    The layout as [`convert_official_mobilenetv2`][zoo.blocks.mobilenetv2_layout.convert_official_mobilenetv2]
    with ``flat_blocks=True``; inside a DCD layer ``conv_q``/``conv_p`` become ``q``/``p``; the
    classifier as [`convert_official_dycls`][unifiedops.dcd.convert_official_dycls] (its ``(O, C)`` weights
    become ``(O, C, 1, 1)``).

    Args:
        state_dict: The official model's ``state_dict()`` (a ``module.`` prefix is dropped).

    Returns:
        A state dict that loads into [`DCDMobileNetV2`][zoo.dcd_mobilenetv2.DCDMobileNetV2] with
        ``strict=True``.
    """
    renamed = convert_official_mobilenetv2(state_dict, flat_blocks=True)
    renamed = {re.sub(r"\.conv_([qp])\.", r".\1.", k): v for k, v in renamed.items()}
    return convert_official_dycls(renamed, "classifier.")


register_variants(
    DCDMobileNetV2,
    {"dcd_mobilenetv2_100": dict(width_mult=1.0, fc_squeeze=16)},
    module=__name__,
    first_conv="conv_stem",
    classifier="classifier",
    paper="arXiv:2103.08756",
    crop_pct=0.875,
    license="mit",
)
