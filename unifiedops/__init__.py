"""unifiedops: one aggregation operator, ``y_i = sum_j w_ij * x_ij``, and the published operators
as points on its sparsity, sharing and dynamism axes."""

from unifiedops.aggregation import Aggregation
from unifiedops.instances import (
    DWConv,
    DynamicDWConv,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    WindowAttention,
)
from unifiedops.neighbourhoods import BORDERS, Global, Neighbourhood, Point, Sliding, Window
from unifiedops.paths import PATHS, applicable_paths
from unifiedops.weights import DenseKernel, PositionKernel, QKAttention, SampleKernel, StaticKernel, WeightSource

__version__ = "0.1.0"

__all__ = [
    "BORDERS",
    "PATHS",
    "Aggregation",
    "DWConv",
    "DenseKernel",
    "DynamicDWConv",
    "Global",
    "GlobalAttention",
    "InhomogeneousDWConv",
    "NeighborhoodAttention",
    "Neighbourhood",
    "Point",
    "PositionKernel",
    "QKAttention",
    "SampleKernel",
    "Sliding",
    "StaticKernel",
    "WeightSource",
    "Window",
    "WindowAttention",
    "applicable_paths",
]
