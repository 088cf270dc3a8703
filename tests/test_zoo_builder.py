"""The custom-backbone builder: specs, dicts, mixer and block registries, timm registration."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import timm
import torch
from torch import nn

import zoo  # registers the models with timm
from helpers import randomize_
from unifiedops import DWConv, NeighborhoodAttention
from zoo.builder import (
    MIXERS,
    BackboneSpec,
    MixerSite,
    SpecBackbone,
    StageSpec,
    register_backbone,
    register_mixer,
)
from zoo.dwnet import DWNET_TINY

_names = (f"test_builder_net_{i}" for i in itertools.count())


def _small(**stage) -> BackboneSpec:
    return BackboneSpec.pyramid(16, (1, 1, 1, 1), stage={"mixer_kwargs": {"head_dim": 8}, **stage})


def test_default_spec_is_swin_macro():
    model = SpecBackbone(_small())
    keys = set(model.state_dict())
    assert {"patch_embed.proj.weight", "patch_embed.norm.weight", "norm.weight", "head.fc.weight"} <= keys
    assert "layers.1.downsample.reduction.weight" in keys and "layers.0.downsample.reduction.weight" not in keys
    assert {
        "layers.0.blocks.0." + k for k in ("norm1.weight", "attn.qkv.weight", "norm2.weight", "mlp.fc1.weight")
    } <= keys


def test_dwnet_tiny_swaps_to_neighborhood_attention_in_one_line():
    # The line of docs/zoo/builder.md:
    spec = DWNET_TINY.with_mixer("neighborhood_attention", kernel_size=7, head_dim=32)
    assert [s.mixer for s in spec.stages] == ["neighborhood_attention"] * 4
    with torch.device("meta"):
        model = SpecBackbone(spec)
        original = SpecBackbone(DWNET_TINY)
    assert isinstance(model.layers[2].blocks[0].attn2conv.conv, NeighborhoodAttention)
    assert model.layers[3].blocks[1].attn2conv.conv.source.heads == 24
    # Only the 7x7 slot changed: every other key of DWNet-T is still there, with its shape.
    ours, theirs = model.state_dict(), original.state_dict()
    assert {k: v.shape for k, v in theirs.items() if ".attn2conv.conv." not in k} == {
        k: v.shape for k, v in ours.items() if ".attn2conv.conv." not in k
    }
    small = SpecBackbone(spec, depths=(1, 1, 1, 1), num_classes=3).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 224, 224)).shape == (1, 3)


@pytest.mark.parametrize(
    "mixer, options",
    [
        ("window_attention", {"head_dim": 8, "window_size": 4}),
        ("acmix_window", {"num_heads": 2, "window_size": 4}),
        ("neighborhood_attention", {"head_dim": 8, "kernel_size": 3}),
        ("global_attention", {"num_heads": 2}),
        ("dwconv", {"kernel_size": 5}),
        ("dynamic_dwconv", {"kernel_size": 3}),
        ("inhomogeneous_dwconv", {"kernel_size": 3, "group_channels": 8}),
        ("lka", {"kernel_size": 9, "dilation": 2}),
        ("acmix", {"kernel_att": 3, "num_heads": 2}),
        ("odconv", {"kernel_num": 2}),
        ("dcd", {"pool": 2}),
        ("kernelwarehouse", {}),
    ],
)
@pytest.mark.parametrize("block", ["metaformer", "dwnet"])
def test_every_mixer_preset_builds_and_runs(mixer, options, block):
    spec = BackboneSpec.pyramid(
        16, (1, 2, 1, 1), stage={"mixer": mixer, "mixer_kwargs": options, "block": block}, img_size=96
    )
    model = SpecBackbone(spec, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))
        maps = model.forward_intermediates(torch.randn(1, 3, 100, 76), intermediates_only=True)
    assert out.shape == (1, 4)
    assert [m.shape[1:] for m in maps] == [(16, 25, 19), (32, 13, 10), (64, 7, 5), (128, 4, 3)]


def test_swin_window_follows_block_index_and_map_size():
    model = SpecBackbone(BackboneSpec.pyramid(32, (2, 2, 2, 2), stage={"mixer_kwargs": {"head_dim": 32}}))
    attn = [[b.attn for b in stage.blocks] for stage in model.layers]
    assert [a.neighbourhood.shift for a in attn[0]] == [0, 3]
    assert [a.neighbourhood.shift for a in attn[3]] == [0, 0]  # 7x7 at 224: timm drops the shift
    small = SpecBackbone(BackboneSpec.pyramid(32, (2, 2, 2, 2), stage={"mixer_kwargs": {"head_dim": 32}}, img_size=160))
    assert small.layers[3].blocks[1].attn.neighbourhood.size == 5  # the window shrinks to the 5x5 map


def test_from_dict_round_trip_and_shorthand():
    spec = DWNET_TINY.with_mixer("dynamic_dwconv", kernel_size=5)
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    short = BackboneSpec.from_dict(
        {
            "depths": [2, 2, 6, 2],
            "embed_dim": 96,
            "block": "dwnet",
            "mixer": "dwconv",
            "mixer_kwargs": {"kernel_size": 7},
            "norm": "batchnorm",
            "downsample_position": "trailing",
            "classifier": "head",
            "drop_path_rate": 0.2,
        }
    )
    assert short == DWNET_TINY


def test_leading_and_trailing_downsampling_compute_the_same():
    leading = randomize_(SpecBackbone(_small(), num_classes=5), 0.2).eval()
    trailing = SpecBackbone(
        dataclasses.replace(_small(), downsample_position="trailing", classifier="head"), num_classes=5
    ).eval()
    moved = {}
    for key, value in leading.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        moved[".".join(parts).replace("head.fc.", "head.")] = value
    trailing.load_state_dict(moved, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trailing(x), leading(x))
        for a, b in zip(trailing.forward_intermediates(x)[1], leading.forward_intermediates(x)[1], strict=True):
            torch.testing.assert_close(a, b)


def test_conv_downsampling_layer_scale_and_same_width_stages():
    spec = BackboneSpec(
        (
            StageSpec(1, 16, "dwconv", layer_scale=1e-2),
            StageSpec(1, 16, "dwconv", downsample=None),
            StageSpec(1, 32, "dwconv", downsample="conv"),
        )
    )
    model = SpecBackbone(spec, num_classes=0).eval()
    assert spec.reductions == (4, 4, 8)
    assert "layers.0.blocks.0.layer_scale_1" in model.state_dict()
    assert "layers.2.downsample.proj.weight" in model.state_dict()
    assert model.feature_info[-1] == dict(num_chs=32, reduction=8, module="layers.2")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 32)


def test_register_mixer_and_backbone_with_timm():
    name = next(_names)
    register_mixer(name + "_mixer", lambda dim, site: DWConv(dim, 3 + 2 * site.stage))
    spec = BackboneSpec.pyramid(8, (1, 1, 2, 1), stage={"mixer": name + "_mixer"})
    register_backbone(name, spec, paper="my lab")
    assert name in timm.list_models()
    model = timm.create_model(name, num_classes=7)
    assert model.pretrained_cfg["paper_ids"] == "my lab" and not model.pretrained_cfg.get("url")
    assert model.layers[2].blocks[1].attn.weight.shape == (32, 1, 7, 7)
    features = timm.create_model(name, features_only=True, out_indices=(1, 3))
    assert features.feature_info.channels() == [16, 64] and features.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        assert [tuple(f.shape) for f in features(torch.randn(1, 3, 64, 64))] == [(1, 16, 8, 8), (1, 64, 2, 2)]
    with pytest.raises(ValueError, match="already"):
        register_backbone(name, spec)
    with pytest.raises(ValueError, match="already registered"):
        register_mixer(name + "_mixer", lambda dim, site: nn.Identity())


@pytest.mark.parametrize("taken", ["resnet50", "swin_tiny_patch4_window7_224", "convnext_tiny"])
def test_register_backbone_refuses_timm_names(taken):
    with pytest.raises(ValueError, match="timm already has"):
        register_backbone(taken, _small())


def test_ignore_keys_lets_derived_buffers_load_strictly():
    spec = dataclasses.replace(_small(), ignore_keys=("attn_mask",))
    model = SpecBackbone(spec)
    state = model.state_dict()
    state["layers.0.blocks.0.attn_mask"] = torch.zeros(1, 2, 2)
    model.load_state_dict(state, strict=True)
    state["layers.0.blocks.0.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="extra"):
        model.load_state_dict(state, strict=True)


def test_mixer_site_reaches_factories():
    seen = []

    def spy(dim, site, **options):
        seen.append((dim, site))
        return nn.Identity()

    register_mixer(next(_names), spy)
    name = next(n for n, f in MIXERS.items() if f is spy)
    SpecBackbone(BackboneSpec.pyramid(8, (1, 2), stage={"mixer": name}, img_size=64, layout="NCHW"))
    assert seen == [
        (8, MixerSite(0, 0, (16, 16), False)),
        (16, MixerSite(1, 0, (8, 8), False)),
        (16, MixerSite(1, 1, (8, 8), False)),
    ]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: StageSpec(0, 8), ValueError, "depth"),
        (lambda: StageSpec(1, 8, norm="rmsnorm"), ValueError, "norm"),
        (lambda: StageSpec(1, 8, downsample="pool"), ValueError, "downsample"),
        (lambda: StageSpec(1, 8, mixer_kwargs=[1]), TypeError, "mixer_kwargs"),
        (lambda: BackboneSpec(()), ValueError, "stages"),
        (lambda: BackboneSpec((StageSpec(1, 8), StageSpec(1, 16, downsample=None))), ValueError, "no downsample"),
        (lambda: BackboneSpec((StageSpec(1, 8),), downsample_position="middle"), ValueError, "downsample_position"),
        (lambda: BackboneSpec((StageSpec(1, 8),), img_size=(1, 2, 3)), ValueError, "img_size"),
        (lambda: BackboneSpec.from_dict({"depths": [1], "embed_dim": 8, "colour": 1}), ValueError, "colour"),
        (lambda: BackboneSpec.from_dict({"depths": [1]}), ValueError, "dims"),
        (lambda: _small().with_mixer("convolution"), ValueError, "mixer"),
        (lambda: _small().with_mixer("dwconv", stages=[7]), ValueError, "stages"),
        (lambda: SpecBackbone(_small(mixer="nope")), ValueError, "mixer must be one of"),
        (lambda: SpecBackbone(_small(mixer_kwargs={})), ValueError, "num_heads or head_dim"),
        (lambda: SpecBackbone(_small(mixer_kwargs={"head_dim": 7})), ValueError, "head_dim"),
        (lambda: SpecBackbone(_small(), in_chans=0), ValueError, "in_chans"),
        (lambda: register_backbone("not a name", _small()), ValueError, "identifier"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_input_shape():
    model = SpecBackbone(_small())
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(1, 4, 32, 32))


def test_specs_and_spec_models_deep_copy_and_pickle():
    # timm's ModelEma deep-copies the model, which holds its spec (with read-only kwargs views).
    import copy
    import pickle

    spec = zoo.dwnet.DWNET_TINY.with_mixer("neighborhood_attention", kernel_size=7, head_dim=32)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    model = SpecBackbone(spec.with_stages(depths=(1, 1, 1, 1))).eval()
    twin = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(twin(x), model(x))
