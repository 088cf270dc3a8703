"""KernelWarehouse MobileNetV2: inverted residuals whose convolutions share per-stage warehouses.

Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic Convolution", ICML 2024
(arXiv:2308.08361); the official models are ``models/kw_mobilenetv2.py`` (1x, 4x) and
``models/kw1d2x_mobilenetv2.py`` (1/2x) of OSVAI/KernelWarehouse with the ``configs/mobilenetv2_100``
and ``configs/mobilenetv2_050`` settings. MobileNetV2 itself is Sandler et al., "MobileNetV2:
Inverted Residuals and Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381).

The network is timm's ``mobilenetv2_100`` / ``mobilenetv2_050`` under timm's names (``conv_stem``,
``bn1``, ``blocks.i.j.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}``, the first block's
``{conv_dw,bn1,conv_pw,bn2}``, ``conv_head``, ``bn2``, ``classifier``; the norms are timm's
``BatchNormAct2d``), built from the shared [`Block`][zoo.blocks.Block]; ``kw=None`` gives exactly
timm's model, whose state dict loads unchanged. The KW variants, as the official configs:

* 1x and 4x: every convolution is a [`KWConv2d`][unifiedops.KWConv2d] (the stem, the depth-wise
  3x3s, the point-wise layers and the final 1x1 to 1280); the classifier stays ``Linear``. The seven
  block rows belong to warehouse stages ``1, 2, 3, 4, 5, 6, 6``; the first block of a new stage
  draws from the previous stage's warehouses (the handover). 1x shares per stage one warehouse
  between the point-wise layers and one for the depth-wise ones (``sharing_range=("layer",
  "pwconv")``, ``cell_num_ratio=1``); 4x keeps expansion, depth-wise and projection layers apart
  (``("layer",)``) with ``cell_num_ratio=4``.
* 1/2x: the stem, the depth-wise convolutions, the final 1x1 and the classifier (a
  [`KWLinear`][unifiedops.KWLinear], keys ``classifier.conv.*``) are KW; the point-wise layers are KW
  only in warehouse stage 6 (the 160- and 320-channel rows after the handover block). Attention
  reduction 1/32, ten warehouses with the official per-warehouse ratios, dropout 0.1.

Parameter names of the KW layers are the official ones (``warehouse_manager.weights.<i>``,
``...attention.{fc1,norm1,fc2}``); the official model keeps torchvision's layout
(``features.<i>.conv.<j>``), which
[`convert_official_mobilenetv2`][zoo.kw_mobilenetv2.convert_official_mobilenetv2] renames. Training:
the official recipe decays the KW temperature from 1 to 0 over the first 15 epochs
([`TemperatureSchedule`][unifiedops.TemperatureSchedule] with ``temp_epochs=15``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import BatchNormAct2d, make_divisible
from torch import nn

from unifiedops.warehouse import Warehouse
from zoo.blocks import Backbone, Block, Branch, register_variants

__all__ = ["KW_CONFIGS", "KWMobileNetV2", "convert_official_mobilenetv2"]

# (expansion t, channels c, blocks n, stride s) of each row: MobileNetV2's table.
_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_ROW_STAGE = (1, 2, 3, 4, 5, 6, 6)  # the official warehouse stage of each row
_FEATURE_ROWS = (1, 2, 4, 6)  # last row of each stride: reductions 4, 8, 16, 32

KW_CONFIGS: dict[str, dict[str, Any]] = {
    "1x": dict(warehouse=dict(cell_num_ratio=1, sharing_range=("layer", "pwconv"))),
    "4x": dict(warehouse=dict(cell_num_ratio=4, sharing_range=("layer",))),
    "1d2x": dict(
        warehouse=dict(
            reduction=0.03125,
            cell_num_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5),
            cell_inplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025),
            cell_outplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1),
            # The official tuple("layer") is the characters l, a, y, e, r: the same grouping.
            sharing_range=("layer",),
        ),
        pointwise_stages=(6,),
        kw_classifier=True,
    ),
}
"""The official KW settings by size: ``warehouse`` (the [`Warehouse`][unifiedops.warehouse.Warehouse]
arguments), ``pointwise_stages`` (warehouse stages whose point-wise layers are KW; all by default)
and ``kw_classifier``."""


class KWMobileNetV2(Backbone):
    """MobileNetV2 in timm's layout, with plain or KernelWarehouse convolutions.

    Args:
        width_mult: Channel multiplier (1.0 for ``mobilenetv2_100``, 0.5 for ``_050``).
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        global_pool: Pooling type.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth of the residual blocks (timm's linear rule).
        kw: ``None`` for plain convolutions (timm's MobileNetV2), or a KW setting: ``warehouse`` (the
            [`Warehouse`][unifiedops.warehouse.Warehouse] arguments), optionally ``pointwise_stages``
            and ``kw_classifier``, as in [`KW_CONFIGS`][zoo.kw_mobilenetv2.KW_CONFIGS].

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
        width_mult: float = 1.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kw: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number, got width_mult={width_mult!r}")
        if kw is not None and (not isinstance(kw, Mapping) or "warehouse" not in kw):
            raise TypeError(f"kw must be None or a mapping with a 'warehouse' entry, got {kw!r}")
        unknown = set(kw or {}) - {"warehouse", "pointwise_stages", "kw_classifier"}
        if unknown:
            raise ValueError(f"kw has unknown keys {sorted(unknown)}")
        self.kw = kw is not None
        if self.kw:
            self.warehouse_manager = Warehouse(**kw["warehouse"])
            self._pointwise_stages = tuple(kw.get("pointwise_stages", range(7)))
        width = make_divisible(32 * width_mult, 8)
        self.conv_stem = self._conv(in_chans, width, 3, 2, name="stage0_conv0")
        self.bn1 = BatchNormAct2d(width, act_layer=nn.ReLU6)
        total = sum(row[2] for row in _ROWS)
        rows, channels, layer, index = [], [], 0, 0
        for r, (t, c, n, s) in enumerate(_ROWS):
            out = make_divisible(c * width_mult, 8)
            blocks = []
            for j in range(n):
                handover = j == 0 and r > 0 and _ROW_STAGE[r] != _ROW_STAGE[r - 1]
                stage = _ROW_STAGE[r] - 1 if handover else _ROW_STAGE[r]
                blocks.append(
                    self._block(width, out, s if j == 0 else 1, t, stage, layer, drop_path_rate * index / total)
                )
                width, layer, index = out, layer + 1, index + 1
                if handover:
                    layer = 0
            rows.append(nn.Sequential(*blocks))
            channels.append(out)
        self.blocks = nn.Sequential(*rows)
        head = make_divisible(1280 * max(1.0, width_mult), 8)
        self.conv_head = self._conv(width, head, 1, 1, name=f"stage{_ROW_STAGE[-1]}_layer{layer}_pwconv1")
        self.bn2 = BatchNormAct2d(head, act_layer=nn.ReLU6)
        self.init_head(head, num_classes, global_pool, drop_rate, classifier="classifier")
        if self.kw and kw.get("kw_classifier", False) and num_classes > 0:
            self.classifier = self.warehouse_manager.reserve(
                head, num_classes, warehouse_name="classifier", layer_type="linear"
            )
        self.set_feature_info(
            [channels[r] for r in _FEATURE_ROWS], (4, 8, 16, 32), [f"blocks.{r}" for r in _FEATURE_ROWS]
        )
        self._init_weights()
        if self.kw:
            self.warehouse_manager.build(self)

    def _conv(self, cin: int, cout: int, k: int, stride: int, *, groups: int = 1, name: str, kw: bool = True):
        if self.kw and kw:
            return self.warehouse_manager.reserve(cin, cout, k, stride, groups=groups, bias=False, warehouse_name=name)
        return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)

    def _block(self, cin: int, cout: int, stride: int, t: int, stage: int, layer: int, drop_path: float) -> Block:
        hidden = round(cin * t)
        prefix = f"stage{stage}_layer{layer}"
        pointwise = self.kw and stage in self._pointwise_stages
        residual = stride == 1 and cin == cout
        # Reserved in the official order (expansion, depth-wise, projection): it fixes the cells' order.
        steps = []
        if t != 1:
            expand = self._conv(cin, hidden, 1, 1, name=f"{prefix}_pwconv0", kw=pointwise)
            steps += [("conv_pw", expand), ("bn1", BatchNormAct2d(hidden, act_layer=nn.ReLU6))]
        dw_norm = "bn1" if t == 1 else "bn2"  # timm's DepthwiseSeparableConv when there is no expansion
        steps += [
            ("conv_dw", self._conv(hidden, hidden, 3, stride, groups=hidden, name=f"{prefix}_dwconv0")),
            (dw_norm, BatchNormAct2d(hidden, act_layer=nn.ReLU6)),
            (
                "conv_pw" if t == 1 else "conv_pwl",
                self._conv(hidden, cout, 1, 1, name=f"{prefix}_pwconv1", kw=pointwise),
            ),
            ("bn2" if t == 1 else "bn3", BatchNormAct2d(cout, apply_act=False)),
        ]
        return Block(Branch(steps, residual=residual, drop_path=drop_path if residual else 0.0), dim=cout)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # The official initialisation (torchvision's); warehouse cells are initialised by
        # Warehouse.allocate afterwards.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

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


