"""DCD: the official feature-space computation re-stated, the kernel-space form equal to it (eval and
train, outputs, gradients and running statistics), the degenerate plain convolution, the dynamic
classifier, the official latent sizes, parameter names and counts, gradcheck and errors."""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import F64, assert_close, assert_gradcheck, assert_path_matches_reference, randomize_, seeds
from unifiedops import Aggregation, Sliding
from unifiedops.dcd import DCDConv2d, DCDKernel, DCDLinear, dcd_dims, dcd_mobilenetv2_dims
from unifiedops.weights import SampleKernels

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))
PATHS = ("decomposed", "batched_conv", "reference")


def official_form(module: DCDConv2d, x: torch.Tensor) -> torch.Tensor:
    """DCD as the official ``conv_dy`` computes it, written from the parameters with functional ops
    (eval mode): ``Λ ⊙ conv_W0(x) + P(BN2(Φ BN1(Qx)) + BN1(Qx))``."""
    nb, b = module.neighbourhood, x.shape[0]
    latent = module.q.weight.shape[0]
    h = F.adaptive_avg_pool2d(x, module.avg_pool.output_size).flatten(1) @ module.fc[0].weight.T
    h = h * (F.relu6(h @ module.fc[1].fc[0].weight.T + 3) / 3)
    phi = (h @ module.fc_phi.weight.T).view(b, latent, latent)
    scale = F.relu6(h @ module.fc_scale.weight.T + 3) / 3
    k = module.conv.weight.shape[-1]
    static = F.conv2d(x, module.conv.weight, module.conv.bias, nb.stride, nb.dilation * (k // 2), nb.dilation)

    def bn(u, norm):
        return F.batch_norm(u, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)

    z = bn(F.conv2d(x, module.q.weight, stride=nb.stride), module.bn1)
    flat = z.flatten(2)
    mixed = bn(torch.einsum("bij,bjp->bip", phi, flat), module.bn2) + flat
    return F.conv2d(mixed.view_as(z), module.p.weight) + static * scale[:, :, None, None]


@st.composite
def dcd_cases(draw):
    cin, cout = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    make = functools.partial(
        DCDConv2d,
        cin,
        cout,
        kernel_size=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.integers(1, 2)),
        dilation=draw(st.integers(1, 2)),
        pool=draw(st.integers(1, 2)),
        latent=draw(st.integers(1, 4)),
        squeeze=draw(st.integers(1, 4)),
        bias=draw(st.booleans()),
    )
    shape = (draw(st.integers(2, 3)), cin, draw(st.integers(1, 7)), draw(st.integers(2, 7)))
    return make, shape


def _build(make, seed, train=False):
    torch.manual_seed(seed)
    return randomize_(make().double()).train(train)


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=dcd_cases(), seed=seeds)
def test_every_path_matches_the_official_form(case, seed):
    make, shape = case
    module = _build(make, seed)
    assert module.path == "decomposed" and module.paths == list(PATHS)
    x = torch.randn(shape, dtype=F64)
    for path in PATHS:
        module.path = path
        assert_close(module(x), official_form(module, x), path)


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=dcd_cases(), seed=seeds, path=st.sampled_from(["decomposed", "batched_conv"]))
def test_fast_paths_match_the_kernel_space_reference(case, seed, path):
    """Outputs, the input gradient and every parameter gradient (eval: running statistics)."""
    make, shape = case
    module = _build(make, seed)
    assert_path_matches_reference(module, torch.randn(shape, dtype=F64), path)


