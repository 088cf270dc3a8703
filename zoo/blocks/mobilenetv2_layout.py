"""The MobileNetV2 skeleton with a pluggable convolution: timm's layout and names.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
(arXiv:1801.04381), as timm's ``mobilenetv2_*``: a stem ``conv_stem`` (3x3/2) - ``bn1``, seven rows
``blocks.{row}`` of inverted residuals (``conv_pw`` 1x1 expansion - ``bn1`` - ``conv_dw`` 3x3
depth-wise - ``bn2`` - ``conv_pwl`` 1x1 projection - ``bn3``; the first row, without expansion, is
timm's ``DepthwiseSeparableConv`` ``conv_dw`` - ``bn1`` - ``conv_pw`` - ``bn2``), the head convolution
``conv_head`` (1x1 to 1280) - ``bn2``, global pooling and ``classifier``. The norms are timm's
``BatchNormAct2d`` (ReLU6, none after a projection), so timm's ``mobilenetv2_*`` state dicts load
unchanged into the plain network.

Every convolution is made by a *conv factory*, called with a
[`MobileNetV2ConvSpec`][zoo.blocks.mobilenetv2_layout.MobileNetV2ConvSpec] that says where the layer
sits (row, block, role), in the order the reference implementations create them: the stem, then per
block the expansion, the depth-wise and the projection layer, then the head. A factory that records
its layers (KernelWarehouse's warehouse manager) relies on that order.
[`plain_mobilenetv2_conv`][zoo.blocks.mobilenetv2_layout.plain_mobilenetv2_conv] gives the plain
``nn.Conv2d``; a family swaps some layers for an operator and keeps the rest. A *classifier factory*
may likewise replace the ``Linear`` classifier.

The official dynamic-convolution MobileNetV2s keep torchvision's layout (``features.<i>...``);
[`convert_official_mobilenetv2`][zoo.blocks.mobilenetv2_layout.convert_official_mobilenetv2]
renames their state dicts to this one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d, make_divisible
from torch import nn

from zoo.blocks.backbone import Backbone
from zoo.blocks.block import Block, Branch

__all__ = [
    "MOBILENETV2_ROLES",
    "MOBILENETV2_ROWS",
    "ClassifierFactory",
    "MobileNetV2ConvFactory",
    "MobileNetV2ConvSpec",
    "MobileNetV2Layout",
    "convert_official_mobilenetv2",
    "plain_mobilenetv2_conv",
]

MOBILENETV2_ROWS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
"""MobileNetV2's table: ``(expansion t, channels c, blocks n, stride s)`` of each row of blocks."""

MOBILENETV2_ROLES = ("stem", "pw", "dw", "pwl", "head")
"""Where a convolution sits: the stem, a block's expansion (``pw``), depth-wise (``dw``) or projection
(``pwl``) layer, or the head convolution."""

_FEATURE_ROWS = (1, 2, 4, 6)  # last row at each stride: reductions 4, 8, 16, 32


@dataclass(frozen=True)
class MobileNetV2ConvSpec:
    """One convolution of the MobileNetV2 skeleton, as the conv factory sees it.

    A factory returns a module that maps ``(B, in_chs, H, W)`` to
    ``(B, out_chs, ceil(H / stride), ceil(W / stride))`` (zero padding ``kernel_size // 2``).

    Attributes:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Kernel size (3 for the stem and the depth-wise layers, 1 otherwise).
        stride: Stride (2 for the stem and the first depth-wise layer of a strided row).
        groups: Channel groups (``in_chs`` for a depth-wise layer, else 1).
        row: Row of blocks from 0 (``-1`` for the stem, ``len(MOBILENETV2_ROWS)`` for the head).
        block: Block index within the row (0 for the stem and the head).
        role: One of [`MOBILENETV2_ROLES`][zoo.blocks.mobilenetv2_layout.MOBILENETV2_ROLES]; the first
            row's second layer is a projection (``"pwl"``) although timm names it ``conv_pw``.
    """

    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    groups: int
    row: int
    block: int
    role: str


MobileNetV2ConvFactory = Callable[[MobileNetV2ConvSpec], nn.Module]
"""Makes the layer for one [`MobileNetV2ConvSpec`][zoo.blocks.mobilenetv2_layout.MobileNetV2ConvSpec]."""

ClassifierFactory = Callable[[int, int], nn.Module]
"""Makes the classifier from ``(in_features, num_classes)``: a module mapping ``(B, in_features)`` to
``(B, num_classes)``."""


