"""KernelWarehouse: warehouse sizes and parameter counts (ResNet18's official numbers), the kernel at
tau = 1 against the static kernel assembled from the initial assignment, whole-kernel cells against
CondConv-style mixing, fast path against reference path, gradients, the temperature schedule, and a
short training run."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from helpers import F64, assert_close, randomize_, seeds
from unifiedops.mixture import CondConv
from unifiedops.warehouse import (
    KWConv1d,
    KWConv2d,
    KWLinear,
    TemperatureSchedule,
    Warehouse,
    WarehouseAttention,
    set_temperature,
)

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))


# --- building networks from layer specs ---------------------------------------------------------


def make_net(specs, **config):
    """A network with a ``warehouse_manager`` and KW layers from ``specs``, rows of ``(in, out, k,
    stride, dilation, groups, name[, layer_type])``, reserved and allocated in that order."""
    net = nn.Module()
    net.warehouse_manager = Warehouse(**config)
    layers = []
    for cin, cout, k, stride, dilation, groups, name, *kind in specs:
        kind = kind[0] if kind else "conv2d"
        if kind == "linear":
            layers.append(net.warehouse_manager.reserve(cin, cout, warehouse_name=name, layer_type="linear"))
        else:
            layers.append(
                net.warehouse_manager.reserve(
                    cin, cout, k, stride, None, dilation, groups, bias=True, warehouse_name=name, layer_type=kind
                )
            )
    net.layers = nn.ModuleList(layers)
    net.warehouse_manager.build(net)
    return net, layers


def conv_of(layer):
    return layer.conv if isinstance(layer, KWLinear) else layer


def input_for(layer, batch=2, h=5, w=6):
    conv = conv_of(layer)
    if isinstance(layer, KWLinear):
        return torch.randn(batch, h, w, conv.in_planes, dtype=F64)
    if isinstance(layer, KWConv1d):
        return torch.randn(batch, conv.in_planes, h + w, dtype=F64)
    return torch.randn(batch, conv.in_planes, h, w, dtype=F64)


def static_forward(layer, x, weight):
    """The layer as a plain convolution (or linear map) with a fixed kernel ``(O, C/groups, *k)``."""
    conv = conv_of(layer)
    if isinstance(layer, KWLinear):
        return F.linear(x, weight.flatten(1), conv.bias)
    f = F.conv1d if isinstance(layer, KWConv1d) else F.conv2d
    return f(x, weight, conv.bias, conv.stride, conv.padding[0], conv.dilation, conv.groups)


def per_sample(layer, x, weights):
    """The layer with a per-sample kernel ``(B, O, C/groups, *k)``, one sample at a time."""
    return torch.cat([static_forward(layer, x[i : i + 1], weights[i]) for i in range(x.shape[0])])


def resnet18_specs():
    """KW layers of the official KW-ResNet18 as ``(in, out, k, stride, name)``: reservation order (the
    downsample is reserved before its stage's blocks) and module order (each block's conv1, conv2,
    then downsample). The first block of a stage hands over: its conv1 and the downsample take the
    previous stage's warehouse name (stage 0 keeps its own)."""
    reserved, modules = [], []
    inplanes, layer_idx = 64, 0
    for stage, planes in enumerate((64, 128, 256, 512)):
        stride = 1 if stage == 0 else 2
        down = None
        if stride != 1:  # the stride-1 downsample of a Bottleneck ResNet is a plain conv
            down = (inplanes, planes, 1, stride, f"stage{stage - 1}_layer{layer_idx + 1}_conv0")
            reserved.append(down)
        for block in range(2):
            handover = block == 0
            conv1_stage = max(stage - 1, 0) if handover else stage
            conv1 = (inplanes, planes, 3, stride if handover else 1, f"stage{conv1_stage}_layer{layer_idx}_conv0")
            conv2 = (planes, planes, 3, 1, f"stage{stage}_layer{0 if handover else layer_idx}_conv1")
            reserved += [conv1, conv2]
            modules += [conv1, conv2] + ([down] if handover and down else [])
            layer_idx = 1 if handover else layer_idx + 1
            inplanes = planes
    return reserved, modules