@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(case=dcd_cases(), seed=seeds)
def test_kernel_space_equals_feature_space_in_training(case, seed):
    """With batch statistics the kernel-space form gives the same outputs and gradients as the
    feature-space form, and leaves the same running statistics behind."""
    make, shape = case
    feature = _build(make, seed, train=True)
    x = torch.randn(shape, dtype=F64)
    grad = torch.randn_like(feature(x.clone()))
    feature = _build(make, seed, train=True)
    results = {}
    for path in ("decomposed", "batched_conv", "reference"):
        module = copy.deepcopy(feature)
        module.path = path
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        y.backward(grad)
        results[path] = (y, xi.grad, [p.grad for p in module.parameters()], list(module.buffers()))
    y0, gx0, gp0, buf0 = results["decomposed"]
    for path in ("batched_conv", "reference"):
        y, gx, gp, buf = results[path]
        assert_close(y, y0, path)
        assert_close(gx, gx0, path)
        for a, b in zip(gp, gp0, strict=True):
            assert_close(a, b, path)
        for a, b in zip(buf, buf0, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wrong", ["low rank on every tap", "latent bias dropped", "no latent residual"])
def test_the_kernel_space_check_catches_a_wrong_assembly(wrong, monkeypatch):
    """The check can fail: kernel-space variants that differ from DCD in one term are caught."""
    module = _build(functools.partial(DCDConv2d, 4, 5, 3, latent=3, squeeze=2), 3)
    x = torch.randn(2, 4, 6, 5, dtype=F64)
    module.path = "batched_conv"
    assert_close(module(x), official_form(module, x))
    original = DCDKernel.sample_kernels

    def sample_kernels(self, mod, inp):
        w, b, *_ = original(self, mod, inp)
        if wrong == "low rank on every tap":
            centre = (
                w[..., 1:2, 1:2] - mod.conv.weight[..., 1:2, 1:2] * self.context(mod, inp)[1][..., None, None, None]
            )
            w = w + centre * (1 - F.pad(torch.ones(1, 1), (1, 1, 1, 1)))
        elif wrong == "latent bias dropped":
            b = torch.zeros_like(b)
        else:
            p, q = mod.p.weight.flatten(1), mod.q.weight.flatten(1)
            w = w.clone()
            w[..., 1, 1] -= p @ (q * mod.bn1.weight[:, None] / torch.sqrt(mod.bn1.running_var + mod.bn1.eps)[:, None])
        return SampleKernels(w, b)

    monkeypatch.setattr(DCDKernel, "sample_kernels", sample_kernels)
    assert not torch.allclose(module(x), official_form(module, x))


@settings(max_examples=max(EXAMPLES // 5, 1), deadline=None)
@given(cin=st.integers(1, 6), cout=st.integers(1, 6), k=st.sampled_from([1, 3]), stride=st.integers(1, 2), seed=seeds)
def test_no_low_rank_part_and_unit_scales_is_a_plain_conv(cin, cout, k, stride, seed):
    """``P = 0`` and ``Λ = 1`` (``relu6(0 + 3) / 3``) leave the static convolution."""
    module = _build(functools.partial(DCDConv2d, cin, cout, k, stride, latent=2, squeeze=2), seed)
    with torch.no_grad():
        module.p.weight.zero_()
        module.fc_scale.weight.zero_()
    x = torch.randn(2, cin, 7, 6, dtype=F64)
    plain = F.conv2d(x, module.conv.weight, None, stride, k // 2)
    for path in PATHS:
        module.path = path
        torch.testing.assert_close(module(x), plain, rtol=1e-12, atol=1e-12, msg=path)


MODULES = {
    "3x3-pool2": functools.partial(DCDConv2d, 4, 5, 3, pool=2, latent=3, squeeze=2),
    "strided-dilated-bias": functools.partial(DCDConv2d, 3, 4, 3, 2, 2, latent=2, squeeze=3, bias=True),
    "1x1": functools.partial(DCDConv2d, 4, 3, 1, latent=2, squeeze=2),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(MODULES))
def test_gradcheck(name, path, train):
    module = _build(MODULES[name], 7, train)
    module.path = path
    if train:  # batch statistics: momentum 0 keeps the running statistics fixed across gradcheck's calls
        for bn in (module.bn1, module.bn2):
            bn.momentum = 0.0
    assert_gradcheck(module, torch.randn(2, module.source.channels, 4, 3, dtype=F64))


def official_linear_form(linear: DCDLinear, x: torch.Tensor) -> torch.Tensor:
    """The official ``DYCls`` written from the parameters with ``F.linear`` on ``(B, C)`` vectors; its
    BatchNorms are ``BatchNorm1d`` over the batch (batch statistics in training)."""
    latent = linear.q.weight.shape[0]
    h = x @ linear.fc[0].weight.T
    h = h * (F.relu6(h @ linear.fc[1].fc[0].weight.T + 3) / 3)
    phi = (h @ linear.fc_phi.weight.T).view(-1, latent, latent)
    scale = F.relu6(h @ linear.fc_scale.weight.T + 3) / 3

    def bn(u, norm):
        return F.batch_norm(
            u, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias, norm.training, 0.1, norm.eps
        )

    z = bn(F.linear(x, linear.q.weight.flatten(1)), linear.bn1)
    mixed = bn(torch.einsum("bij,bj->bi", phi, z), linear.bn2) + z
    static = F.linear(x, linear.conv.weight.flatten(1), linear.conv.bias)
    return F.linear(mixed, linear.p.weight.flatten(1)) + scale * static


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_dynamic_classifier_matches_the_official_form(train):
    """``DCDLinear`` (the official ``DYCls``): the DCD kernel on a ``1 x 1`` map, on every path."""
    torch.manual_seed(0)
    linear = randomize_(DCDLinear(6, 5, latent=3, squeeze=4).double()).train(train)
    assert linear.path == "decomposed" and linear.paths == list(PATHS)
    x = torch.randn(4, 6, dtype=F64)
    expected = official_linear_form(linear, x)
    for path in PATHS:
        linear.path = path
        assert_close(linear(x), expected, path)


# (C, O, k, stride, pool) -> (L, squeeze): read from the official ResNet-18/50 ``conv_basic_dy`` /
# ``conv_dy`` layers.
OFFICIAL_RESNET_DIMS = [
    ((64, 64, 3, 1, 2), (16, 16)),
    ((128, 256, 3, 2, 2), (22, 32)),
    ((512, 512, 3, 1, 2), (45, 128)),
    ((64, 256, 1, 1, 1), (8, 4)),
    ((128, 128, 3, 2, 1), (11, 8)),
    ((2048, 512, 1, 1, 1), (45, 128)),
]
# (C, O) -> (L, squeeze, pool) of the official MobileNetV2 ``DYModule`` with fc_squeeze=16.
OFFICIAL_MOBILENETV2_DIMS = [
    ((16, 96), (8, 4, 2)),
    ((96, 24), (12, 9, 1)),
    ((24, 144), (12, 9, 2)),
    ((144, 32), (16, 16, 1)),
    ((64, 384), (16, 16, 2)),
    ((384, 96), (24, 36, 1)),
    ((160, 960), (20, 40, 2)),
    ((960, 320), (40, 100, 1)),
]


@pytest.mark.parametrize(("layer", "dims"), OFFICIAL_RESNET_DIMS)
def test_official_resnet_latent_sizes(layer, dims):
    c, o, k, stride, pool = layer
    assert dcd_dims(c, pool) == dims
    conv = DCDConv2d(c, o, k, stride, pool=pool)
    assert (conv.source.latent, conv.source.squeeze) == dims


@pytest.mark.parametrize(("layer", "dims"), OFFICIAL_MOBILENETV2_DIMS)
def test_official_mobilenetv2_latent_sizes(layer, dims):
    assert dcd_mobilenetv2_dims(*layer, fc_squeeze=16) == dims


def test_parameter_names_shapes_and_counts():
    """The official ``conv_dy`` names and shapes (ResNet-50's ``layer2.0.conv2``: 128 -> 128, 3x3/2)."""
    conv = DCDConv2d(128, 128, 3, 2)
    shapes = {n: tuple(p.shape) for n, p in conv.state_dict().items()}
    latent, squeeze = 11, 8
    assert shapes == {
        "conv.weight": (128, 128, 3, 3),
        "q.weight": (latent, 128, 1, 1),
        "p.weight": (128, latent, 1, 1),
        **{f"bn1.{s}": (latent,) for s in ("weight", "bias", "running_mean", "running_var")},
        "bn1.num_batches_tracked": (),
        **{f"bn2.{s}": (latent,) for s in ("weight", "bias", "running_mean", "running_var")},
        "bn2.num_batches_tracked": (),
        "fc.0.weight": (squeeze, 128),
        "fc.1.fc.0.weight": (squeeze, squeeze),
        "fc_phi.weight": (latent * latent, squeeze),
        "fc_scale.weight": (128, squeeze),
    }
    assert conv.q.stride == (2, 2) and conv.conv.stride == (2, 2)
    assert conv(torch.randn(2, 128, 9, 9)).shape == (2, 128, 5, 5)
    linear = DCDLinear(2048, 1000)
    static, factors = 2048 * 1000 + 1000, 2048 * 32 + 32 * 1000 + 4 * 32  # cls; cls_q, cls_p, bn1, bn2
    context = 2048 * 32 + 32 * 32 + 32 * 32**2 + 32 * 1000  # fc, its gate, fc_phi, fc_scale
    assert sum(p.numel() for p in linear.parameters()) == static + factors + context


def test_a_batch_needs_more_than_one_value_per_latent_channel_in_training():
    conv = DCDConv2d(4, 4, 3, latent=2, squeeze=2).train()
    for path in PATHS:
        conv.path = path
        with pytest.raises(ValueError, match=r"more than (1|one) value"):
            conv(torch.randn(1, 4, 1, 1))
        assert conv(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)  # one sample, several positions
    conv.eval()
    assert conv(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)


def test_errors():
    with pytest.raises(TypeError, match="zero padding"):
        Aggregation(Sliding(3, border="reflect"), DCDKernel(4, 4, 2, 2))
    with pytest.raises(ValueError, match="latent"):
        DCDConv2d(4, 4, latent=0)
    with pytest.raises(ValueError, match="pool"):
        DCDConv2d(4, 4, pool=0)
    with pytest.raises(ValueError, match="in_features"):
        DCDLinear(0, 3)
    with pytest.raises(ValueError, match="out_features"):
        DCDLinear(3, 0)
    with pytest.raises(ValueError, match=r"x must be 2-D \(B, C\)"):
        DCDLinear(6, 3)(torch.randn(2, 6, 1, 1))
    with pytest.raises(ValueError, match=r"x has 5 features .*in_features=6"):
        DCDLinear(6, 3)(torch.randn(2, 5))
    with pytest.raises(TypeError, match="floating-point"):
        DCDLinear(6, 3)(torch.ones(2, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="path"):
        DCDConv2d(4, 4, path="conv")
