"""ConvNeXt built from the [`DWConv`][unifiedops.DWConv] preset, and its KernelWarehouse version.

ConvNeXt is from "A ConvNet for the 2020s" (Liu, Mao, Wu, Feichtenhofer, Darrell, Xie; CVPR 2022,
arXiv:2201.03545). The network is a ``4 x 4`` stride-4 patch stem with a LayerNorm, four stages of
blocks separated by LayerNorm + ``2 x 2`` stride-2 convolutions, global pooling, a LayerNorm and the
classifier. A block is ``x + gamma * mlp(norm(dwconv7x7(x)))`` with a channels-last LayerNorm,
``mlp = fc1 (C -> 4C) -> GELU -> fc2 (4C -> C)`` and a per-channel layer scale ``gamma``.

[`ConvNeXt`][zoo.convnext_family.ConvNeXt] keeps timm's parameter names (``stem.{0,1}``,
``stages.i.downsample.{0,1}``, ``stages.i.blocks.j.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``,
``head.norm``, ``head.fc``), so ``timm.create_model("convnext_tiny").state_dict()`` loads into
``uo_convnext_tiny`` unchanged.

``kw_convnext_tiny_1x`` is the KernelWarehouse ConvNeXt-T (Li & Yao, "KernelWarehouse: Rethinking
the Design of Dynamic Convolution", ICML 2024, arXiv:2308.08361; official ``models/kw_convnext.py``
and ``configs/convnext/kw1x_convnext_tiny.json`` of OSVAI/KernelWarehouse). Every convolution is a
[`KWConv2d`][unifiedops.KWConv2d]: the stem (``4 x 4``/4, padding 0), the downsampling (``2 x 2``/2),
the depth-wise ``7 x 7`` and the two point-wise layers (``1 x 1`` convolutions, not ``Linear``).
The attentions normalise with LayerNorm; the head stays plain. With the official names and
``sharing_range=("layer", "pwconv")`` there are 4 + 2 x 4 warehouses: the stem, each downsampling
layer, and per stage one for the depth-wise and one for both point-wise convolutions, in the official
order (stem and downsampling reserved first), so ``warehouse_manager.weights.<i>`` match the official
checkpoint's. The official model keeps the original ConvNeXt names (``downsample_layers``,
``stages.i.j.{dwconv,pwconv1,pwconv2}``, ``norm``, ``head``, ``gamma`` of shape ``(1, C, 1, 1)``);
[`convert_official_convnext`][zoo.convnext_family.convert_official_convnext] renames its state dict
(and the original ConvNeXt's) to this layout. The official training decays the KW temperature from 1
to 0 over 20 epochs ([`TemperatureSchedule`][unifiedops.TemperatureSchedule]) with drop path 0.3.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from unifiedops import DWConv
from unifiedops.warehouse import Warehouse
from zoo.blocks import Backbone, Block, Branch, Stage, build_backbone, pretrained_cfg

__all__ = ["ConvNeXt", "convert_official_convnext"]

_LN_EPS = 1e-6


class ConvNeXt(Backbone):
    """ConvNeXt in timm's layout, with plain or KernelWarehouse convolutions.

    Args:
        depths: Blocks per stage.
        dims: Channels per stage.
        in_chans: Input channels.
        num_classes: Classes (``0``: no classifier).
        kw: ``None`` for plain convolutions (timm's ConvNeXt), or the
            [`Warehouse`][unifiedops.warehouse.Warehouse] arguments (``reduction``, ``cell_num_ratio``,
            ``cell_inplane_ratio``, ``cell_outplane_ratio``, ``sharing_range``, ...) for a KW ConvNeXt;
            its attentions use LayerNorm unless ``norm_layer`` is given.
        global_pool: Pooling type.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic-depth rate of the last block (linear from 0).
        ls_init_value: Initial layer scale ``gamma`` (``None`` or 0: no layer scale).
        kernel_size: Kernel of the depth-wise convolutions.
        mlp_ratio: Hidden width of the MLP over the block width.
    """

    norm_attr = "norm_pre"

    def __init__(
        self,
        *,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_chans: int = 3,
        num_classes: int = 1000,
        kw: Mapping[str, Any] | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ls_init_value: float | None = 1e-6,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims must have 4 entries (stages), got depths={depths}, dims={dims}")
        if kw is not None and not isinstance(kw, Mapping):
            raise TypeError(f"kw must be None or a mapping of Warehouse arguments, got {type(kw).__name__}")
        self.kw = kw is not None
        if self.kw:
            self.warehouse_manager = Warehouse(**{"norm_layer": nn.LayerNorm, **kw})
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # python: also on "meta"
        # The official KW model reserves the stem and the downsampling layers before the blocks; the
        # reservation order is the order of the warehouses in the state dict.
        self.stem = nn.Sequential(
            self._conv(in_chans, dims[0], 4, stride=4, padding=0, name="stagestem_conv0"),
            LayerNorm2d(dims[0], eps=_LN_EPS),
        )
        downsamples = [None] + [
            nn.Sequential(
                LayerNorm2d(dims[i - 1], eps=_LN_EPS),
                self._conv(dims[i - 1], dims[i], 2, stride=2, padding=0, name=f"stage{i - 1}_layerds_conv0"),
            )
            for i in range(1, 4)
        ]
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            first = sum(depths[:i])
            blocks = [
                self._block(dim, i, j, rates[first + j], ls_init_value, kernel_size, mlp_ratio) for j in range(depth)
            ]
            stages.append(Stage(blocks, downsample=downsamples[i]))
        self.stages = nn.ModuleList(stages)
        self.norm_pre = nn.Identity()
        self.init_head(
            dims[-1],
            num_classes,
            global_pool,
            drop_rate,
            classifier="head.fc",
            head_norm=nn.LayerNorm(dims[-1], eps=_LN_EPS),
        )
        self.set_feature_info(dims, (4, 8, 16, 32), [f"stages.{i}" for i in range(4)])
        self.apply(self._init_weights)
        if self.kw:
            self.warehouse_manager.build(self)

    def _conv(
        self, cin: int, cout: int, k: int, *, stride: int = 1, padding: int, groups: int = 1, name: str
    ) -> nn.Module:
        if self.kw:
            return self.warehouse_manager.reserve(cin, cout, k, stride, padding, groups=groups, warehouse_name=name)
        if groups == cin == cout:
            return DWConv(cin, k)
        return nn.Conv2d(cin, cout, k, stride, padding, groups=groups)

    def _block(
        self, dim: int, stage: int, index: int, drop_path: float, ls_init: float | None, k: int, mlp_ratio: float
    ) -> Block:
        hidden = int(mlp_ratio * dim)
        prefix = f"stage{stage}_layer{index}"
        conv_dw = self._conv(dim, dim, k, padding=k // 2, groups=dim, name=f"{prefix}_dwconv0")
        if self.kw:  # the official KW block: 1x1 KW convolutions, channels-first
            fc1 = self.warehouse_manager.reserve(dim, hidden, 1, padding=0, warehouse_name=f"{prefix}_pwconv1")
            fc2 = self.warehouse_manager.reserve(hidden, dim, 1, padding=0, warehouse_name=f"{prefix}_pwconv2")
        else:
            fc1, fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        mlp = nn.Sequential(OrderedDict(fc1=fc1, act=nn.GELU(), fc2=fc2))
        steps = [("conv_dw", conv_dw), ("norm", nn.LayerNorm(dim, eps=_LN_EPS)), ("mlp", mlp)]
        scale = ("gamma", ls_init) if ls_init else None
        return Block(Branch(steps, layer_scale=scale, drop_path=drop_path), dim=dim)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The original and official KW ConvNeXt initialisation; warehouse cells are initialised by
        # Warehouse.allocate afterwards.
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Conv2d | nn.Linear | DWConv) and weight is not None:
            trunc_normal_(weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The patch stem: ``4 x 4`` stride-4 convolution and LayerNorm.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The first stage's input ``(B, C_0, H/4, W/4)`` (``C_0 = dims[0]``; sides rounded down).
        """
        return self.stem(x)


_OFFICIAL_RENAMES = (
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.dwconv\.", r"stages.\1.blocks.\2.conv_dw."),
    (r"^stages\.(\d+)\.(\d+)\.pwconv(\d)\.", r"stages.\1.blocks.\2.mlp.fc\3."),
    (r"^stages\.(\d+)\.(\d+)\.(norm\.|gamma$)", r"stages.\1.blocks.\2.\3"),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
)


def convert_official_convnext(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official ConvNeXt or official KW ConvNeXt state dict to this module's layout.

    The official code (facebookresearch/ConvNeXt ``models/convnext.py``, and OSVAI/KernelWarehouse
    ``models/kw_convnext.py``) names the stem and downsampling layers ``downsample_layers.i``, a
    block's layers ``stages.i.j.{dwconv,norm,pwconv1,pwconv2,gamma}``, the final norm ``norm`` and the
    classifier ``head``; its ``gamma`` is ``(1, C, 1, 1)`` in the KW model. KW keys
    (``warehouse_manager.weights.<i>``, ``...attention.*``) keep their suffixes.

    Args:
        state_dict: The official model's ``state_dict()``.

    Returns:
        A state dict that loads into [`ConvNeXt`][zoo.convnext_family.ConvNeXt] with ``strict=True``.
    """
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        if key.endswith(".gamma"):
            value = value.reshape(-1)
        out[key] = value
    return out


def _cfg(paper: str, **kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(first_conv="stem.0", classifier="head.fc", paper=paper, crop_pct=0.875, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "uo_convnext_tiny": _cfg("arXiv:2201.03545", license="mit"),
        "kw_convnext_tiny_1x": _cfg("arXiv:2308.08361", license="apache-2.0"),
    }
)

_KW_1X = dict(reduction=0.0625, cell_num_ratio=1, cell_inplane_ratio=1, cell_outplane_ratio=1)


@register_model
def uo_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T (28.6M parameters, 4.5 GFLOPs) from the DWConv preset; loads timm's ``convnext_tiny``.

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`ConvNeXt`][zoo.convnext_family.ConvNeXt] arguments, replacing the variant's
            (``depths=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return build_backbone(ConvNeXt, "uo_convnext_tiny", pretrained, **{"depths": (3, 3, 9, 3), **kwargs})


@register_model
def kw_convnext_tiny_1x(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T with KernelWarehouse 1x convolutions (39.37M parameters), the official config.

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`ConvNeXt`][zoo.convnext_family.ConvNeXt] arguments, replacing the variant's
            (``depths=(1, 1, 1, 1)`` for a shallow model; a ``kw`` mapping updates the official KW settings),
            and timm's (``features_only``, ``out_indices``, ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    kw = {**_KW_1X, "sharing_range": ("layer", "pwconv"), **kwargs.pop("kw", {})}
    return build_backbone(ConvNeXt, "kw_convnext_tiny_1x", pretrained, **{"depths": (3, 3, 9, 3), **kwargs, "kw": kw})