def resnet18_manager(**config):
    mgr = Warehouse(sharing_range=("layer", "conv"), **config)
    reserved, modules = resnet18_specs()
    layers = [
        mgr.reserve(cin, cout, k, stride, bias=False, warehouse_name=name) for cin, cout, k, stride, name in reserved
    ]
    return mgr, [layers[reserved.index(spec)] for spec in modules]


# --- parameter counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "cells", "width"),
    [
        (dict(cell_num_ratio=1), (56, 47, 47, 27), 1),
        (dict(cell_num_ratio=4), (224, 188, 188, 108), 1),
        (dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5), (112, 94, 94, 54), 0.5),
        (dict(cell_num_ratio=0.25, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5), (56, 47, 47, 27), 0.5),
    ],
)
def test_resnet18_warehouse_sizes(config, cells, width):
    """The warehouse sizes of the official KW-ResNet18 1x, 4x, 1/2x and 1/4x (one per stage)."""
    mgr, _ = resnet18_manager(**config)
    plans = mgr.plan()
    assert [p.name for p in plans] == [f"stage{s}_layer_conv" for s in range(4)]
    assert tuple(p.cells for p in plans) == cells
    c = [int(64 * 2**s * width) for s in range(4)]
    assert [p.cell_shape for p in plans] == [(ci, ci, 1, 1) for ci in c]
    # stage 0, in reservation order: four 64->64 3x3 convs, then stage 1's handed-over 64->128 1x1
    # downsample and 64->128 3x3 conv1 (times 4 with half-width cells)
    assert plans[0].mixtures == tuple(int(m / width**2) for m in (9, 9, 9, 9, 2, 18))


def test_resnet18_1x_parameters():
    """At 1x each warehouse holds exactly its layers' kernels, and the whole KW-ResNet18 1x has the
    official 11,932,148 parameters (README: 11.93M)."""
    mgr, layers = resnet18_manager(cell_num_ratio=1)
    for p in mgr.plan():
        assert p.numel == sum(o * i * k * k for o, i, k, _ in p.layer_shapes)
    net = nn.Module()
    net.warehouse_manager = mgr
    net.layers = nn.ModuleList(layers)
    mgr.build(net)
    stem, fc = 3 * 64 * 49, 512 * 1000 + 1000
    bns = 2 * (64 + 4 * (64 + 128 + 256 + 512) + (128 + 256 + 512))  # stem, 4 per stage, 3 downsamples
    assert sum(p.numel() for p in net.parameters()) + stem + fc + bns == 11_932_148
    # an attention: fc1 (no bias with BatchNorm1d), norm1, fc2 over n + 1 cells for each of m mixtures
    first = layers[0].attention
    hidden, n, m = 16, 56, 9
    assert sum(p.numel() for p in first.parameters()) == 64 * hidden + 2 * hidden + (hidden + 1) * (n + 1) * m


def test_parameter_counts_small():
    specs = [
        (8, 16, 3, 1, 1, 1, "s0_layer0"),
        (16, 16, 1, 1, 1, 2, "s0_layer1"),
        (32, 8, 1, 1, 1, 1, "s1_fc", "linear"),
    ]
    net, (a, b, c) = make_net(specs, cell_num_ratio=2, sharing_range=("layer",), reduction=0.5, norm_layer=nn.LayerNorm)
    w0, w1 = net.warehouse_manager.weights
    # s0: cells 16 x 8 (gcd of 16, 16 and of 8, 16/2); m = 1*1*9 + 1*1*1; n = 2 * 10
    assert w0.shape == (20, 16, 8, 1, 1) and w1.shape == (2, 8, 32, 1)
    # LayerNorm: fc1 has a bias; hidden = max(int(C * reduction), 16)
    for layer, cin, n, m in ((a, 8, 20, 9), (b, 16, 20, 1), (c.conv, 32, 2, 1)):
        h = max(int(cin * 0.5), 16)
        assert sum(p.numel() for p in layer.attention.parameters()) == (cin + 1) * h + 2 * h + (h + 1) * (n + 1) * m
        assert layer.bias.shape == (layer.out_planes,)


