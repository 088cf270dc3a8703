"""Bad input: every preset and the spec builder either compute the right thing or raise a
``ValueError`` / ``TypeError`` that names the argument, never an opaque error from deep inside.

Every preset is its catalog example (``unifiedops.catalog.PRESETS``: ``C = 96``, ``14 x 14`` maps,
``k = w = 7``). The properties are about shapes, dtypes, layouts and the flow of non-finite values;
none depends on the width, and the map is larger than every receptive-field radius in ``RADIUS``
except LKA's (whose locality is then checked on the few pixels beyond it), so the examples need no
reduction. The builder is checked on a 4-stage spec of width 16 and depth 1: downsampling and
argument checks do not depend on depth or width.

What "NaN/Inf propagate" means here, for a preset in eval mode on a batch of 2:

* a finite input gives a finite output;
* a NaN, ``+inf`` or ``-inf`` written into one channel of one pixel of sample 0 makes the output
  of sample 0 non-finite at that pixel (some channel): it is never replaced by a finite number;
* sample 1 is unchanged (no leak across the batch);
* positions of sample 0 farther than the preset's receptive-field radius (Chebyshev distance,
  ``RADIUS``) are unchanged: padding and masks do not spread the value beyond the neighbourhood.
  Presets that pool the whole map (per-sample weights, global attention) have no such radius.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unifiedops import Aggregation
from unifiedops.catalog import PRESETS, PresetEntry
from unifiedops.testing import feature_maps, randomize_, shapes
from zoo.builder import BackboneSpec, SpecBackbone, StageSpec, register_backbone, register_mixer

# Raise for a deeper search, e.g. UNIFIEDOPS_EXAMPLES=2000; the default keeps this file near a minute on 2 cores.
EXAMPLES = max(2, int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100")) // 25)

NAMES = [e.name for e in PRESETS]

# Chebyshev radius of the receptive field of each catalog example; None: the whole map (pooling or global).
RADIUS: dict[str, int | None] = {
    "DWConv": 3,
    "DynamicDWConv": None,  # kernel from the pooled map
    "InhomogeneousDWConv": 3,  # kernel from the centre feature, 7x7
    "WindowAttention": 6,  # the 7x7 window holding the pixel
    "NeighborhoodAttention": 6,  # 7x7, clamped at the border
    "GlobalAttention": None,
    "LKA": 11,  # 5x5 then 7x7 dilated 3: 23x23
    "ACmix": 3,  # 7x7 attention (reflect) and 3x3 conv
    "ACmixWindowAttention": 6,
    "KWConv2d": None,  # attention over cells from the pooled map
    "KWConv1d": None,
    "KWLinear": None,
    "CondConv": None,
    "DYConv": None,
    "ODConv2d": None,  # attentions from the pooled map
    "DCDConv2d": None,  # dynamic factors from the pooled map
    "DCDLinear": None,  # a classifier: no positions
    "UniFormerLocalMHRA": 2,
    "UniFormerGlobalMHRA": None,
    "DynamicPositionEmbedding": 1,
    "MixingAttention": None,  # channel gate from the pooled map
    "XVolution": 1,
    "MergedXVolution": 1,
}

# The halo_sdpa path runs fused attention over query tiles (side t = k by default) and key blocks of
# t + 2r: a masked-out key still meets its zero weight in the product with the values, and 0 * NaN is
# NaN, so a non-finite key reaches every query of the tiles whose block holds it, t - 1 + r = 9 away.
# The reference path keeps the exact radius (test_reference_path_keeps_nan_in_the_neighbourhood).
_FAST_PATH_SPREAD = {"NeighborhoodAttention": 9, "ACmix": 9}


def _entry(name: str) -> PresetEntry:
    return next(e for e in PRESETS if e.name == name)


def _kind(entry: PresetEntry) -> str:
    """``"map"`` (B, C, H, W), ``"seq"`` (B, C, L), ``"tokens"`` (B, N, C) or ``"vector"`` (B, C)."""
    return {"KWConv1d": "seq", "KWLinear": "tokens", "DCDLinear": "vector"}.get(entry.name, "map")


def _channels(entry: PresetEntry) -> int:
    return entry.input_shape[-1] if _kind(entry) == "tokens" else entry.input_shape[1]


_MODULES: dict[str, torch.nn.Module] = {}


def _module(name: str) -> torch.nn.Module:
    """The catalog example with random parameters and BatchNorm statistics, in eval mode (built once)."""
    if name not in _MODULES:
        torch.manual_seed(0)
        module = _entry(name).build()
        randomize_(module)
        _MODULES[name] = module.eval()
    return _MODULES[name]


def _input(entry: PresetEntry, seed: int, **sizes: int) -> torch.Tensor:
    shape = list(entry.input_shape)
    for axis, value in sizes.items():
        shape[{"batch": 0, "h": -2 if _kind(entry) == "map" else 1, "w": -1, "length": -1, "tokens": 1}[axis]] = value
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_radius_covers_every_preset():
    assert set(RADIUS) == set(NAMES), "give every new preset its receptive-field radius"


# --- wrong inputs ---------------------------------------------------------------------------------

_BAD_DTYPES = (torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=EXAMPLES * 3)
@given(data=st.data())
def test_wrong_inputs_raise_errors_naming_x(name, data):
    entry, module = _entry(name), _module(name)
    kind, c = _kind(entry), _channels(entry)
    shape = entry.input_shape
    case = data.draw(st.sampled_from(["rank", "channels", "dtype", "not_a_tensor"]))
    if case == "rank":
        ranks = [1] if kind == "tokens" else [r for r in (1, 2, 3, 4, 5) if r != len(shape)]  # vector: (B, C)
        rank = data.draw(st.sampled_from(ranks))
        x = torch.randn((2, 5, 5, 5, 5)[:rank])
        with pytest.raises(ValueError, match=r"^x must be") as info:
            module(x)
        assert f"{rank}-D" in str(info.value) or str(tuple(x.shape)) in str(info.value)
    elif case == "channels":
        got = data.draw(st.integers(1, 2 * c).filter(lambda n: n != c))
        bad = list(shape)
        bad[-1 if kind == "tokens" else 1] = got
        with pytest.raises(ValueError, match=rf"^x has {got} (channels|features) .*={c}\b"):
            module(torch.randn(bad))
    elif case == "dtype":
        dtype = data.draw(st.sampled_from(_BAD_DTYPES))
        with pytest.raises(TypeError, match=rf"^x must be a floating-point tensor, got dtype={dtype}"):
            module(torch.ones(shape, dtype=dtype))
    else:
        x = data.draw(st.sampled_from([[[1.0]], 1.0, None, np.zeros(shape, np.float32)]))
        with pytest.raises(TypeError, match=rf"^x must be a torch.Tensor, got {type(x).__name__}"):
            module(x)


# --- empty and tiny inputs ------------------------------------------------------------------------


def _set_path(module: torch.nn.Module, path: str) -> None:
    for m in module.modules():
        if isinstance(m, Aggregation):
            m.path = path


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_output(name, path):
    entry, module = _entry(name), _module(name)
    _set_path(module, path)
    try:
        with torch.no_grad():
            full = module(_input(entry, 0, batch=1))
            empty = module(_input(entry, 0, batch=0))
    finally:
        _set_path(module, "auto")
    assert empty.shape == (0, *full.shape[1:])


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=EXAMPLES * 2)
@given(side=st.tuples(st.integers(0, 3), st.integers(0, 9)), seed=st.integers(0, 2**16))
def test_tiny_and_empty_maps(name, side, seed):
    """Sides of 0 raise a ValueError naming the size; sides of 1 to 3 (smaller than the kernels and
    windows) compute a finite output of the input's size, except where the operator cannot (ACmix's
    reflection padding needs sides above ``kernel_att // 2``), which raises a ValueError naming H and W."""
    entry, module = _entry(name), _module(name)
    kind = _kind(entry)
    h, w = side
    sizes = {"map": {"h": h, "w": w}, "seq": {"length": w}, "tokens": {"tokens": w}, "vector": {}}[kind]
    x = _input(entry, seed, **sizes)
    empty = 0 in x.shape[1:]
    small_for_acmix = name == "ACmix" and min(h, w) <= module.neighbourhood.kernel_size // 2
    if empty or small_for_acmix:
        pattern = {"map": r"H >= 1 and W >= 1|H and W", "seq": r"L >= 1", "tokens": r"at least one token"}[kind]
        with pytest.raises(ValueError, match=rf"^x must have ({pattern})|needs H and W larger than"):
            module(x)
        return
    with torch.no_grad():
        y = module(x)
    assert y.shape[0] == x.shape[0]
    assert y.shape[2:] == x.shape[2:] if kind != "tokens" else y.shape[:-1] == x.shape[:-1]
    assert torch.isfinite(y).all()


