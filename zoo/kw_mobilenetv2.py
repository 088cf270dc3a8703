"""KernelWarehouse MobileNetV2: inverted residuals whose convolutions share per-stage warehouses.

Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic Convolution", ICML 2024
(arXiv:2308.08361); the official models are ``models/kw_mobilenetv2.py`` (1x, 4x) and
``models/kw1d2x_mobilenetv2.py`` (1/2x) of OSVAI/KernelWarehouse with the ``configs/mobilenetv2_100``
and ``configs/mobilenetv2_050`` settings. MobileNetV2 itself is Sandler et al., "MobileNetV2:
Inverted Residuals and Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381).

The network is timm's ``mobilenetv2_100`` / ``mobilenetv2_050`` under timm's names (``conv_stem``,
``bn1``, ``blocks.i.j.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}``, the first block's
``{conv_dw,bn1,conv_pw,bn2}``, ``conv_head``, ``bn2``, ``classifier``; the norms are timm's
``BatchNormAct2d``), the shared skeleton
[`MobileNetV2Layout`][zoo.blocks.mobilenetv2_layout.MobileNetV2Layout] with a conv factory that
reserves each layer in the warehouses; ``kw=None`` gives exactly
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
[`convert_official_mobilenetv2`][zoo.blocks.mobilenetv2_layout.convert_official_mobilenetv2] renames. Training:
the official recipe decays the KW temperature from 1 to 0 over the first 15 epochs
([`TemperatureSchedule`][unifiedops.TemperatureSchedule] with ``temp_epochs=15``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from unifiedops.warehouse import Warehouse
from zoo.blocks import register_variants
from zoo.blocks.mobilenetv2_layout import (
    MOBILENETV2_ROWS,
    MobileNetV2ConvSpec,
    MobileNetV2Layout,
    convert_official_mobilenetv2,
    plain_mobilenetv2_conv,
)

__all__ = ["KW_CONFIGS", "KWMobileNetV2", "convert_official_mobilenetv2"]

_ROW_STAGE = (1, 2, 3, 4, 5, 6, 6)  # the official warehouse stage of each row

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


def _warehouse_places(rows: tuple[tuple[int, int, int, int], ...]) -> dict[tuple[int, int], tuple[int, int]]:
    """The official ``(stage, layer)`` of each block ``(row, j)`` and of the head ``(7, 0)``.

    Layers count from 0 within a warehouse stage; the first block of a new stage is the previous
    stage's next layer (the handover), after which the count restarts.
    """
    places, layer = {}, 0
    for r, (_, _, n, _) in enumerate(rows):
        for j in range(n):
            handover = j == 0 and r > 0 and _ROW_STAGE[r] != _ROW_STAGE[r - 1]
            places[(r, j)] = (_ROW_STAGE[r] - 1 if handover else _ROW_STAGE[r], layer)
            layer = 0 if handover else layer + 1
    places[(len(rows), 0)] = (_ROW_STAGE[-1], layer)
    return places


# The official layer names' suffix per role: expansion and head are pwconv0/pwconv1 of their block.
_ROLE_SUFFIX = {"pw": "pwconv0", "dw": "dwconv0", "pwl": "pwconv1", "head": "pwconv1"}


class KWMobileNetV2(MobileNetV2Layout):
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
        rows: The ``(t, c, n, s)`` of the seven rows (MobileNetV2's table; fewer blocks per row give a
            shallow model, whose warehouses follow the same stage rule).

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``. The stem has stride 2; the four stage maps are the
        outputs of block rows 1, 2, 4 and 6, ``(B, C_i, H/r_i, W/r_i)`` at ``r_i = 4, 8, 16, 32`` (sizes
        rounded up), with ``C_i = 24, 32, 96, 320`` times ``width_mult`` (rounded to a multiple of 8).
        ``forward_features`` ends with ``conv_head``: ``(B, 1280, H/32, W/32)`` for ``width_mult <= 1``.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kw: Mapping[str, Any] | None = None,
        rows: Sequence[tuple[int, int, int, int]] = MOBILENETV2_ROWS,
    ) -> None:
        rows = tuple(tuple(row) for row in rows)
        if kw is not None and (not isinstance(kw, Mapping) or "warehouse" not in kw):
            raise TypeError(f"kw must be None or a mapping with a 'warehouse' entry, got {kw!r}")
        unknown = set(kw or {}) - {"warehouse", "pointwise_stages", "kw_classifier"}
        if unknown:
            raise ValueError(f"kw has unknown keys {sorted(unknown)}")
        common = dict(width_mult=width_mult, in_chans=in_chans, num_classes=num_classes, global_pool=global_pool)
        common.update(drop_rate=drop_rate, drop_path_rate=drop_path_rate, rows=rows)
        if kw is None:
            super().__init__(plain_mobilenetv2_conv, **common)
            self.kw = False
            return
        manager = Warehouse(**kw["warehouse"])
        pointwise_stages = tuple(kw.get("pointwise_stages", range(7)))
        places = _warehouse_places(rows)

        def conv(spec: MobileNetV2ConvSpec) -> nn.Module:
            if spec.role == "stem":
                name = "stage0_conv0"
            else:
                stage, layer = places[(spec.row, spec.block)]
                if spec.role in ("pw", "pwl") and stage not in pointwise_stages:
                    return plain_mobilenetv2_conv(spec)
                name = f"stage{stage}_layer{layer}_{_ROLE_SUFFIX[spec.role]}"
            return manager.reserve(
                spec.in_chs,
                spec.out_chs,
                spec.kernel_size,
                spec.stride,
                groups=spec.groups,
                bias=False,
                warehouse_name=name,
            )

        def classifier(in_features: int, classes: int) -> nn.Module:
            return manager.reserve(in_features, classes, warehouse_name="classifier", layer_type="linear")

        # The manager leads the state dict, as in the official model, which creates it first.
        super().__init__(
            conv,
            classifier if kw.get("kw_classifier", False) else None,
            **common,
            shared={"warehouse_manager": manager},
        )
        self.kw = True
        # After the plain layers' initialisation, as the official model: cells, then attentions.
        manager.build(self)


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