def convert_official_mobilenetv2(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official (KW) MobileNetV2 state dict, in torchvision's layout, to this module's.

    ``features.0.{0,1}`` become ``conv_stem``/``bn1``; ``features.<k>`` (k = 1..17) become
    ``blocks.<row>.<j>`` with ``conv.0.0``/``conv.0.1`` the first convolution and its norm,
    ``conv.1...`` the next; the last ``features`` entry becomes ``conv_head``/``bn2``; ``classifier.1``
    (the 1/2x model's KW classifier behind its dropout) becomes ``classifier``.

    Only the keys change: every tensor is passed through with its shape (a plain kernel stays
    ``(C_out, C_in, k, k)``, a BatchNorm vector ``(C,)``).

    Args:
        state_dict: The official model's ``state_dict()``.

    Returns:
        A state dict that loads into [`KWMobileNetV2`][zoo.kw_mobilenetv2.KWMobileNetV2] with ``strict=True``.
    """
    places = [(r, j) for r, row in enumerate(_ROWS) for j in range(row[2])]
    head_index = len(places) + 1
    out = {}
    for key, value in state_dict.items():
        match = re.match(r"^features\.(\d+)\.(.*)$", key)
        if match:
            index, rest = int(match[1]), match[2]
            if index == 0 or index == head_index:
                conv, norm = ("conv_stem", "bn1") if index == 0 else ("conv_head", "bn2")
                key = re.sub(r"^0\.", f"{conv}.", re.sub(r"^1\.", f"{norm}.", rest))
            else:
                r, j = places[index - 1]
                names = _official_block_names(_ROWS[r][0])
                sub = re.match(r"^conv\.(\d+)\.(?:(\d+)\.)?(.*)$", rest)
                position = (int(sub[1]), int(sub[2]) if sub[2] is not None else None)
                key = f"blocks.{r}.{j}.{names[position]}.{sub[3]}"
        key = re.sub(r"^classifier\.1\.", "classifier.", key)
        out[key] = value
    return out


def _official_block_names(t: int) -> dict[tuple[int, int | None], str]:
    """Where the layers of an official block (``conv.<i>[.<j>]``) sit in timm's block."""
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


_WIDTHS = {"100": 1.0, "050": 0.5}

register_variants(
    KWMobileNetV2,
    {
        f"kw_mobilenetv2_{width}_{size}": dict(
            width_mult=multiplier,
            kw=KW_CONFIGS[size],
            # The official 1/2x model's dropout before the classifier.
            **(dict(drop_rate=0.1) if size == "1d2x" else {}),
        )
        for width, multiplier in _WIDTHS.items()
        for size in KW_CONFIGS
    },
    module=__name__,
    first_conv="conv_stem",
    classifier="classifier",
    paper="arXiv:2308.08361",
    crop_pct=0.875,
    license="apache-2.0",
)