# --- NaN and Inf ----------------------------------------------------------------------------------


def _position_axes(kind: str) -> tuple[int, ...]:
    return {"map": (2, 3), "seq": (2,), "tokens": (1,), "vector": ()}[kind]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_nan_and_inf_propagate_within_the_receptive_field(name, data):
    entry, module = _entry(name), _module(name)
    kind = _kind(entry)
    radius = _FAST_PATH_SPREAD.get(name, RADIUS[name])
    # 9 x 11 maps where the radius is small or absent (cheaper); the catalog's 14 x 14 where it is not
    small = kind == "map" and (radius is None or radius <= 3)
    x = _input(entry, data.draw(st.integers(0, 2**16)), **({"h": 9, "w": 11} if small else {}))
    axes = _position_axes(kind)
    pos = tuple(data.draw(st.integers(0, x.shape[a] - 1)) for a in axes)
    channel = data.draw(st.integers(0, _channels(entry) - 1))
    value = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    bad = x.clone()
    index = (0, *pos, channel) if kind == "tokens" else (0, channel, *pos)
    bad[index] = value
    with torch.no_grad():
        clean, dirty = module(x), module(bad)
    assert torch.isfinite(clean).all(), "a finite input gave a non-finite output"
    at_pixel = dirty[(0, *pos)] if kind == "tokens" else dirty[(0, slice(None), *pos)]
    assert not torch.isfinite(at_pixel).all(), f"{value} at {pos} was replaced by finite numbers"
    torch.testing.assert_close(dirty[1], clean[1], rtol=0, atol=1e-6, msg="a non-finite value leaked across the batch")
    if radius is not None:
        grids = torch.meshgrid(*(torch.arange(dirty.shape[a]) for a in axes), indexing="ij")
        far = torch.stack([(g - p).abs() for g, p in zip(grids, pos, strict=True)]).amax(0) > radius
        torch.testing.assert_close(
            dirty[0][:, far], clean[0][:, far], rtol=0, atol=1e-5, msg=f"{value} spread beyond radius {radius}"
        )


