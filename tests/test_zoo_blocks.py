"""The shared zoo machinery: blocks, stages and the timm model interface, on small toy networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging as TimmPatchMerging
from torch import nn

from unifiedops import DWConv
from unifiedops.mixers import UniFormerLocalMHRA
from zoo.blocks import (
    INLINE,
    Backbone,
    BatchNormChannelsLast,
    Block,
    Branch,
    PatchEmbed,
    PatchMerging,
    Stage,
    build_backbone,
    infer_layout,
)

torch.manual_seed(0)


def _metaformer_block(dim: int, layout: str = "NCHW", drop_path: float = 0.0) -> Block:
    return Block(
        Branch(
            [("norm1", nn.BatchNorm2d(dim)), ("attn", DWConv(dim, 3))], layer_scale=("ls1", 0.5), drop_path=drop_path
        ),
        Branch([("norm2", nn.LayerNorm(dim)), ("mlp", Mlp(dim, 2 * dim))], drop_path=drop_path),
        dim=dim,
        layout=layout,
    )


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                b.normal_()
    return module.eval()


class TestLayout:
    def test_infer(self):
        assert infer_layout(nn.Conv2d(3, 3, 1)) == "NCHW"
        assert infer_layout(nn.Linear(3, 3)) == "NHWC"
        assert infer_layout(nn.GELU()) is None
        assert infer_layout(Mlp(4, 8)) == "NHWC"
        assert infer_layout(DWConv(4, 3)) == "NCHW"
        assert infer_layout(BatchNormChannelsLast(4)) == "NHWC"

    def test_batchnorm_channels_last_matches_batchnorm(self):
        bn = _randomize(nn.BatchNorm2d(6))
        bn_last = BatchNormChannelsLast(6).eval()
        bn_last.load_state_dict(bn.state_dict())
        x = torch.randn(2, 6, 5, 4)
        torch.testing.assert_close(bn_last(x.permute(0, 2, 3, 1)), bn(x).permute(0, 2, 3, 1))


class TestBlock:
    @pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
    def test_metaformer_order(self, layout):
        """The block is x + ls * attn(norm1(x)), then x + mlp(norm2(x)), whatever the stream layout."""
        block = _randomize(_metaformer_block(8, layout))
        x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
        block.double()
        y = x + block.ls1.view(-1, 1, 1) * block.attn(block.norm1(x))
        t = y.permute(0, 2, 3, 1)
        expected = (t + block.mlp(block.norm2(t))).permute(0, 3, 1, 2)
        given = x if layout == "NCHW" else x.permute(0, 2, 3, 1)
        out = block(given)
        out = out if layout == "NCHW" else out.permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected)

    def test_swapping_the_order_changes_the_output(self):
        """A check that the test above can fail: norm after the mixer is a different block."""
        block = _randomize(_metaformer_block(8)).double()
        x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
        wrong = x + block.ls1.view(-1, 1, 1) * block.norm1(block.attn(x))
        t = wrong.permute(0, 2, 3, 1)
        wrong = (t + block.mlp(block.norm2(t))).permute(0, 3, 1, 2)
        assert not torch.allclose(block(x), wrong)

    def test_resnet_basic_block(self):
        c1, c2 = nn.Conv2d(4, 8, 3, 2, 1, bias=False), nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        bn1, bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        down = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        block = Block(
            Branch(
                [("conv1", c1), ("bn1", bn1), ("act1", nn.ReLU()), ("conv2", c2), ("bn2", bn2)],
                shortcut=("downsample", down),
                after=[("act2", nn.ReLU())],
            ),
            dim=8,
        )
        _randomize(block)
        x = torch.randn(2, 4, 8, 8)
        expected = F.relu(bn2(c2(F.relu(bn1(c1(x))))) + down(x))
        torch.testing.assert_close(block(x), expected)
        assert {k.split(".")[0] for k in block.state_dict()} == {"conv1", "bn1", "conv2", "bn2", "downsample"}

    def test_no_residual(self):
        conv = nn.Conv2d(4, 6, 1)
        block = Block(Branch([("conv", conv)], residual=False), dim=6)
        x = torch.randn(1, 4, 3, 3)
        torch.testing.assert_close(block(x), conv(x))

    def test_inline_registers_children(self):
        mixer = UniFormerLocalMHRA(8)
        block = Block(Branch([("norm1", nn.BatchNorm2d(8)), (INLINE, mixer)]), dim=8)
        assert {k.split(".")[0] for k in block.state_dict()} == {"norm1", "conv1", "attn", "conv2"}
        _randomize(block)
        x = torch.randn(2, 8, 5, 5)
        torch.testing.assert_close(block(x), x + mixer(block.norm1(x)))

    def test_inline_refuses_direct_tensors(self):
        with pytest.raises(ValueError, match="inlined"):
            Block(Branch([(INLINE, DWConv(4, 3))]), dim=4)

    def test_replacing_a_step_takes_effect(self):
        block = _randomize(_metaformer_block(8))
        x = torch.randn(1, 8, 4, 4)
        block.attn = nn.Identity()
        expected_first = x + block.ls1.view(-1, 1, 1) * block.norm1(x)
        t = expected_first.permute(0, 2, 3, 1)
        torch.testing.assert_close(block(x), (t + block.mlp(block.norm2(t))).permute(0, 3, 1, 2))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="layout"):
            Block(Branch([("a", nn.Identity())]), dim=4, layout="CHW")
        with pytest.raises(ValueError, match="twice"):
            Block(Branch([("a", nn.Identity()), ("a", nn.Identity())]), dim=4)
        with pytest.raises(TypeError, match="Branch"):
            Block([("a", nn.Identity())], dim=4)
        with pytest.raises(ValueError, match="at least one"):
            Block(dim=4)


class TestStageLayers:
    def test_patch_merging_matches_timm(self):
        ours, theirs = PatchMerging(6), TimmPatchMerging(6)
        _randomize(theirs)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 8, 4, 6)
        torch.testing.assert_close(ours(x), theirs(x))

    def test_patch_merging_refuses_odd_sizes(self):
        with pytest.raises(ValueError, match="even"):
            PatchMerging(6)(torch.randn(1, 7, 4, 6))
        ours, theirs = PatchMerging(6, pad_odd=True), TimmPatchMerging(6)
        _randomize(theirs)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 7, 5, 6)
        torch.testing.assert_close(ours(x), theirs(x))

    def test_patch_embed_layouts(self):
        embed = PatchEmbed(3, 8, 4, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        assert embed(torch.randn(1, 3, 16, 12)).shape == (1, 4, 3, 8)
        with pytest.raises(ValueError, match="output_fmt"):
            PatchEmbed(3, 8, 4, output_fmt="NLC")


class ToyNet(Backbone):
    """Four stages; the first two keep a trailing downsample (official Swin style), the rest lead."""

    stage_attr = "layers"

    def __init__(self, num_classes: int = 10, dims=(8, 16, 24, 32), in_chans: int = 3, **kwargs):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, dims[0], 4, 4)
        layers = []
        for i, dim in enumerate(dims):
            trailing = i < len(dims) - 1 and i < 2
            leading = i >= 3
            down = None
            if trailing:
                down = nn.Conv2d(dim, dims[i + 1], 2, 2)
            elif leading:
                down = nn.Conv2d(dims[i - 1], dim, 2, 2)
            blocks = [_metaformer_block(dim, drop_path=0.0) for _ in range(2)]
            if i == 2:  # stage 2 downsamples nowhere: stage 1's trailing layer already did
                blocks = [_metaformer_block(dim)]
            layers.append(Stage(blocks, down, downsample_last=trailing))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.init_head(dims[-1], num_classes, **kwargs)
        self.set_feature_info(dims, (4, 8, 16, 32), [f"layers.{i}" for i in range(4)])

    def forward_stem(self, x):
        return self.stem(x)


class TestBackbone:
    def _net(self, **kwargs):
        return _randomize(ToyNet(**kwargs))

    def test_forward_and_intermediates_agree(self):
        net = self._net()
        x = torch.randn(2, 3, 64, 64)
        final, feats = net.forward_intermediates(x)
        torch.testing.assert_close(final, net.forward_features(x))
        assert [f.shape[1] for f in feats] == [8, 16, 24, 32]
        assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
        assert net(x).shape == (2, 10)
        torch.testing.assert_close(net.forward_head(final, pre_logits=True), final.mean((2, 3)))

    def test_intermediates_take_features_before_trailing_downsample(self):
        net = self._net()
        x = torch.randn(1, 3, 32, 32)
        first = net.layers[0].forward_body(net.stem(x))
        torch.testing.assert_close(net.forward_intermediates(x, indices=[0], intermediates_only=True)[0], first)

    def test_indices_norm_and_format(self):
        net = self._net()
        x = torch.randn(1, 3, 32, 32)
        feats = net.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt="NHWC")
        assert [f.shape[-1] for f in feats] == [24, 32]
        _, normed = net.forward_intermediates(x, indices=[3], norm=True)
        torch.testing.assert_close(normed[0], net.forward_features(x))
        with pytest.raises(ValueError, match="output_fmt"):
            net.forward_intermediates(x, output_fmt="NLC")

    def test_features_only_through_timm(self):
        model = build_backbone(ToyNet, "uo_test_toy", pretrained=False, features_only=True)
        assert model.feature_info.channels() == [8, 16, 24, 32]
        assert model.feature_info.reduction() == [4, 8, 16, 32]
        feats = model(torch.randn(1, 3, 64, 64))
        assert [f.shape[1] for f in feats] == [8, 16, 24, 32]
        partial = build_backbone(ToyNet, "uo_test_toy", features_only=True, out_indices=(0, 1))
        assert len(partial.model.layers) == 2
        assert isinstance(partial.model.layers[1].downsample, nn.Identity)
        assert [f.shape[1] for f in partial(torch.randn(1, 3, 32, 32))] == [8, 16]

    def test_reset_classifier_and_pool(self):
        net = self._net()
        net.reset_classifier(5)
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 5)
        net.reset_classifier(0, "")
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 32, 1, 1)
        assert isinstance(net.get_classifier(), nn.Identity)

    def test_dotted_classifier_and_head_norm(self):
        net = _randomize(ToyNet(7, classifier="head.fc", head_norm=nn.LayerNorm(32)))
        assert {k for k in net.state_dict() if k.startswith("head")} == {
            "head.fc.weight",
            "head.fc.bias",
            "head.norm.weight",
            "head.norm.bias",
        }
        x = torch.randn(1, 3, 32, 32)
        pooled = net.forward_features(x).mean((2, 3))
        torch.testing.assert_close(net(x), net.head.fc(net.head.norm(pooled)))

    def test_grad_checkpointing_is_exact(self):
        net = self._net().train()
        for m in net.modules():  # BatchNorm in training mode would see different batches otherwise
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        x = torch.randn(2, 3, 32, 32)
        net(x).sum().backward()
        plain = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        net.set_grad_checkpointing()
        assert all(s.grad_checkpointing for s in net.layers)
        net(x).sum().backward()
        for a, p in zip(plain, net.parameters(), strict=True):
            torch.testing.assert_close(p.grad, a)

    def test_no_weight_decay_and_group_matcher(self):
        class WithKeys(ToyNet):
            no_weight_decay_keys = ("ls1",)

        assert WithKeys().no_weight_decay() == {
            f"layers.{i}.blocks.{j}.ls1" for i, j in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1)]
        }
        matcher = ToyNet().group_matcher()
        assert set(matcher) == {"stem", "blocks"}
