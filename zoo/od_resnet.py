"""ODConv ResNets: ResNet-18 and ResNet-50 whose block convolutions are ODConv layers.

Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022 (arXiv:2209.07947); the official
models are ``models/od_resnet.py`` of OSVAI/ODConv.

Which layers become [`ODConv2d`][unifiedops.odconv.ODConv2d] (the official choice): every convolution
inside the blocks, the 1x1 ones of the bottleneck included. The stem, the projection shortcuts
(``downsample``) and ``fc`` stay plain. All ODConv layers share one ``reduction`` (1/16, hidden width
at least 16) and one ``kernel_num``: 1 for the paper's "1x" models, 4 for "4x".

Parameter names are the official ones (``layer{s}.{b}.conv{i}.weight`` ``(n, O, C, k, k)``,
``layer{s}.{b}.conv{i}.attention.{fc,bn,channel_fc,filter_fc,spatial_fc,kernel_fc}``), so an official
state dict loads once its DataParallel ``module.`` prefix is stripped
([`zoo.load`][zoo.checkpoint_io.load] does that).

Training: the official recipe anneals the attention temperature from 30 to 1 over the first 10
epochs, per iteration ([`odconv_schedule`][unifiedops.odconv.odconv_schedule]); inference uses 1, the
layers' default. The attention's BatchNorm needs batches of at least two samples in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from unifiedops.odconv import ODConv2d
from zoo.blocks import register_variants
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv

__all__ = ["ODResNet"]


class ODResNet(ResNetLayout):
    """A ResNet whose block convolutions are ODConv layers (the stem and shortcuts stay plain).

    Args:
        block: ``"basic"`` (ResNet-18) or ``"bottleneck"`` (ResNet-50).
        layers: Blocks per stage.
        reduction: Hidden-width ratio of every ODConv attention.
        kernel_num: Kernels per ODConv layer (the "1x" and "4x" of the paper).
        **kwargs: [`ResNetLayout`][zoo.blocks.resnet_layout.ResNetLayout] arguments (``num_classes``,
            ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``widths``).
    """

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        reduction: float = 0.0625,
        kernel_num: int = 1,
        **kwargs: Any,
    ) -> None:
        def factory(spec: ConvSpec) -> nn.Module:
            if spec.role in ("stem", "downsample"):
                return plain_conv(spec)
            return ODConv2d(
                spec.in_chs, spec.out_chs, spec.kernel_size, spec.stride, reduction=reduction, kernel_num=kernel_num
            )

        super().__init__(block, layers, factory, **kwargs)


_BASIC = dict(block="basic", layers=(2, 2, 2, 2))
_BOTTLENECK = dict(block="bottleneck", layers=(3, 4, 6, 3))

register_variants(
    ODResNet,
    {
        "od_resnet18_1x": dict(**_BASIC, kernel_num=1),
        "od_resnet18_4x": dict(**_BASIC, kernel_num=4),
        "od_resnet50_1x": dict(**_BOTTLENECK, kernel_num=1),
        "od_resnet50_4x": dict(**_BOTTLENECK, kernel_num=4),
    },
    module=__name__,
    first_conv="conv1",
    classifier="fc",
    paper="arXiv:2209.07947",
    crop_pct=0.875,
    license="apache-2.0",
)