@pytest.mark.parametrize("name", sorted(_FAST_PATH_SPREAD))
def test_reference_path_keeps_nan_in_the_neighbourhood(name):
    entry, module = _entry(name), _module(name)
    x = _input(entry, 0)
    x[0, 0, 0, 4] = float("nan")  # spreads 9 columns on halo_sdpa (see _FAST_PATH_SPREAD)
    _set_path(module, "reference")
    try:
        with torch.no_grad():
            y = module(x)
    finally:
        _set_path(module, "auto")
    bad = ~torch.isfinite(y[0]).all(0)
    ys, xs = torch.nonzero(bad, as_tuple=True)
    assert bad.any()
    assert max(ys.max().item(), (xs - 4).abs().max().item()) <= RADIUS[name]


# --- memory layouts -------------------------------------------------------------------------------

_CHANNELS_LAST_BUILDS = [e.name for e in PRESETS if "channels_last" in inspect.signature(e.cls).parameters]


def _layout_variants(x: torch.Tensor, channels_last_module: bool) -> dict[str, torch.Tensor]:
    """Views and copies of ``x`` with the same values and other strides."""
    variants = {
        "transposed": x.transpose(-1, -2).contiguous().transpose(-1, -2),
        "strided": torch.cat([x, x], -1)[..., ::2].copy_(x),
        "batch-strided": torch.cat([x, x], 0)[::2].copy_(x),
    }
    if x.dim() == 4:
        variants["channels_last"] = x.contiguous(memory_format=torch.channels_last)
        if not channels_last_module:
            variants["permuted NHWC storage"] = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        else:
            variants["permuted NCHW storage"] = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return variants