def test_state_dict_keys_are_official():
    specs = [(8, 8, 3, 1, 1, 1, "a"), (8, 8, 1, 1, 1, 1, "a")]
    net, _ = make_net(specs, nonlocal_basis_ratio=0.5)
    att = "layers.0.attention."
    assert {k for k in net.state_dict() if not k.startswith("layers.1.")} == {
        "warehouse_manager.weights.0",
        "layers.0.bias",
        att + "fc1.weight",
        att + "fc2.weight",
        att + "fc3.weight",
        att + "basis_bias",
        *(att + "norm1." + s for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    }


def test_sharing_range():
    mgr = Warehouse(sharing_range=("layer", "conv"))
    assert mgr.fuse_warehouse_name("stage1_layer2_conv0") == "stage1_layer_conv"
    assert Warehouse(sharing_range="layer_conv").sharing_range == ("layer", "conv")
    assert Warehouse(sharing_range=("layer",)).fuse_warehouse_name("stage1_layer2_conv0") == "stage1_layer_conv0"
    assert Warehouse().fuse_warehouse_name("stage1_layer2_conv0") == "stage1_layer2_conv0"
    a, b, c = (
        mgr.reserve(8, 8, 3, warehouse_name=n) for n in ("stage0_layer0_conv0", "stage0_layer1_conv1", "stage1_x")
    )
    assert (a.warehouse_id, b.warehouse_id, c.warehouse_id) == (0, 0, 1)


def test_ratios_per_warehouse():
    specs = [(8, 8, 3, 1, 1, 1, "a"), (8, 8, 3, 1, 1, 1, "b")]
    net, _ = make_net(specs, cell_num_ratio=(1, 2), spatial_partition=(True, False))
    assert [w.shape for w in net.warehouse_manager.weights] == [(9, 8, 8, 1, 1), (2, 8, 8, 3, 3)]
    with pytest.raises(ValueError, match="cell_num_ratio"):
        make_net(specs, cell_num_ratio=(1, 2, 3))


# --- the initial assignment and tau = 1 ---------------------------------------------------------


def expected_assignment(layers, ratios):
    """Cell of each mixture of each layer (``None``: the zero cell), restated from the paper's rule:
    layers in module order claim cells of their warehouse from a running index."""
    nxt, out = {}, []
    for layer in layers:
        conv = conv_of(layer)
        wid, m, ratio = conv.warehouse_id, conv.cell_layout.mixtures, ratios
        start = nxt.get(wid, 0)
        cells = []
        if ratio >= 1:
            cells = [start + i * int(ratio) for i in range(m)]
            start += m * int(ratio)
        else:
            r = int(1 / ratio)
            for i in range(m):
                if i % r == (i // r) % r:
                    cells.append(start)
                    start += 1
                else:
                    cells.append(None)
        nxt[wid] = start
        out.append(cells)
    return out


def static_kernel(layer, cells):
    """The kernel whose cell slot ``j`` (spatial-major, then output block, then input block) holds
    warehouse cell ``cells[j]``, written out with loops."""
    conv = conv_of(layer)
    lay = conv.cell_layout
    store = conv.warehouse_manager[0].weights[conv.warehouse_id]
    co, ci, *ck = lay.cell_shape
    kernel = store.new_zeros(conv.out_planes, conv.in_planes // conv.groups, *conv.kernel_size)
    taps = [divmod(t, conv.kernel_size[-1]) for t in range(lay.groups_spatial)]
    j = 0
    for s in range(lay.groups_spatial):
        for a in range(lay.groups_out):
            for c in range(lay.groups_in):
                if cells[j] is not None:
                    block = kernel[a * co : (a + 1) * co, c * ci : (c + 1) * ci]
                    cell = store[cells[j]]
                    if lay.groups_spatial == 1:  # whole-kernel cells
                        block.copy_(cell)
                    elif len(ck) == 2:
                        block[:, :, taps[s][0], taps[s][1]] = cell[:, :, 0, 0]
                    else:
                        block[:, :, s] = cell[:, :, 0]
                j += 1
    return kernel


RATIOS = [(1, 1), (2, 1), (0.5, 0.5), (0.25, 0.5)]


@pytest.mark.parametrize("spatial_partition", [True, False])
@pytest.mark.parametrize(("num", "io"), RATIOS)
def test_tau_one_is_the_static_kernel_of_the_assignment(num, io, spatial_partition):
    k = [3, 3, 3] if not spatial_partition else [3, 1, 5]
    specs = [
        (4, 8, k[0], 1, 1, 1, "stage0_layer0"),
        (8, 8, k[1], 2, 1, 2, "stage0_layer1"),
        (8, 4, k[2], 1, 2, 1, "stage0_layer2"),
        (4, 8, 3, 1, 1, 1, "stage1_layer0", "conv1d"),
        (8, 4, 3, 2, 1, 2, "stage1_layer1", "conv1d"),
        (8, 12, 1, 1, 1, 1, "stage2_layer0", "linear"),
    ]
    torch.manual_seed(0)
    config = dict(cell_num_ratio=num, cell_inplane_ratio=io, cell_outplane_ratio=io, sharing_range=("layer",))
    net, layers = make_net(specs, spatial_partition=spatial_partition, **config)
    randomize_(net.double()).eval()
    assert set_temperature(net, 1.0) == len(layers)
    assignment = expected_assignment(layers, num)
    for layer, cells in zip(layers, assignment, strict=True):
        conv = conv_of(layer)
        beta = conv.attention.temp_bias.view(conv.cell_layout.mixtures, -1)
        assert beta.sum(1).eq(1).all()
        assert [None if row[-1] else int(row.argmax()) for row in beta] == cells
        x = input_for(layer)
        expected = static_forward(layer, x, static_kernel(layer, cells))
        for path in conv.paths:
            conv.path = path
            assert_close(layer(x), expected, f"{type(layer).__name__} on {path}")
    # the check can fail: the first layer's output moves with its first cell
    x = input_for(layers[0])
    expected = static_forward(layers[0], x, static_kernel(layers[0], assignment[0]))
    with torch.no_grad():
        net.warehouse_manager.weights[0][assignment[0][0]] += 1
    assert not torch.allclose(layers[0](x), expected)


def test_whole_kernel_single_layer_is_condconv_mixing():
    """spatial_partition=False with one layer per warehouse: n whole kernels mixed per sample by the
    layer's attention, i.e. CondConv's sum_e a_e W_e with the same attention values."""
    torch.manual_seed(1)
    n, cin, cout, k, groups = 5, 6, 4, 3, 2
    specs = [(cin, cout, k, 2, 2, groups, "only")]
    net, (layer,) = make_net(specs, cell_num_ratio=n, spatial_partition=False)
    randomize_(net.double()).eval()
    cells = net.warehouse_manager.weights[0]
    assert cells.shape == (n, cout, cin // groups, k, k)
    condconv = CondConv(cin, cout, k, n, stride=2, dilation=2, groups=groups, bias=False).double()
    with torch.no_grad():
        condconv.weight.copy_(cells)
        layer.bias.zero_()
    for tau in (0.0, 0.3):
        set_temperature(net, tau)
        x = torch.randn(3, cin, 7, 8, dtype=F64)
        a = layer.attention(x)  # (B, n): one mixture
        assert a.shape == (3, n)
        y = layer(x)
        # mixing the kernels, with CondConv's own mixing
        assert_close(y, per_sample(layer, x, condconv.source.mix(condconv, a)))
        # mixing the outputs of the n kernels (linearity), written out
        outs = torch.stack([static_forward(layer, x, cells[e]) for e in range(n)], 1)
        assert_close(y, (a[:, :, None, None, None] * outs).sum(1))


def test_kernel_assembly_layout():
    """KW 1/1: cells tile the kernel as in the official layout; a perturbed attention breaks equality."""
    torch.manual_seed(2)
    net, (layer, _) = make_net([(4, 8, 3, 1, 1, 1, "a"), (4, 4, 1, 1, 1, 1, "a")], cell_num_ratio=1)
    randomize_(net.double()).eval()
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    a = layer.attention(x)  # (B * 18, n): 9 taps x 2 output blocks
    cells = net.warehouse_manager.weights[0]  # (19, 4, 4, 1, 1)
    kernel = torch.einsum("bsgn,nxy->bgxys", a.view(2, 9, 2, 19), cells[:, :, :, 0, 0]).reshape(2, 8, 4, 3, 3)
    assert_close(layer(x), per_sample(layer, x, kernel))
    with torch.no_grad():
        layer.attention.fc2.bias[3] += 0.5
    assert not torch.allclose(layer(x), per_sample(layer, x, kernel))


# --- fast path = reference path -----------------------------------------------------------------


def draw_config(draw, num, io, spatial):
    """Warehouse arguments: the drawn ratios, one shared warehouse, a drawn attention norm and basis."""
    return dict(
        cell_num_ratio=num,
        cell_inplane_ratio=io,
        cell_outplane_ratio=io,
        spatial_partition=spatial,
        sharing_range=("layer",),
        norm_layer=draw(st.sampled_from([nn.BatchNorm1d, nn.LayerNorm])),
        nonlocal_basis_ratio=draw(st.sampled_from([1, 0.5])),
    )


@st.composite
def kw_cases(draw):
    num, io = draw(st.sampled_from(RATIOS))
    groups = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["conv2d", "conv2d", "conv1d", "linear"]))
    spatial = draw(st.booleans())
    shared_k = draw(st.sampled_from([1, 3, 5]))
    specs = []
    # Channels are small multiples of one unit, so cells stay wide and attentions small; with
    # even units the 1/2 and 1/4 assignments claim exactly the warehouse's cells.
    for i in range(draw(st.integers(1, 3))):
        cin, cout = 2 * groups * draw(st.integers(1, 2)), 2 * groups * draw(st.integers(1, 2))
        if kind == "linear":
            specs.append((cin, cout, 1, 1, 1, 1, f"w_layer{i}", "linear"))
            continue
        k = draw(st.sampled_from([1, 3])) if spatial else shared_k
        stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        specs.append((cin, cout, k, stride, dilation, groups, f"w_layer{i}", kind))
    config = draw_config(draw, num, io, spatial)
    geometry = dict(batch=draw(st.integers(1, 3)), h=draw(st.integers(1, 7)), w=draw(st.integers(1, 7)))
    return specs, config, geometry, draw(st.sampled_from([0.0, 0.4, 1.0]))


def _run(net, layer, x, path, grad_out):
    conv_of(layer).path = path
    net.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(True)
    y = layer(xx)
    y.backward(grad_out)
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return y.detach(), xx.grad, grads


def check_paths_agree(net, layers, geometry, tau):
    """Output, input gradient and parameter gradients of the fast path equal the reference path's."""
    randomize_(net.double()).eval()
    set_temperature(net, tau)
    for layer in layers:
        assert conv_of(layer).path == "batched_conv" and conv_of(layer).paths == ["batched_conv", "reference"]
        x = input_for(layer, **geometry)
        with torch.no_grad():
            grad_out = torch.randn_like(layer(x))
        y_ref, gx_ref, gp_ref = _run(net, layer, x, "reference", grad_out)
        y, gx, gp = _run(net, layer, x, "batched_conv", grad_out)
        assert_close(y, y_ref, "output")
        assert_close(gx, gx_ref, "input gradient")
        assert set(gp) == set(gp_ref) and "warehouse_manager.weights.0" in gp
        for name in gp_ref:
            assert_close(gp[name], gp_ref[name], f"gradient of {name}")


def make_patch_net(specs, **config):
    """Like ``make_net`` with an explicit padding: rows ``(in, out, k, stride, padding, dilation, groups, name)``."""
    net = nn.Module()
    net.warehouse_manager = Warehouse(**config)
    layers = [
        net.warehouse_manager.reserve(cin, cout, k, stride, pad, dilation, groups, bias=True, warehouse_name=name)
        for cin, cout, k, stride, pad, dilation, groups, name in specs
    ]
    net.layers = nn.ModuleList(layers)
    net.warehouse_manager.build(net)
    return net, layers


@st.composite
def geometry_cases(draw):
    """Layers of any geometry (even kernels, any padding and stride) sharing one warehouse, with an
    input large enough for all of them."""
    num, io = draw(st.sampled_from(RATIOS))
    groups = draw(st.sampled_from([1, 2]))
    spatial = draw(st.booleans())
    shared_k = draw(st.integers(1, 4))
    specs, smallest = [], 1
    for i in range(draw(st.integers(1, 3))):
        cin, cout = 2 * groups * draw(st.integers(1, 2)), 2 * groups * draw(st.integers(1, 2))
        k = draw(st.integers(1, 4)) if spatial else shared_k
        stride, pad, dilation = draw(st.integers(1, 4)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
        specs.append((cin, cout, k, stride, pad, dilation, groups, f"g_layer{i}"))
        smallest = max(smallest, dilation * (k - 1) + 1 - 2 * pad)
    config = draw_config(draw, num, io, spatial)
    size = st.integers(smallest, smallest + 6)
    geometry = dict(batch=draw(st.integers(1, 3)), h=draw(size), w=draw(size))
    return specs, config, geometry, draw(st.sampled_from([0.0, 0.4, 1.0]))


# Same-padded odd kernels (a sliding window, all layer types), and any nn.Conv2d geometry (patches).
FAMILIES = {"same": (kw_cases(), make_net), "any": (geometry_cases(), make_patch_net)}


@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None)
@given(data=st.data(), seed=seeds)
def test_fast_path_matches_reference(family, data, seed):
    cases, build = FAMILIES[family]
    specs, config, geometry, tau = data.draw(cases)
    torch.manual_seed(seed)
    check_paths_agree(*build(specs, **config), geometry, tau)


@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=max(EXAMPLES // 4, 1), deadline=None)
@given(data=st.data(), seed=seeds)
def test_matches_per_sample_static_conv(family, data, seed):
    """Each sample is convolved (F.conv2d with the layer's stride, padding and dilation, F.conv1d,
    F.linear) with its kernel from ``assemble``: the output size is nn.Conv2d's."""
    cases, build = FAMILIES[family]
    specs, config, geometry, tau = data.draw(cases)
    torch.manual_seed(seed)
    check_per_sample(*build(specs, **config), geometry, tau)


def check_per_sample(net, layers, geometry, tau):
    """Each layer equals its per-sample static layer, with the kernel ``assemble`` gives for the
    attention of the layer's input."""
    randomize_(net.double()).eval()
    set_temperature(net, tau)
    for layer in layers:
        conv = conv_of(layer)
        x = input_for(layer, **geometry)
        if isinstance(layer, KWLinear):
            a = conv.attention(x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2))
        else:
            a = conv.attention(x)
        kernels = conv.source.assemble(conv, a, x.shape[0])
        assert kernels.shape[3:] == conv.kernel_size
        assert_close(layer(x), per_sample(layer, x, kernels))


# --- any nn.Conv2d geometry: layers of patches ---------------------------------------------------


def test_convnext_stem_and_downsampling_are_patches():
    """ConvNeXt's 4x4/4 stem and 2x2/2 downsampling (padding 0) on a size that is no multiple of the
    stride (the remainder is dropped, as by nn.Conv2d), against F.conv2d with each sample's kernel."""
    torch.manual_seed(0)
    net, (stem, down) = make_patch_net(
        [(3, 8, 4, 4, 0, 1, 1, "stem_conv0"), (8, 16, 2, 2, 0, 1, 1, "stage0_layerds_conv0")],
        sharing_range=("layer", "pwconv"),
        norm_layer=nn.LayerNorm,
    )
    randomize_(net.double()).eval()
    assert [tuple(w.shape) for w in net.warehouse_manager.weights] == [(16, 8, 3, 1, 1), (4, 16, 8, 1, 1)]
    assert stem.paths == ["batched_conv", "reference"] and stem.padding == (0, 0)
    x = torch.randn(2, 3, 30, 37, dtype=F64)
    for layer in (stem, down):
        kernels = layer.source.assemble(layer, layer.attention(x), x.shape[0])
        y = layer(x)
        assert_close(y, per_sample(layer, x, kernels))
        assert y.shape[2:] == tuple((n - layer.kernel_size[0]) // layer.stride + 1 for n in x.shape[2:])
        x = y
    assert x.shape == (2, 16, 3, 4)


# --- gradients ----------------------------------------------------------------------------------

GRAD_SPECS = {
    "conv2d": [(4, 4, 3, 1, 1, 1, "s_layer0"), (4, 4, 1, 2, 1, 2, "s_layer1")],
    "conv2d-whole-kernel": [(4, 4, 3, 1, 2, 1, "s_layer0"), (4, 2, 3, 2, 1, 2, "s_layer1")],
    "conv1d": [(4, 4, 3, 1, 1, 1, "s_layer0", "conv1d"), (4, 2, 3, 2, 2, 2, "s_layer1", "conv1d")],
    "linear": [(4, 6, 1, 1, 1, 1, "s_layer0", "linear"), (6, 4, 1, 1, 1, 1, "s_layer1", "linear")],
}
PATCH_SPECS = [(2, 4, 2, 2, 0, 1, 1, "s_layer0"), (4, 2, 3, 1, 1, 2, 2, "s_layer1")]
GRAD_CONFIG = {
    "conv2d": dict(cell_num_ratio=0.5, cell_inplane_ratio=0.5, cell_outplane_ratio=0.5, nonlocal_basis_ratio=0.5),
    "conv2d-whole-kernel": dict(cell_num_ratio=2, spatial_partition=False),
    "conv1d": dict(cell_num_ratio=1),
    "linear": dict(cell_num_ratio=2),
}


@pytest.mark.parametrize("path", ["batched_conv", "reference"])
@pytest.mark.parametrize("name", list(GRAD_SPECS))
def test_gradcheck(name, path):
    torch.manual_seed(3)
    net, layers = make_net(GRAD_SPECS[name], sharing_range=("layer",), **GRAD_CONFIG[name])
    randomize_(net.double()).eval()
    set_temperature(net, 0.3)
    for layer in layers:
        conv_of(layer).path = path
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    first, second = layers

    def f(x, *ps):
        return functional_call(net, dict(zip(names, ps, strict=True)), (x,))

    net.forward = lambda x: second(first(x))
    x = input_for(first, 2, 2, 3).requires_grad_(True)
    assert gradcheck(net, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("path", ["batched_conv", "reference"])
def test_gradcheck_patches(path):
    torch.manual_seed(3)
    net, (first, second) = make_patch_net(PATCH_SPECS, sharing_range=("layer",), cell_num_ratio=2)
    randomize_(net.double()).eval()
    set_temperature(net, 0.3)
    for layer in (first, second):
        layer.path = path
    x = input_for(first, 2, 8, 9).requires_grad_(True)
    assert gradcheck(lambda x: second(first(x)), (x,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# --- temperature --------------------------------------------------------------------------------


def test_temperature_schedule():
    s = TemperatureSchedule(iters_per_epoch=10, temp_epochs=20)
    assert s.value(1) == pytest.approx(199 / 200) and s.value(100) == pytest.approx(0.5)
    assert s.value(200) == 0 and s.value(10**6) == 0
    net, layers = make_net([(4, 4, 3, 1, 1, 1, "a"), (4, 4, 3, 1, 1, 1, "b")])
    assert all(conv_of(layer).attention.temp_value == 0 for layer in layers)  # as official: 0 until set
    taus = [s.step(net) for _ in range(3)]
    assert taus == [s.value(t) for t in (1, 2, 3)]
    assert all(layer.attention.temp_value == taus[-1] for layer in layers)
    assert set_temperature(net, 0.25) == 2 and set_temperature(nn.Linear(2, 2), 0.25) == 0
    with pytest.raises(ValueError, match="iters_per_epoch"):
        TemperatureSchedule(0)


def test_assignment_buffer_moves_and_is_not_saved():
    net, (layer,) = make_net([(4, 4, 3, 1, 1, 1, "a")])
    assert "layers.0.attention.temp_bias" not in net.state_dict()
    net.double()
    assert layer.attention.temp_bias.dtype == F64
    assert isinstance(layer.attention, WarehouseAttention)


# --- training -----------------------------------------------------------------------------------


def test_a_small_kw_network_trains():
    torch.manual_seed(0)
    mgr = Warehouse(sharing_range=("layer",))
    body = nn.Sequential(
        mgr.reserve(8, 16, 3, bias=False, warehouse_name="stage0_layer0"),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        mgr.reserve(16, 16, 3, stride=2, bias=False, warehouse_name="stage0_layer1"),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        mgr.reserve(16, 32, 3, stride=2, bias=False, warehouse_name="stage0_layer2"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )
    net = nn.Module()
    net.warehouse_manager, net.body = mgr, body
    mgr.build(net)
    assert len(mgr.weights) == 1 and mgr.weights[0].shape[0] == 9 + 18 + 36
    x, target = torch.randn(16, 8, 8, 8), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = TemperatureSchedule(iters_per_epoch=5, temp_epochs=2)
    losses = []
    for _ in range(50):
        schedule.step(net)
        loss = F.cross_entropy(body(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert mgr.weights[0].grad is not None and schedule.value(schedule.iteration) == 0
    assert losses[-1] < 0.5 * losses[0], losses


# --- errors -------------------------------------------------------------------------------------


def test_errors():
    mgr = Warehouse()
    with pytest.raises(ValueError, match="padding"):
        mgr.reserve(4, 4, 3, padding=0, layer_type="conv1d")
    with pytest.raises(ValueError, match="padding"):
        mgr.reserve(4, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        mgr.reserve(4, 4, 3, padding=(1, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        mgr.reserve(4, 4, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        mgr.reserve(4, 4, (3, 1), padding=0)
    with pytest.raises(ValueError, match="layer_type"):
        mgr.reserve(4, 4, 3, layer_type="conv3d")
    with pytest.raises(ValueError, match="divisible"):
        mgr.reserve(4, 6, 3, groups=4)
    with pytest.raises(TypeError, match="sharing_range"):
        Warehouse(sharing_range=(1,))
    with pytest.raises(ValueError, match="cell_num_ratio"):
        Warehouse(cell_num_ratio=0)
    with pytest.raises(TypeError, match="warehouse_manager"):
        KWConv2d(4, 4, 3)
    assert isinstance(mgr.reserve(4, 4, 3, padding=0, enabled=False), nn.Conv2d)
    layer = mgr.reserve(4, 4, 3)
    with pytest.raises(RuntimeError, match="allocate"):
        layer(torch.randn(1, 4, 5, 5))
    with pytest.raises(RuntimeError, match="store"):
        mgr.allocate(layer)
    mgr.store()
    with pytest.raises(RuntimeError, match="store"):
        mgr.reserve(4, 4, 3)
    with pytest.raises(RuntimeError, match="claim"):
        mgr.allocate(nn.Linear(2, 2))  # the layer is not in the network
    with pytest.raises(ValueError, match="spatial_partition"):
        make_net([(4, 4, 3, 1, 1, 1, "a"), (4, 4, 1, 1, 1, 1, "a")], spatial_partition=False)
    with pytest.raises(RuntimeError, match="claim"):  # the official assertion: 1/2 cells with full-width cells
        make_net([(4, 4, 3, 1, 1, 1, "a")], cell_num_ratio=0.5)
    with pytest.raises(ValueError, match="3-D"):
        make_net([(4, 4, 3, 1, 1, 1, "a", "conv1d")])[1][0](torch.randn(1, 4, 5, 5))
    (patches,) = make_patch_net([(4, 4, 4, 4, 0, 1, 1, "a")])[1]
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        patches(torch.randn(1, 4, 3, 8))
    with pytest.raises(ValueError, match="channels"):
        patches(torch.randn(1, 3, 8, 8))
