"""KernelWarehouse ResNets: ResNet-18 and ResNet-50 whose block convolutions share per-stage warehouses.

Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic Convolution", ICML 2024
(arXiv:2308.08361); the official models are ``models/kw_resnet.py`` of OSVAI/KernelWarehouse with
the ``configs/resnet18`` and ``configs/resnet50`` settings.

Which layers become [`KWConv2d`][unifiedops.KWConv2d] (the official choice):

* every 3x3 and 1x1 convolution of the blocks, and the 1x1 ``downsample`` convolutions with stride 2;
* plain: the stem, ``fc``, ResNet-50's stride-1 ``downsample`` of ``layer1`` and the ``conv1`` of
  ``layer1.0``.

There is one warehouse per stage (``sharing_range=("layer", "conv")``), and a stage hands over to
the next: the first block's ``conv1`` and the ``downsample`` of stage ``s`` draw their cells from
the warehouse of stage ``s - 1`` (ResNet-18's ``layer1.0.conv1`` stays in stage 0's).

The variants are the official configs: ``kw_resnet18_{1d4x,1d2x,1x,2x,4x}`` (``cell_num_ratio``
1/4, 1/2, 1, 2, 4; cell in/out-plane ratios 1/2 for the two smaller, 1 otherwise) and
``kw_resnet50_{1d2x,1x,4x}`` (1/2x adds ``nonlocal_basis_ratio=0.0625``); attention reduction
0.0625 everywhere. Parameter names are the official ones (``warehouse_manager.weights.{0..3}``,
``layer{s}.{b}.conv{i}.attention.{fc1,norm1,fc2[,fc3,basis_bias]}``), so official checkpoints load
with ``strict=True``.

``kw=False`` builds the same network with every convolution plain: exactly timm's (and
torchvision's) ``resnet18``/``resnet50``, whose state dicts load into it unchanged.

Training: the KW attentions start with temperature 0; the official recipe decays it linearly from 1
to 0 over the first 20 epochs with [`TemperatureSchedule`][unifiedops.TemperatureSchedule] (or
[`set_temperature`][unifiedops.set_temperature]) stepped every iteration, and trains with a constant
``drop_path_rate`` of 0.1 (0 for ResNet-18 1/2x and 1/4x) and no dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from unifiedops.warehouse import Warehouse
from zoo.blocks import build_backbone
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv, resnet_cfg

__all__ = ["KWResNet", "warehouse_stage"]

Ratio = float | Sequence[float]


def warehouse_stage(spec: ConvSpec, block_type: str) -> int | None:
    """The stage whose warehouse a layer of the KW ResNet draws from, or ``None`` for a plain layer.

    Args:
        spec: The layer's place in the network.
        block_type: ``"basic"`` or ``"bottleneck"``.

    Returns:
        The warehouse's stage index, or ``None`` when the layer stays ``nn.Conv2d``.
    """
    if spec.role == "stem":
        return None
    if spec.role == "downsample":
        # Only the strided shortcuts are dynamic; they draw on the previous stage's warehouse.
        return spec.stage - 1 if spec.stride != 1 else None
    if spec.role == "conv1" and spec.block == 0:
        previous = spec.stage - 1
        if previous >= 0:
            return previous
        # The very first conv1: a basic block keeps it in stage 0; a bottleneck leaves it plain.
        return 0 if block_type == "basic" else None
    return spec.stage


class KWResNet(ResNetLayout):
    """A ResNet whose block convolutions are KernelWarehouse convolutions (or plain, ``kw=False``).

    Args:
        block: ``"basic"`` (ResNet-18) or ``"bottleneck"`` (ResNet-50).
        layers: Blocks per stage.
        kw: Use KernelWarehouse convolutions; ``False`` gives the plain ResNet (timm's layout).
        reduction: Hidden-width ratio of the KW attentions.
        cell_num_ratio: Warehouse cells over the cells the layers are cut into (the ``1/4x`` ... ``4x``).
        cell_inplane_ratio: Cell input channels over the gcd of the layers' input channels.
        cell_outplane_ratio: Cell output channels over the gcd of the layers' output channels.
        nonlocal_basis_ratio: Basis reduction of other layers' cells in each attention (off at 1).
        sharing_range: Name prefixes that collapse into one warehouse (one per stage by default).
        **kwargs: [`ResNetLayout`][zoo.blocks.resnet_layout.ResNetLayout] arguments (``num_classes``,
            ``in_chans``, ``drop_rate``, ``drop_path_rate``; ``drop_path_schedule`` defaults to the
            official ``"constant"``).

    Each ratio is a number, or one value per warehouse (four). The manager is the submodule
    ``warehouse_manager``; its ``weights`` are the only kernels of the KW layers.
    """

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        kw: bool = True,
        reduction: Ratio = 0.0625,
        cell_num_ratio: Ratio = 1,
        cell_inplane_ratio: Ratio = 1,
        cell_outplane_ratio: Ratio = 1,
        nonlocal_basis_ratio: Ratio = 1,
        sharing_range: Sequence[str] = ("layer", "conv"),
        **kwargs: Any,
    ) -> None:
        if not isinstance(kw, bool):
            raise TypeError(f"kw must be a bool, got {kw!r}")
        kwargs.setdefault("drop_path_schedule", "constant")
        if not kw:
            super().__init__(block, layers, plain_conv, **kwargs)
            return
        manager = Warehouse(
            reduction, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio, sharing_range, nonlocal_basis_ratio
        )

        def factory(spec: ConvSpec) -> nn.Module:
            stage = warehouse_stage(spec, block)
            if stage is None:
                return plain_conv(spec)
            # The official names; with the default sharing_range only the stage token matters.
            conv = {"conv1": 0, "conv2": 1, "conv3": 2, "downsample": 0}[spec.role]
            name = f"stage{stage}_layer{spec.block}_conv{conv}"
            return manager.reserve(
                spec.in_chs, spec.out_chs, spec.kernel_size, spec.stride, bias=False, warehouse_name=name
            )

        super().__init__(block, layers, factory, **kwargs)
        self.warehouse_manager = manager
        # After the plain layers' initialisation, as the official model: cells, then attentions.
        manager.build(self)


_VARIANTS: dict[str, dict[str, Any]] = {
    "kw_resnet18_1d4x": dict(cell_num_ratio=0.25, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5),
    "kw_resnet18_1d2x": dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5),
    "kw_resnet18_1x": dict(cell_num_ratio=1),
    "kw_resnet18_2x": dict(cell_num_ratio=2),
    "kw_resnet18_4x": dict(cell_num_ratio=4),
    "kw_resnet50_1d2x": dict(
        cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5, nonlocal_basis_ratio=0.0625
    ),
    "kw_resnet50_1x": dict(cell_num_ratio=1),
    "kw_resnet50_4x": dict(cell_num_ratio=4),
}


default_cfgs = generate_default_cfgs({name: resnet_cfg("arXiv:2308.08361", license="apache-2.0") for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> KWResNet:
    depth = (
        dict(block="basic", layers=(2, 2, 2, 2))
        if "resnet18" in variant
        else dict(block="bottleneck", layers=(3, 4, 6, 3))
    )
    return build_backbone(KWResNet, variant, pretrained, **{**depth, **_VARIANTS[variant], **kwargs})


@register_model
def kw_resnet18_1d4x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-18 + KW 1/4x (4.03M parameters; the paper gives 4.08M).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet18_1d4x", pretrained, **kwargs)


@register_model
def kw_resnet18_1d2x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-18 + KW 1/2x (7.43M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet18_1d2x", pretrained, **kwargs)


@register_model
def kw_resnet18_1x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-18 + KW 1x (11.93M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet18_1x", pretrained, **kwargs)


@register_model
def kw_resnet18_2x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-18 + KW 2x (23.24M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet18_2x", pretrained, **kwargs)


@register_model
def kw_resnet18_4x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-18 + KW 4x (45.86M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet18_4x", pretrained, **kwargs)


@register_model
def kw_resnet50_1d2x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-50 + KW 1/2x (17.64M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet50_1d2x", pretrained, **kwargs)


@register_model
def kw_resnet50_1x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-50 + KW 1x (28.05M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet50_1x", pretrained, **kwargs)


@register_model
def kw_resnet50_4x(pretrained: bool = False, **kwargs: Any) -> KWResNet:
    """ResNet-50 + KW 4x (102.02M parameters).

    Args:
        pretrained: Load weights into the model. No weights are hosted, so name a checkpoint with
            ``pretrained_cfg_overlay=dict(file=path)``; without one timm raises a ``RuntimeError``.
        **kwargs: [`KWResNet`][zoo.kw_resnet.KWResNet] arguments, replacing the variant's (its ratios, or
            ``layers=(1, 1, 1, 1)`` for a shallow model), and timm's (``features_only``, ``out_indices``,
            ``pretrained_cfg_overlay``).

    Returns:
        The model: images ``(B, 3, H, W)`` (3 is ``in_chans``) to logits ``(B, num_classes)``. With
        ``features_only=True``, timm's ``FeatureGetterNet`` around it, whose forward returns the four stage
        maps ``(B, C_i, H/r_i, W/r_i)``, ``r_i = 4, 8, 16, 32`` (or those ``out_indices`` picks).
    """
    return _create("kw_resnet50_4x", pretrained, **kwargs)
