"""Shared machinery of the zoo: one block, one stage, one backbone interface for every family."""

from zoo.blocks.backbone import Backbone
from zoo.blocks.block import INLINE, Block, Branch
from zoo.blocks.flat import FlatBackbone, drop_path_rates
from zoo.blocks.layout import LAYOUTS, BatchNormChannelsLast, convert_layout, infer_layout
from zoo.blocks.mobilenetv2_layout import (
    MobileNetV2ConvSpec,
    MobileNetV2Layout,
    convert_official_mobilenetv2,
    plain_mobilenetv2_conv,
)
from zoo.blocks.registry import build_backbone, pretrained_cfg, register_variants
from zoo.blocks.resnet_layout import ConvSpec, ResNetLayout, plain_conv, resnet_cfg
from zoo.blocks.stage import PatchEmbed, PatchMerging, Stage
from zoo.blocks.sync_batchnorm import (
    SyncBatchNorm,
    SyncBatchNormAct2d,
    SyncBatchNormChannelsLast,
    convert_sync_batchnorm,
)

__all__ = [
    "INLINE",
    "LAYOUTS",
    "Backbone",
    "BatchNormChannelsLast",
    "Block",
    "Branch",
    "ConvSpec",
    "FlatBackbone",
    "MobileNetV2ConvSpec",
    "MobileNetV2Layout",
    "PatchEmbed",
    "PatchMerging",
    "ResNetLayout",
    "Stage",
    "SyncBatchNorm",
    "SyncBatchNormAct2d",
    "SyncBatchNormChannelsLast",
    "build_backbone",
    "convert_layout",
    "convert_official_mobilenetv2",
    "convert_sync_batchnorm",
    "drop_path_rates",
    "infer_layout",
    "plain_conv",
    "plain_mobilenetv2_conv",
    "pretrained_cfg",
    "register_variants",
    "resnet_cfg",
]