@pytest.mark.parametrize("name", NAMES + [f"{n}[channels_last]" for n in _CHANNELS_LAST_BUILDS])
def test_non_contiguous_inputs_match_contiguous(name):
    """In float64, so that 1e-6 is far above rounding (float32 differs by up to 2e-3 between layouts,
    from the order of its sums): a wrong stride assumption is an O(1) error. Maps of 9 x 11 (not square,
    so a swapped axis shows; not a multiple of the window, so the padding runs) keep float64 convs cheap."""
    base, _, layout = name.partition("[")
    entry = _entry(base)
    sizes = {"map": {"h": 9, "w": 11}, "seq": {"length": 11}, "tokens": {"tokens": 11}, "vector": {}}[_kind(entry)]
    if layout:
        torch.manual_seed(0)
        module = randomize_(entry.cls(*entry.args, **entry.kwargs, channels_last=True)).eval().double()
        x = _input(entry, 0, **sizes).double().permute(0, 2, 3, 1).contiguous()
    else:
        module = _module(base).double()
        x = _input(entry, 0, **sizes).double()
    try:
        with torch.no_grad():
            expected = module(x)
            for label, variant in _layout_variants(x, bool(layout)).items():
                assert torch.equal(variant, x)
                assert not variant.is_contiguous() or (label == "channels_last" and x.shape[1] == 1)
                torch.testing.assert_close(module(variant), expected, rtol=0, atol=1e-6, msg=label)
    finally:
        if not layout:
            module.float()


@settings(max_examples=EXAMPLES)
@given(x=feature_maps(8, batch=2, min_side=1, max_side=9, dtype=torch.float32))
def test_aggregation_accepts_drawn_memory_formats(x):
    """``feature_maps`` draws channels-last tensors too; every preset of width 8 takes them in float32."""
    from unifiedops import DWConv, NeighborhoodAttention, WindowAttention

    torch.manual_seed(0)
    for module in (DWConv(8, 3), WindowAttention(8, 2, 3), NeighborhoodAttention(8, 2, 3)):
        module.eval()
        with torch.no_grad():
            torch.testing.assert_close(module(x), module(x.contiguous()), rtol=1e-5, atol=1e-5)


# --- bad constructor options ----------------------------------------------------------------------

_SKIP_ARGS = {"path", "channels_last", "warehouse_id", "warehouse_manager", "layer_type"}
# Values that are valid for an argument although the generic lists below call them bad.
_VALID = {
    ("WindowAttention", "shift_size", 0),
    ("ACmixWindowAttention", "shift_size", 0),
    ("InhomogeneousDWConv", "groups", None),  # depth-wise, one group per channel
    ("XVolution", "qk_channels", None),
    ("MergedXVolution", "qk_channels", None),
}
_ODD = {"kernel_size", "kernel_att", "kernel_conv", "dwconv_kernel_size"}
_EVEN_OK = {("KWConv2d", "kernel_size"), ("LKA", "kernel_size"), ("KWLinear", "kernel_size")}
_IGNORED = {("KWLinear", "kernel_size")}  # WarehouseExample ignores it for a linear layer


def _bad_values(entry: PresetEntry, arg: str, default: object) -> list[object]:
    if isinstance(default, bool):
        return [0, 1, "yes", None]
    if isinstance(default, int):
        values = [-1, 2.5, True, "7", None]
        if arg != "shift_size":
            values.append(0)
        if arg in _ODD and (entry.name, arg) not in _EVEN_OK:
            values.append(4)
        if arg in ("num_heads", "head"):
            values.append(5)  # does not divide 96
        if arg == "head_dim":
            values.append(5)  # 19 heads, which do not divide 96
        return values
    if isinstance(default, float):
        return ["7", True, -1.0] if arg != "qk_scale" else ["7", True]
    if isinstance(default, str):
        return ["nope", 3]
    if default is None:
        return ["7", True]
    return []


def _constructor_cases(entry: PresetEntry) -> list[tuple[str, object]]:
    ctor = entry.constructor or entry.cls
    sig = inspect.signature(ctor)
    bound = sig.bind(*entry.args, **entry.kwargs)
    bound.apply_defaults()
    cases = []
    for arg, param in sig.parameters.items():
        if (
            arg in _SKIP_ARGS
            or (entry.name, arg) in _IGNORED
            or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        ):
            continue
        for value in _bad_values(entry, arg, bound.arguments[arg]):
            if (entry.name, arg, value) not in _VALID:
                cases.append((arg, value))
    return cases


