"""The ResNet skeleton with a pluggable convolution: torchvision's and timm's layout and names.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385), in the
v1.5 form of torchvision and timm (a bottleneck strides on its 3x3 convolution): a stem
``conv1`` (7x7/2) - ``bn1`` - ``act1`` - ``maxpool`` (3x3/2), four stages ``layer1`` ... ``layer4`` of
basic or bottleneck blocks, global pooling and ``fc``. Each block is a
[`Block`][zoo.blocks.Block] of one [`Branch`][zoo.blocks.Branch] whose steps carry timm's names
(``conv1``, ``bn1``, ``act1``, ``conv2``, ...), with the projection shortcut ``downsample`` (1x1
conv and BatchNorm) where the shape changes, so timm's and torchvision's ``resnet*`` state dicts
load unchanged.

Every convolution of the skeleton is made by a *conv factory*, called with a
[`ConvSpec`][zoo.blocks.resnet_layout.ConvSpec] that says where the layer sits (stage, block,
role). [`plain_conv`][zoo.blocks.resnet_layout.plain_conv] gives the ``nn.Conv2d`` of the plain
ResNet; a family swaps some layers for an operator (ACmix's ``conv2``, KernelWarehouse's
warehouse-backed convolutions) and keeps the rest of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.models._manipulate import checkpoint_seq
from torch import nn

from zoo.blocks.backbone import Backbone
from zoo.blocks.block import Block, Branch
from zoo.blocks.registry import pretrained_cfg

__all__ = ["BLOCK_EXPANSION", "ROLES", "ConvFactory", "ConvSpec", "ResNetLayout", "plain_conv", "resnet_cfg"]

BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}
"""Output channels of a block over its ``planes``, per block type."""

ROLES = ("stem", "conv1", "conv2", "conv3", "downsample")
"""Where a convolution sits: the stem, a block's ``conv1``/``conv2``/``conv3``, or its shortcut."""


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the skeleton, as the conv factory sees it.

    A factory returns a module that maps ``(B, in_chs, H, W)`` to
    ``(B, out_chs, ceil(H / stride), ceil(W / stride))`` (the stem conv: ``padding=3``, the same).

    Attributes:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Kernel size of the plain layer (7 stem, 3 the spatial conv, 1 otherwise).
        stride: Stride.
        stage: Stage index from 0 (``-1`` for the stem).
        block: Block index within the stage (0 for the stem).
        role: One of [`ROLES`][zoo.blocks.resnet_layout.ROLES].
    """

    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    stage: int
    block: int
    role: str


ConvFactory = Callable[[ConvSpec], nn.Module]
"""Makes the layer for one [`ConvSpec`][zoo.blocks.resnet_layout.ConvSpec]."""


def plain_conv(spec: ConvSpec) -> nn.Conv2d:
    """The plain ResNet's layer: ``nn.Conv2d`` without bias, padded by ``kernel_size // 2``.

    Args:
        spec: Where the layer sits and its shape.

    Returns:
        The convolution.
    """
    k = spec.kernel_size
    return nn.Conv2d(spec.in_chs, spec.out_chs, k, spec.stride, padding=k // 2, bias=False)


def _check_conv(layer: object, spec: ConvSpec) -> nn.Module:
    if not isinstance(layer, nn.Module):
        raise TypeError(f"conv_factory must return an nn.Module for {spec}, got {type(layer).__name__}")
    return layer


def resnet_cfg(paper: str, **overrides: Any) -> dict[str, Any]:
    """The pretrained config of a model on this skeleton (no weights; ``conv1`` and ``fc``).

    Args:
        paper: The paper the model comes from (arXiv id or URL).
        **overrides: Other fields (``interpolation``, ``license``, ...).

    Returns:
        Keyword arguments for ``timm.models.generate_default_cfgs``.
    """
    return pretrained_cfg(first_conv="conv1", classifier="fc", paper=paper, **{"crop_pct": 0.875, **overrides})


class ResNetLayout(Backbone):
    """A ResNet (v1.5) whose convolutions come from a factory; timm's interface and key names.

    Keys: ``conv1``, ``bn1``, ``layer{s}.{b}.{conv1,bn1,conv2,bn2[,conv3,bn3]}``,
    ``layer{s}.{b}.downsample.{0,1}``, ``fc``. Blocks run
    ``act(bn(conv(...)) ... + downsample(x))`` with stochastic depth on the residual branch, as timm's
    ``BasicBlock`` and ``Bottleneck``.

    Args:
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1, 3x3, 1x1 with 4x expansion).
        layers: Blocks per stage (four stages).
        conv_factory: Makes every convolution (see [`ConvSpec`][zoo.blocks.resnet_layout.ConvSpec]).
        num_classes: Classes of ``fc`` (0: none).
        in_chans: Image channels.
        global_pool: Pooling before ``fc``.
        drop_rate: Dropout before ``fc``.
        drop_path_rate: Stochastic-depth rate.
        drop_path_schedule: ``"linear"`` (timm's: the rate grows from 0 at the first block to
            ``drop_path_rate`` at the last) or ``"constant"`` (every block gets ``drop_path_rate``).
        widths: ``planes`` of each stage (output channels are ``planes * expansion``).
        stem_width: Output channels of the stem.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; stage maps at strides 4, 8, 16, 32 (``ceil``
        of the size at every stride-2 layer).
    """

    norm_attr = None

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        conv_factory: ConvFactory = plain_conv,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_path_schedule: str = "linear",
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        if block not in BLOCK_EXPANSION:
            raise ValueError(f"block must be one of {tuple(BLOCK_EXPANSION)}, got {block!r}")
        layers, widths = tuple(layers), tuple(widths)
        if len(layers) != 4 or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in layers):
            raise ValueError(f"layers must be four positive ints (blocks per stage), got {layers!r}")
        if len(widths) != 4 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"widths must be four positive ints, got {widths!r}")
        if drop_path_schedule not in ("linear", "constant"):
            raise ValueError(f"drop_path_schedule must be 'linear' or 'constant', got {drop_path_schedule!r}")
        if not callable(conv_factory):
            raise TypeError(f"conv_factory must be callable, got {conv_factory!r}")
        self.block_type = block
        # Held only while building: a factory may close over state (a warehouse manager) that
        # the finished module should not carry, nor pickle.
        self._conv_factory = conv_factory
        expansion = BLOCK_EXPANSION[block]

        self.conv1 = self._conv(in_chans, stem_width, 7, 2, -1, 0, "stem")
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        total = sum(layers)
        rates = [
            drop_path_rate * (i / max(total - 1, 1) if drop_path_schedule == "linear" else 1.0) for i in range(total)
        ]
        in_chs, index = stem_width, 0
        for stage, (depth, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for b in range(depth):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(self._block(in_chs, planes, stride, stage, b, rates[index]))
                in_chs = planes * expansion
                index += 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))

        channels = [w * expansion for w in widths]
        self.init_head(channels[-1], num_classes, global_pool, drop_rate, classifier="fc")
        self.set_feature_info(channels, (4, 8, 16, 32), [f"layer{i}" for i in range(1, 5)])
        del self._conv_factory
        self._init_weights()

    def _conv(self, in_chs: int, out_chs: int, k: int, stride: int, stage: int, block: int, role: str) -> nn.Module:
        spec = ConvSpec(in_chs, out_chs, k, stride, stage, block, role)
        return _check_conv(self._conv_factory(spec), spec)

    def _block(self, in_chs: int, planes: int, stride: int, stage: int, index: int, drop_path: float) -> Block:
        out_chs = planes * BLOCK_EXPANSION[self.block_type]
        shortcut = None
        if stride != 1 or in_chs != out_chs:
            # Made before the block's own convolutions: factories that record layers (KernelWarehouse)
            # see them in the order the official code creates them.
            conv = self._conv(in_chs, out_chs, 1, stride, stage, index, "downsample")
            shortcut = ("downsample", nn.Sequential(conv, nn.BatchNorm2d(out_chs)))
        # (in, out, kernel, stride) of conv1, conv2[, conv3]: v1.5 strides on the 3x3.
        if self.block_type == "basic":
            convs = [(in_chs, planes, 3, stride), (planes, planes, 3, 1)]
        else:
            convs = [(in_chs, planes, 1, 1), (planes, planes, 3, stride), (planes, out_chs, 1, 1)]
        steps = []
        for i, (cin, cout, k, s) in enumerate(convs, start=1):
            if i > 1:
                steps.append((f"act{i - 1}", nn.ReLU(inplace=True)))
            steps.append((f"conv{i}", self._conv(cin, cout, k, s, stage, index, f"conv{i}")))
            steps.append((f"bn{i}", nn.BatchNorm2d(cout)))
        last = f"act{len(convs)}"
        branch = Branch(steps, shortcut=shortcut, drop_path=drop_path, after=[(last, nn.ReLU(inplace=True))])
        return Block(branch, dim=out_chs)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # torchvision's (and the official ACmix and KernelWarehouse ResNets') initialisation; timm's
        # resnet differs only in zeroing the last BatchNorm of each block.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- Backbone hooks -------------------------------------------------------------------------

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1``, ``bn1``, ``act1``, ``maxpool``: the image at stride 4.

        Args:
            x: Images ``(B, 3, H, W)`` (3 is ``in_chans``).

        Returns:
            The stem's map ``(B, C, H/4, W/4)``, ``C = stem_width`` (sizes rounded up at each stride-2 layer).
        """
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def stage_modules(self) -> list[nn.Module]:
        """The four stages.

        Returns:
            ``[layer1, layer2, layer3, layer4]``, each an ``nn.Sequential`` of blocks (or ``nn.Identity``
            once pruned).
        """
        return [getattr(self, f"layer{i}") for i in range(1, 5)]

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``index`` (``layer{index + 1}``), recomputed in backward with grad checkpointing.

        Args:
            index: Stage index, from 0.
            x: The stem's map for stage 0, else the previous stage's map.

        Returns:
            This stage's map ``(B, C_i, H/r_i, W/r_i)``, ``C_i = widths[i] * expansion``, ``r_i = 4, 8, 16, 32``.
        """
        stage = self.stage_modules()[index]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def prune_stages(self, keep: int) -> None:
        """Replace the stages after the first ``keep`` with ``nn.Identity`` (as timm's ResNet).

        Args:
            keep: Number of stages to keep.
        """
        for i in range(keep + 1, 5):
            setattr(self, f"layer{i}", nn.Identity())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's ResNet groups: the stem, then each stage (``coarse``) or each block.

        Args:
            coarse: One group per stage (``layer{s}``) instead of one per block (``layer{s}.{b}``).

        Returns:
            timm's matcher dict with the regexes ``stem`` and ``blocks``.
        """
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")
