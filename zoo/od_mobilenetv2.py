"""ODConv MobileNetV2: inverted residuals whose convolutions are ODConv layers.

Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022 (arXiv:2209.07947); the official
model is ``models/od_mobilenetv2.py`` of OSVAI/ODConv. MobileNetV2 itself is Sandler et al.,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381).

Which layers become [`ODConv2d`][unifiedops.odconv.ODConv2d] (the official choice): every convolution
of the blocks (the 1x1 expansion, the depth-wise 3x3, whose attention has no filter head, and the 1x1
projection) and the final 1x1 to 1280. The stem (3x3/2) and the classifier stay plain. All ODConv
layers share one ``reduction`` (1/16, hidden width at least 16) and one ``kernel_num``: 1 for the
paper's "1x" models, 4 for "4x".

The network is the shared skeleton
[`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] in timm's names (``conv_stem``,
``blocks.{row}.{j}.{conv_pw,conv_dw,conv_pwl}``, ``conv_head``, ``classifier``); an ODConv layer keeps
the official parameter names below its place (``weight`` ``(n, O, C/groups, k, k)``,
``attention.{fc,bn,channel_fc,filter_fc,spatial_fc,kernel_fc}``). The official model keeps
torchvision's layout (``features.<i>.conv.<j>``), which
[`convert_official_mobilenetv2`][zoo.blocks.mobilenetv2_layout.convert_official_mobilenetv2] renames
(dropping a DataParallel ``module.`` prefix too).

Dropout before the classifier is 0.2: the official model's default and the value of the README's
MobileNetV2 training command (``main.py`` itself defaults to 0). Training: the official recipe
anneals the attention temperature from 30 to 1 over the first 10 epochs, per iteration
([`odconv_schedule`][unifiedops.odconv.odconv_schedule]); inference uses 1, the layers' default.
The attention's BatchNorm needs batches of at least two samples in training.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unifiedops.odconv import ODConv2d
from zoo.blocks import register_variants
from zoo.blocks.mobilenetv2_layout import (
    MobileNetV2ConvSpec,
    MobileNetV2Layout,
    convert_official_mobilenetv2,
    plain_mobilenetv2_conv,
)

__all__ = ["ODMobileNetV2", "convert_official_mobilenetv2"]


class ODMobileNetV2(MobileNetV2Layout):
    """MobileNetV2 whose block and head convolutions are ODConv layers (the stem stays plain).

    Args:
        width_mult: Channel multiplier (1.0 for ``od_mobilenetv2_100``).
        reduction: Hidden-width ratio of every ODConv attention.
        kernel_num: Kernels per ODConv layer (the "1x" and "4x" of the paper).
        drop_rate: Dropout before the classifier (official: 0.2).
        **kwargs: [`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] arguments
            (``num_classes``, ``in_chans``, ``global_pool``, ``drop_path_rate``).

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; stage maps ``(B, C_i, H/r_i, W/r_i)`` at
        ``r_i = 4, 8, 16, 32`` with ``C_i = 24, 32, 96, 320`` times ``width_mult``, as
        [`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout].
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        reduction: float = 0.0625,
        kernel_num: int = 1,
        drop_rate: float = 0.2,
        **kwargs: Any,
    ) -> None:
        def factory(spec: MobileNetV2ConvSpec) -> nn.Module:
            if spec.role == "stem":
                return plain_mobilenetv2_conv(spec)
            return ODConv2d(
                spec.in_chs,
                spec.out_chs,
                spec.kernel_size,
                spec.stride,
                groups=spec.groups,
                reduction=reduction,
                kernel_num=kernel_num,
            )

        super().__init__(factory, width_mult=width_mult, drop_rate=drop_rate, **kwargs)


register_variants(
    ODMobileNetV2,
    {
        "od_mobilenetv2_100_1x": dict(width_mult=1.0, kernel_num=1),
        "od_mobilenetv2_100_4x": dict(width_mult=1.0, kernel_num=4),
    },
    module=__name__,
    first_conv="conv_stem",
    classifier="classifier",
    paper="arXiv:2209.07947",
    crop_pct=0.875,
    license="apache-2.0",
)