@pytest.mark.parametrize("name", NAMES)
def test_bad_constructor_options_name_the_argument(name):
    entry = _entry(name)
    ctor = entry.constructor or entry.cls
    bound = inspect.signature(ctor).bind(*entry.args, **entry.kwargs)
    bound.apply_defaults()
    cases = _constructor_cases(entry)
    assert cases, "no constructor argument was checked"
    failures = []
    for arg, value in cases:
        kwargs = {**bound.arguments, arg: value}
        try:
            with torch.device("meta"):
                ctor(**kwargs)
        except (ValueError, TypeError) as e:
            if arg not in str(e):
                failures.append(f"{arg}={value!r}: {type(e).__name__} does not name {arg!r}: {e}")
        except Exception as e:
            failures.append(f"{arg}={value!r}: {type(e).__name__}: {e}")
        else:
            failures.append(f"{arg}={value!r} was accepted")
    assert not failures, "\n".join(failures)


def test_constructor_check_catches_a_silent_bool():
    """The check above fails when an option is accepted silently (a bool given as an int)."""
    entry = _entry("DWConv")
    assert ("bias", 1) in _constructor_cases(entry)
    with pytest.raises(TypeError, match=r"^bias must be a bool"):
        entry.cls(96, 7, bias=1)


# --- the builder ----------------------------------------------------------------------------------


def _tiny(mixer: str = "dwconv", **mixer_kwargs) -> BackboneSpec:
    return BackboneSpec.pyramid(16, (1, 1, 1, 1), stage=dict(mixer=mixer, mixer_kwargs=mixer_kwargs))


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: BackboneSpec.from_dict({"depths": [1, 1], "dims": [16], "mixer": "dwconv"}), ValueError, r"dims"),
        (lambda: BackboneSpec.pyramid(16, (1, 1)).with_stages(depths=(1, 1, 1)), ValueError, r"depth"),
        (lambda: BackboneSpec.from_dict({"depths": [1], "embed_dim": 16, "widths": [3]}), ValueError, r"widths"),
        (lambda: StageSpec(0, 16), ValueError, r"depth"),
        (lambda: StageSpec(1, True), TypeError, r"dim"),
        (lambda: StageSpec(1, 16, norm="groupnorm"), ValueError, r"norm"),
        (lambda: StageSpec(1, 16, downsample="pool"), ValueError, r"downsample"),
        (lambda: StageSpec(1, 16, mlp_ratio=True), ValueError, r"mlp_ratio"),
        (lambda: StageSpec(1, 16, layer_scale="1e-6"), TypeError, r"layer_scale"),
        (lambda: StageSpec(1, 16, mixer_kwargs=[1]), TypeError, r"mixer_kwargs"),
        (lambda: BackboneSpec.pyramid(16, (1,), patch_size=0), ValueError, r"patch_size"),
        (lambda: BackboneSpec.pyramid(16, (1,), macro_norm="rms"), ValueError, r"macro_norm"),
        (lambda: BackboneSpec((StageSpec(1, 16), StageSpec(1, 32, downsample=None))), ValueError, r"stage 1"),
        (lambda: SpecBackbone(_tiny("nope")), ValueError, r"^stage 0: mixer"),
        (lambda: SpecBackbone(_tiny(kernal_size=3)), TypeError, r"^stage 0: mixer 'dwconv'.*kernal_size"),
        (lambda: SpecBackbone(_tiny(kernel_size=4)), ValueError, r"^stage 0: mixer 'dwconv'.*kernel_size"),
        (lambda: SpecBackbone(_tiny(kernel_size=2.0)), TypeError, r"^stage 0: .*kernel_size"),
        (lambda: SpecBackbone(_tiny("window_attention", num_heads=3)), ValueError, r"^stage 0: .*num_heads"),
        (lambda: SpecBackbone(_tiny("window_attention", head_dim=5)), ValueError, r"^stage 0: .*head_dim"),
        (lambda: SpecBackbone(_tiny("window_attention", num_heads=2, window_size=0)), ValueError, r"window_size"),
        (lambda: SpecBackbone(_tiny("neighborhood_attention", num_heads=2, kernel_size=4)), ValueError, r"kernel_s"),
        (lambda: SpecBackbone(_tiny("inhomogeneous_dwconv")), ValueError, r"^stage 0: .*groups"),
        (lambda: SpecBackbone(_tiny("lka", kernel_size=-1)), ValueError, r"^stage 0: .*kernel_size"),
        (lambda: SpecBackbone(_tiny(), in_chans=0), ValueError, r"in_chans"),
        (lambda: SpecBackbone({"stages": []}), TypeError, r"spec"),
        (lambda: register_backbone("not an identifier", _tiny()), ValueError, r"name"),
        (lambda: register_backbone("i7_bad_spec", "spec"), TypeError, r"spec"),
        (lambda: register_mixer("", lambda dim, site: None), TypeError, r"name"),
        (lambda: register_mixer("i7_not_callable", 3), TypeError, r"factory"),
        (lambda: register_mixer("dwconv", lambda dim, site: None), ValueError, r"overwrite"),
    ],
)
def test_bad_specs_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_a_registered_mixer_with_bad_options_names_the_stage():
    def factory(dim, site, *, width: int = 3):
        if width < 1:
            raise ValueError(f"width must be >= 1, got width={width}")
        return torch.nn.Identity()

    register_mixer("i7_bad_input_mixer", factory, overwrite=True)
    spec = BackboneSpec((StageSpec(1, 16, mixer="dwconv"), StageSpec(1, 32, mixer="i7_bad_input_mixer")))
    SpecBackbone(spec, num_classes=0)
    bad = BackboneSpec(
        (StageSpec(1, 16, mixer="dwconv"), StageSpec(1, 32, mixer="i7_bad_input_mixer", mixer_kwargs={"width": 0}))
    )
    with pytest.raises(ValueError, match=r"^stage 1: mixer 'i7_bad_input_mixer'.*width must be >= 1"):
        SpecBackbone(bad, num_classes=0)


