"""Bad arguments raise ValueError / TypeError whose message names the offending argument."""

from __future__ import annotations

import pytest
import torch

from unifiedops import (
    Aggregation,
    DenseKernel,
    DWConv,
    DynamicDWConv,
    Global,
    GlobalAttention,
    InhomogeneousDWConv,
    NeighborhoodAttention,
    Point,
    PositionKernel,
    QKAttention,
    SampleKernel,
    Sliding,
    StaticKernel,
    Window,
    WindowAttention,
)

# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: WindowAttention(10, 3, 7), r"num_heads"),
        (lambda: NeighborhoodAttention(10, 4, 3), r"num_heads"),
        (lambda: GlobalAttention(6, 4), r"num_heads"),
        # 12 is divisible by the default reduction 4, so only groups=5 is wrong
        (lambda: InhomogeneousDWConv(12, groups=5), r"groups"),
        (lambda: InhomogeneousDWConv(10, groups=3, reduction=2), r"groups"),
        (lambda: Aggregation(Sliding(3), StaticKernel(10, groups=4)), r"groups"),
        (lambda: Aggregation(Point(), SampleKernel(8, groups=3)), r"groups"),
        (lambda: DynamicDWConv(10, 3), r"reduction"),
        (lambda: DWConv(8, 4), r"kernel_size"),
        (lambda: DynamicDWConv(8, 6), r"kernel_size"),
        (lambda: InhomogeneousDWConv(8, 2, groups=2), r"kernel_size"),
        (lambda: NeighborhoodAttention(8, 2, 4), r"kernel_size"),
        (lambda: DWConv(8, 0), r"kernel_size"),
        (lambda: DWConv(8, 3, 0), r"dilation"),
        (lambda: NeighborhoodAttention(8, 2, 3, border="wrap"), r"border"),
        (lambda: Sliding(3, border="wrap"), r"border"),
        (lambda: Sliding(3, stride=0), r"stride"),
        (lambda: DenseKernel(4, 6, groups=4), r"out_channels"),
        (lambda: QKAttention(4, projection="fused"), r"projection"),
        (lambda: QKAttention(4, heads=4, value_channels=6), r"value_channels"),
        (lambda: Window(3, border="clamp"), r"border"),
        (lambda: DWConv(8, 3, path="fast"), r"path"),
        (lambda: DWConv(8, 3, path="window_sdpa"), r"path"),
        (lambda: WindowAttention(8, 2, 3, path="conv"), r"path"),
        (lambda: NeighborhoodAttention(8, 2, 3, path="global_sdpa"), r"path"),
        (lambda: WindowAttention(8, 2, 4, 4), r"shift"),
        (lambda: WindowAttention(8, 2, 4, 7), r"shift"),
        (lambda: Window(3, shift=-1), r"shift"),
        (lambda: WindowAttention(8, 2, 0), r"size"),
        (lambda: DWConv(0, 3), r"dim"),  # the preset names its argument dim
        (lambda: Aggregation(Global(), StaticKernel(4)), r"StaticKernel"),
        (lambda: Aggregation(Global(), SampleKernel(4)), r"SampleKernel"),
        (lambda: Aggregation(Global(), PositionKernel(4)), r"PositionKernel"),
        (lambda: PositionKernel(6, groups=4, reduction=2), r"groups"),
        (lambda: Aggregation(Global(), QKAttention(4, heads=2, rel_pos_bias=True)), r"rel_pos_bias"),
    ],
)
def test_construction_value_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_inhomogeneous_bad_groups_names_groups():
    # 10 is divisible neither by groups=3 nor by the default reduction=4: groups is checked first.
    with pytest.raises(ValueError, match=r"groups"):
        InhomogeneousDWConv(10, groups=3)


def test_path_errors_list_the_choices():
    with pytest.raises(ValueError, match=r"path must be 'auto' or one of .*'conv'.*got path='fast'"):
        DWConv(8, 3, path="fast")
    with pytest.raises(ValueError, match=r"path='window_sdpa' cannot compute .*applicable: 'conv', 'reference'"):
        DWConv(8, 3, path="window_sdpa")
    module = DWConv(8, 3)
    with pytest.raises(ValueError, match=r"path"):
        module.path = "halo_sdpa"
    assert module.path == "conv"  # a rejected assignment leaves the path alone
    with pytest.raises(ValueError, match=r"path"):
        module.path = None


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: DWConv(8, 3.0), r"kernel_size"),
        (lambda: DWConv(8, "3"), r"kernel_size"),
        (lambda: DWConv(8, True), r"kernel_size"),
        (lambda: NeighborhoodAttention(8, 2, 3.0), r"kernel_size"),
        (lambda: WindowAttention(8, 2, 7.0), r"size"),
        (lambda: WindowAttention(8, 2.0, 7), r"heads"),
        (lambda: DWConv(8.0, 3), r"dim"),
        (lambda: DWConv(8, 3, 1.5), r"dilation"),
        (lambda: InhomogeneousDWConv(8, groups=2.0), r"groups"),
        (lambda: Aggregation(Sliding(3), StaticKernel(4), channels_last=1), r"channels_last"),
        (lambda: Aggregation("sliding", StaticKernel(4)), r"neighbourhood"),
        (lambda: Aggregation(Sliding(3), "static"), r"source"),
    ],
)
def test_construction_type_errors(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_halo_tile_checked():
    module = NeighborhoodAttention(8, 2, 3)
    with pytest.raises(ValueError, match=r"tile"):
        module.set_halo_tile(0)
    with pytest.raises(TypeError, match=r"tile"):
        module.set_halo_tile(2.0)
    module.set_halo_tile(2)
    assert module.halo_tile == 2
    module.set_halo_tile(None)
    assert module.halo_tile is None


# --- forward ------------------------------------------------------------------------------------

PRESETS = [
    lambda: DWConv(8, 3),
    lambda: DynamicDWConv(8, 3),
    lambda: InhomogeneousDWConv(8, 3, groups=2),
    lambda: WindowAttention(8, 2, 3),
    lambda: NeighborhoodAttention(8, 2, 3),
    lambda: GlobalAttention(8, 2),
]


@pytest.mark.parametrize("build", PRESETS)
@pytest.mark.parametrize("path", ["auto", "reference"])
def test_forward_rejects_bad_inputs(build, path):
    module = build().eval()
    module.path = path
    for bad in (torch.randn(8, 5, 5), torch.randn(1, 1, 8, 5, 5), torch.randn(8)):
        with pytest.raises(ValueError, match=r"^x must be 4-D"):
            module(bad)
    with pytest.raises(ValueError, match=r"channels=8"):
        module(torch.randn(1, 6, 5, 5))
    with pytest.raises(ValueError, match=r"channels"):
        module(torch.randn(1, 5, 5, 8))  # channels-last tensor given to a channels-first module
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor"):
        module([[1.0]])
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor"):
        module(torch.randn(1, 8, 5, 5).numpy())
    with pytest.raises(TypeError, match=r"^x must be a floating-point"):
        module(torch.ones(1, 8, 5, 5, dtype=torch.long))


def test_forward_checks_channels_in_channels_last_layout():
    module = WindowAttention(8, 2, 3, channels_last=True)
    module(torch.randn(1, 5, 5, 8))
    with pytest.raises(ValueError, match=r"channels=8.*channels_last=True"):
        module(torch.randn(1, 8, 5, 5))