def plain_mobilenetv2_conv(spec: MobileNetV2ConvSpec) -> nn.Conv2d:
    """The plain MobileNetV2's layer: ``nn.Conv2d`` without bias, padded by ``kernel_size // 2``.

    Args:
        spec: Where the layer sits and its shape.

    Returns:
        The convolution.
    """
    k = spec.kernel_size
    return nn.Conv2d(spec.in_chs, spec.out_chs, k, spec.stride, k // 2, groups=spec.groups, bias=False)


class MobileNetV2Layout(Backbone):
    """MobileNetV2 in timm's layout whose convolutions (and classifier) come from factories.

    Keys: ``conv_stem``, ``bn1``, ``blocks.{row}.{j}.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}`` (row 0:
    ``{conv_dw,bn1,conv_pw,bn2}``), ``conv_head``, ``bn2``, ``classifier``; modules given as ``shared``
    come first. Blocks with stride 1 and equal widths add their input (with timm's stochastic depth:
    the rate grows linearly with the block index, ``drop_path_rate * i / 17`` for 17 blocks). Weights get the
    official (torchvision's) initialisation: Kaiming normal (``fan_out``) for every ``nn.Conv2d``,
    ones and zeros for BatchNorm, ``N(0, 0.01)`` and zero bias for ``nn.Linear``.

    Args:
        conv_factory: Makes every convolution, called in the official order (see
            [`MobileNetV2ConvSpec`][zoo.blocks.mobilenetv2_layout.MobileNetV2ConvSpec]).
        classifier_factory: Makes the classifier from ``(head channels, num_classes)`` when
            ``num_classes > 0``, after ``conv_head`` (``None``: ``nn.Linear``). ``reset_classifier``
            puts back an ``nn.Linear``.
        width_mult: Channel multiplier (1.0 for ``mobilenetv2_100``, 0.5 for ``_050``); widths are
            rounded to multiples of 8, the head's 1280 is only ever widened.
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        global_pool: Pooling type.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth of the residual blocks.
        shared: Modules the factories draw on (KernelWarehouse's manager), registered before the stem
            so that their keys lead the state dict, as in the official models.
        rows: The ``(t, c, n, s)`` of the seven rows of blocks (MobileNetV2's table by default; fewer
            blocks per row give a shallow model for tests).

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``. The stem has stride 2; the four stage maps are the
        outputs of block rows 1, 2, 4 and 6, ``(B, C_i, H/r_i, W/r_i)`` at ``r_i = 4, 8, 16, 32`` (sizes
        rounded up), with ``C_i = 24, 32, 96, 320`` times ``width_mult`` (rounded to a multiple of 8).
        ``forward_features`` ends with ``conv_head``: ``(B, 1280, H/32, W/32)`` for ``width_mult <= 1``.
    """

    norm_attr = None
    stage_attr = "blocks"  # timm's layout: rows of blocks, `blocks.{row}.{block}`

    def __init__(
        self,
        conv_factory: MobileNetV2ConvFactory = plain_mobilenetv2_conv,
        classifier_factory: ClassifierFactory | None = None,
        width_mult: float = 1.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        shared: Mapping[str, nn.Module] | None = None,
        rows: Sequence[tuple[int, int, int, int]] = MOBILENETV2_ROWS,
    ) -> None:
        super().__init__()
        rows = tuple(tuple(row) for row in rows)
        if len(rows) != len(MOBILENETV2_ROWS) or any(
            len(row) != 4 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in row) for row in rows
        ):
            raise ValueError(f"rows must be seven (t, c, n, s) tuples of positive ints, got rows={rows!r}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got width_mult={width_mult!r}")
        if not callable(conv_factory):
            raise TypeError(f"conv_factory must be callable, got {conv_factory!r}")
        if classifier_factory is not None and not callable(classifier_factory):
            raise TypeError(f"classifier_factory must be callable or None, got {classifier_factory!r}")
        for name, module in (shared or {}).items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"shared[{name!r}] must be an nn.Module, got {type(module).__name__}")
            self.add_module(name, module)
        # Held only while building: a factory may close over state (a warehouse manager) that the
        # finished module should not carry, nor pickle.
        self._conv_factory = conv_factory

        width = make_divisible(32 * width_mult, 8)
        self.conv_stem = self._conv(in_chans, width, 3, 2, 1, -1, 0, "stem")
        self.bn1 = BatchNormAct2d(width, act_layer=nn.ReLU6)
        total = sum(row[2] for row in rows)
        sequences, channels, index = [], [], 0
        for r, (t, c, n, s) in enumerate(rows):
            out = make_divisible(c * width_mult, 8)
            blocks = []
            for j in range(n):
                blocks.append(self._block(width, out, s if j == 0 else 1, t, r, j, drop_path_rate * index / total))
                width, index = out, index + 1
            sequences.append(nn.Sequential(*blocks))
            channels.append(out)
        self.blocks = nn.Sequential(*sequences)
        head = make_divisible(1280 * max(1.0, width_mult), 8)
        self.conv_head = self._conv(width, head, 1, 1, 1, len(rows), 0, "head")
        self.bn2 = BatchNormAct2d(head, act_layer=nn.ReLU6)
        self.init_head(head, num_classes, global_pool, drop_rate, classifier="classifier")
        if classifier_factory is not None and num_classes > 0:
            # Replaces the Linear in place, so the key keeps its position in the state dict.
            classifier = classifier_factory(head, num_classes)
            if not isinstance(classifier, nn.Module):
                raise TypeError(f"classifier_factory must return an nn.Module, got {type(classifier).__name__}")
            self.classifier = classifier
        self.set_feature_info(
            [channels[r] for r in _FEATURE_ROWS], (4, 8, 16, 32), [f"blocks.{r}" for r in _FEATURE_ROWS]
        )
        del self._conv_factory
        self._init_weights()

    def _conv(
        self, cin: int, cout: int, k: int, stride: int, groups: int, row: int, block: int, role: str
    ) -> nn.Module:
        spec = MobileNetV2ConvSpec(cin, cout, k, stride, groups, row, block, role)
        layer = self._conv_factory(spec)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"conv_factory must return an nn.Module for {spec}, got {type(layer).__name__}")
        return layer

    def _block(self, cin: int, cout: int, stride: int, t: int, row: int, j: int, drop_path: float) -> Block:
        hidden = round(cin * t)
        residual = stride == 1 and cin == cout
        # Made in the official order (expansion, depth-wise, projection): factories that record
        # their layers (KernelWarehouse) fix the order of their cells by it.
        steps = []
        if t != 1:
            expand = self._conv(cin, hidden, 1, 1, 1, row, j, "pw")
            steps += [("conv_pw", expand), ("bn1", BatchNormAct2d(hidden, act_layer=nn.ReLU6))]
        depthwise = self._conv(hidden, hidden, 3, stride, hidden, row, j, "dw")
        steps += [("conv_dw", depthwise), ("bn1" if t == 1 else "bn2", BatchNormAct2d(hidden, act_layer=nn.ReLU6))]
        project = self._conv(hidden, cout, 1, 1, 1, row, j, "pwl")
        # Without expansion timm's block is a DepthwiseSeparableConv, which names these conv_pw and bn2.
        steps += [
            ("conv_pw" if t == 1 else "conv_pwl", project),
            ("bn2" if t == 1 else "bn3", BatchNormAct2d(cout, apply_act=False)),
        ]
        return Block(Branch(steps, residual=residual, drop_path=drop_path if residual else 0.0), dim=cout)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # The official initialisation (torchvision's MobileNetV2). Layers that are not nn.Conv2d
        # (warehouse cells, ODConv kernels) keep their own initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- Backbone hooks -------------------------------------------------------------------------

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-2 3x3 stem convolution and its BatchNorm + ReLU6.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The stem's map ``(B, C, H/2, W/2)``, ``C = 32 * width_mult`` rounded to a multiple of 8.
        """
        return self.bn1(self.conv_stem(x))

    def stage_modules(self) -> Sequence[nn.Module]:
        """The rows of blocks that end at each stride, as four ``nn.Sequential`` views.

        Returns:
            Four new ``nn.Sequential`` over the rows of ``blocks`` (rows 0-1, 2, 3-4, 5-6); they share the
            rows' modules, so running them runs the model's own blocks.
        """
        bounds = (0, *(r + 1 for r in _FEATURE_ROWS))
        return [nn.Sequential(*self.blocks[a:b]) for a, b in itertools.pairwise(bounds)]

    def prune_stages(self, keep: int) -> None:
        """Drop the rows after stage ``keep - 1`` and the head convolution.

        Args:
            keep: Number of stages to keep.
        """
        del self.blocks[_FEATURE_ROWS[keep - 1] + 1 :]
        self._drop_head_conv()

    def _drop_head_conv(self) -> None:
        self.conv_head, self.bn2 = nn.Identity(), nn.Identity()

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1x1 convolution to 1280 channels with its BatchNorm + ReLU6 (timm's place for it).

        Args:
            x: The last stage's map ``(B, C_3, H/32, W/32)``.

        Returns:
            ``(B, 1280, H/32, W/32)`` (``1280 * width_mult`` rounded to a multiple of 8 when ``width_mult > 1``);
            ``x`` itself once ``conv_head`` is pruned.
        """
        return self.bn2(self.conv_head(x))

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As [`Backbone`][zoo.blocks.Backbone]'s; ``prune_norm`` also drops ``conv_head`` and ``bn2`` (timm).

        Args:
            indices: Stages to keep features of: an int keeps the last ``n`` of the four, a sequence names
                them.
            prune_norm: Remove ``conv_head`` and ``bn2``, the layers ``forward_norm`` runs.
            prune_head: Remove the classifier.

        Returns:
            The absolute indices of the stages whose maps ``forward_intermediates`` returns.
        """
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_norm:
            self._drop_head_conv()
        return take


def convert_official_mobilenetv2(
    state_dict: Mapping[str, torch.Tensor], *, flat_blocks: bool = False
) -> dict[str, torch.Tensor]:
    """Rename an official dynamic MobileNetV2 state dict, in torchvision's layout, to timm's.

    Serves the KernelWarehouse and ODConv MobileNetV2s (and torchvision's own ``mobilenet_v2``) and,
    with ``flat_blocks``, the DCD MobileNetV2 (the layout of tonylins/pytorch-mobilenet-v2). A
    DataParallel ``module.`` prefix is dropped; ``features.0.{0,1}`` become ``conv_stem``/``bn1``;
    ``features.<k>`` (k = 1..17) become ``blocks.<row>.<j>``, with ``conv.0.0``/``conv.0.1`` the first
    convolution and its norm, ``conv.1...`` the next, and so on (flat: ``conv.<i>``, one ``Sequential``
    of convolutions, norms and activations); the head is the last ``features`` entry (flat: the
    top-level ``conv``) and becomes ``conv_head``/``bn2``; the classifier behind the official
    ``Dropout`` (``classifier.1``, or ``classifier.0`` without one) becomes ``classifier``. Other keys
    (``warehouse_manager.*``) pass unchanged.

    Only the keys change, in their order: every tensor is passed through with its shape (a plain
    kernel stays ``(C_out, C_in, k, k)``, an ODConv kernel ``(n, C_out, C_in, k, k)``, a BatchNorm
    vector ``(C,)``).

    Args:
        state_dict: The official model's ``state_dict()``.
        flat_blocks: The blocks are flat ``Sequential``s and the head a top-level ``conv`` (DCD).

    Returns:
        A state dict that loads into the matching model on
        [`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] with ``strict=True``.
    """
    places = [(r, j) for r, row in enumerate(MOBILENETV2_ROWS) for j in range(row[2])]
    head_index = None if flat_blocks else len(places) + 1
    block_pattern = r"^conv\.(\d+)\.()(.*)$" if flat_blocks else r"^conv\.(\d+)\.(?:(\d+)\.)?(.*)$"
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        match = re.match(r"^features\.(\d+)\.(.*)$", key)
        if match:
            index, rest = int(match[1]), match[2]
            if index == 0 or index == head_index:
                conv, norm = ("conv_stem", "bn1") if index == 0 else ("conv_head", "bn2")
                key = re.sub(r"^0\.", f"{conv}.", re.sub(r"^1\.", f"{norm}.", rest))
            else:
                r, j = places[index - 1]
                names = _official_block_names(MOBILENETV2_ROWS[r][0], flat_blocks)
                sub = re.match(block_pattern, rest)
                position = None if sub is None else (int(sub[1]), int(sub[2]) if sub[2] else None)
                if position not in names:
                    raise ValueError(f"state_dict has a key outside the official block layout: {key!r}")
                key = f"blocks.{r}.{j}.{names[position]}.{sub[3]}"
        elif flat_blocks:
            key = re.sub(r"^conv\.0\.", "conv_head.", re.sub(r"^conv\.1\.", "bn2.", key))
        key = re.sub(r"^classifier\.[01]\.", "classifier.", key)
        out[key] = value
    return out


def _official_block_names(t: int, flat: bool = False) -> dict[tuple[int, int | None], str]:
    """Where the layers of an official block (``conv.<i>[.<j>]``) sit in timm's block."""
    if flat:  # conv, norm, activation, conv, norm[, activation, conv, norm]: indices 0, 1, 3, 4, 6, 7
        names = ["conv_dw", "bn1", "conv_pw", "bn2"] if t == 1 else ["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl"]
        names += [] if t == 1 else ["bn3"]
        return {(3 * (i // 2) + i % 2, None): name for i, name in enumerate(names)}
    if t == 1:
        return {(0, 0): "conv_dw", (0, 1): "bn1", (1, None): "conv_pw", (2, None): "bn2"}
    return {
        (0, 0): "conv_pw",
        (0, 1): "bn1",
        (1, 0): "conv_dw",
        (1, 1): "bn2",
        (2, None): "conv_pwl",
        (3, None): "bn3",
    }