_MODELS: dict[str, SpecBackbone] = {}


def _model(mixer: str) -> SpecBackbone:
    if mixer not in _MODELS:
        torch.manual_seed(0)
        kwargs = {"num_heads": 2} if "attention" in mixer else {"kernel_size": 3}
        _MODELS[mixer] = SpecBackbone(_tiny(mixer, **kwargs), num_classes=5).eval()
    return _MODELS[mixer]


@pytest.mark.parametrize("mixer", ["dwconv", "window_attention", "neighborhood_attention"])
@settings(max_examples=EXAMPLES * 2)
@given(shape=shapes(3, batch=st.integers(0, 2), min_side=1, max_side=40))
def test_builder_input_sizes(mixer, shape):
    """A 4-stage model downsamples 32x (patch 4, three halvings that round up): any side of at least
    the patch size runs, down to 1x1 maps in the last stages; smaller inputs raise a ValueError naming x."""
    model = _model(mixer)
    x = torch.randn(shape)
    if min(shape[2:]) < model.spec.patch_size:
        with pytest.raises(ValueError, match=r"^x must be at least 4 pixels"):
            model(x)
        return
    with torch.no_grad():
        y = model(x)
    assert y.shape == (shape[0], 5)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "x,error,match",
    [
        (torch.randn(3, 32, 32), ValueError, r"^x must be \(B, 3, H, W\), got shape \(3, 32, 32\)"),
        (torch.randn(1, 1, 3, 32, 32), ValueError, r"^x must be \(B, 3, H, W\)"),
        (torch.randn(1, 4, 32, 32), ValueError, r"^x must be \(B, 3, H, W\), got shape \(1, 4, 32, 32\)"),
        (torch.ones(1, 3, 32, 32, dtype=torch.long), TypeError, r"^x must be a floating-point tensor"),
        (torch.ones(1, 3, 32, 32, dtype=torch.bool), TypeError, r"^x must be a floating-point tensor"),
        ([[1.0]], TypeError, r"^x must be a torch.Tensor, got list"),
    ],
)
def test_builder_rejects_bad_inputs(x, error, match):
    with pytest.raises(error, match=match):
        _model("dwconv")(x)


def test_builder_nan_propagates_and_layouts_agree():
    model = _model("window_attention")
    x = torch.randn(2, 3, 32, 32)
    bad = x.clone()
    bad[0, 1, 5, 7] = float("nan")
    with torch.no_grad():
        clean, dirty = model(x), model(bad)
        strided = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(clean).all()
    assert not torch.isfinite(dirty[0]).any()  # pooled: the whole sample
    torch.testing.assert_close(dirty[1], clean[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(strided, clean, rtol=1e-5, atol=1e-5)
