"""unifiedops: one aggregation operator, ``y_i = sum_j w_ij * x_ij``, and the published operators
as points on its sparsity, sharing and dynamism axes."""

from unifiedops.acmix import ACmix, ACmixWindowAttention
from unifiedops.aggregation import Aggregation
from unifiedops.dcd import DCDConv2d, DCDKernel, DCDLinear
from unifiedops.flops import count_flops, flop_breakdown, flop_counter
from unifiedops.instances import (
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    WindowAttention,
)
from unifiedops.lka import LKA, LargeKernelGate
from unifiedops.mixers import DynamicPositionEmbedding, MixingAttention, UniFormerGlobalMHRA, UniFormerLocalMHRA
from unifiedops.mixture import CondConv, DYConv, MixtureKernel
from unifiedops.neighbourhoods import BORDERS, Global, Neighbourhood, Point, Sliding, Window
from unifiedops.odconv import ODConv2d, ODConvKernel, odconv_schedule
from unifiedops.paths import PATHS, applicable_paths
from unifiedops.warehouse import KWConv1d, KWConv2d, KWLinear, TemperatureSchedule, Warehouse, set_temperature
from unifiedops.weights import (
    DecomposedKernelSource,
    DenseKernel,
    PositionKernel,
    QKAttention,
    SampleKernel,
    StaticKernel,
    WeightSource,
)
from unifiedops.xvolution import MergedXVolution, ShiftProductKernel, XVolution

__version__ = "0.1.0"

__all__ = [
    "BORDERS",
    "LKA",
    "PATHS",
    "ACmix",
    "ACmixWindowAttention",
    "Aggregation",
    "CondConv",
    "DCDConv2d",
    "DCDKernel",
    "DCDLinear",
    "DWConv",
    "DYConv",
    "DecomposedKernelSource",
    "DenseKernel",
    "DynamicDWConv",
    "DynamicPositionEmbedding",
    "Global",
    "GlobalAttention",
    "InhomogeneousDWConv",
    "KWConv1d",
    "KWConv2d",
    "KWLinear",
    "LargeKernelGate",
    "MergedXVolution",
    "MixingAttention",
    "MixtureKernel",
    "NeighborhoodAttention",
    "Neighbourhood",
    "ODConv2d",
    "ODConvKernel",
    "Point",
    "PositionKernel",
    "QKAttention",
    "SampleKernel",
    "ShiftProductKernel",
    "Sliding",
    "StaticKernel",
    "TemperatureSchedule",
    "UniFormerGlobalMHRA",
    "UniFormerLocalMHRA",
    "Warehouse",
    "WeightSource",
    "Window",
    "WindowAttention",
    "XVolution",
    "applicable_paths",
    "count_flops",
    "flop_breakdown",
    "flop_counter",
    "odconv_schedule",
    "set_temperature",
]
