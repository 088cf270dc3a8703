"""The model a spec builds, and its registration with timm."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from zoo.blocks import (
    Backbone,
    PatchEmbed,
    Stage,
    build_backbone,
    pretrained_cfg,
)
from zoo.builder.parts import BLOCKS, DOWNSAMPLES, MIXERS, MixerSite, make_norm
from zoo.builder.spec import BackboneSpec, StageSpec, _positive_int

__all__ = ["SpecBackbone", "create_from_spec", "register_backbone"]

# timm's register_model reads the pretrained configs of models registered from this module here.
default_cfgs: dict[str, Any] = {}

# -- the model ------------------------------------------------------------------------------------------------------


def _init_linear(module: nn.Module) -> None:
    # Swin, DWNet and ACmix initialise every Linear this way; convs and preset tables keep their own init.
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SpecBackbone(Backbone):
    """A backbone built from a [`BackboneSpec`][zoo.builder.BackboneSpec].

    State-dict names: ``patch_embed.{proj,norm}``, ``layers.{i}.downsample`` (leading or trailing),
    ``layers.{i}.blocks.{j}.<block's names>``, ``norm``, and the classifier at ``spec.classifier``.

    Args:
        spec: The architecture.
        in_chans: Input channels.
        num_classes: Classes (``0``: ``forward`` returns pooled features).
        global_pool: Pooling type (``None``: the spec's).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth (``None``: the spec's).
        depths: Blocks per stage, replacing the spec's (e.g. a shallow copy for tests).
        img_size: Reference input size, replacing the spec's.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``; ``forward_features`` returns the map in ``spec.layout``.
        Odd map sizes are zero-padded at the bottom and right before patch merging, as in timm.
    """

    stage_attr = "layers"
    norm_attr = "norm"
    no_weight_decay_keys = ("relative_position_bias_table", "layer_scale_1", "layer_scale_2")

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        depths: Sequence[int] | None = None,
        img_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(spec, BackboneSpec):
            raise TypeError(f"spec must be a BackboneSpec, got {type(spec).__name__}")
        if depths is not None:
            spec = spec.with_stages(depths=tuple(depths))
        overrides = {k: v for k, v in dict(drop_path_rate=drop_path_rate, img_size=img_size).items() if v is not None}
        spec = dataclasses.replace(spec, **overrides)
        self.spec = spec
        self.in_chans = _positive_int("in_chans", in_chans)
        self.output_fmt = spec.layout
        layout = spec.layout
        trailing = spec.downsample_position == "trailing"

        self.patch_embed = PatchEmbed(
            in_chans,
            spec.dims[0],
            spec.patch_size,
            norm_layer=lambda d: make_norm(spec.macro_norm, d, layout),
            output_fmt=layout,
        )
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths), device="cpu").tolist()
        resolutions = spec.resolutions()
        layers, k = [], 0
        n = len(spec.stages)
        for i, stage in enumerate(spec.stages):
            blocks = []
            for j in range(stage.depth):
                blocks.append(self._block(stage, MixerSite(i, j, resolutions[i], layout == "NHWC"), rates[k], layout))
                k += 1
            if trailing:
                nxt = spec.stages[i + 1] if i + 1 < n else None
                down = self._downsample(nxt.downsample, stage.dim, nxt.dim) if nxt is not None else None
            else:
                prev = spec.stages[i - 1] if i else None
                down = self._downsample(stage.downsample, prev.dim, stage.dim) if prev is not None else None
            layers.append(Stage(blocks, down, downsample_last=trailing))
        self.layers = nn.ModuleList(layers)
        self.norm = make_norm(spec.macro_norm, spec.dims[-1], layout)
        self.init_head(
            spec.dims[-1],
            num_classes,
            spec.global_pool if global_pool is None else global_pool,
            drop_rate,
            classifier=spec.classifier,
        )
        self.set_feature_info(spec.dims, spec.reductions, [f"layers.{i}" for i in range(n)])
        self.apply(_init_linear)
        if spec.ignore_keys:
            self._register_load_state_dict_pre_hook(self._drop_ignored_keys)

    def _block(self, stage: StageSpec, site: MixerSite, drop_path: float, layout: str) -> nn.Module:
        if stage.mixer not in MIXERS:
            raise ValueError(f"stage {site.stage}: mixer must be one of {sorted(MIXERS)}, got {stage.mixer!r}")
        if stage.block not in BLOCKS:
            raise ValueError(f"stage {site.stage}: block must be one of {sorted(BLOCKS)}, got {stage.block!r}")
        factory = MIXERS[stage.mixer]

        def mixer(channels_last: bool) -> nn.Module:
            try:
                return factory(stage.dim, dataclasses.replace(site, channels_last=channels_last), **stage.mixer_kwargs)
            except (TypeError, ValueError) as e:  # say which stage's mixer options are wrong
                kind = TypeError if isinstance(e, TypeError) else ValueError
                raise kind(
                    f"stage {site.stage}: mixer {stage.mixer!r} with mixer_kwargs={dict(stage.mixer_kwargs)}: {e}"
                ) from e

        return BLOCKS[stage.block](stage, mixer, drop_path=drop_path, layout=layout, **stage.block_kwargs)

    def _downsample(self, kind: str | None, in_dim: int, out_dim: int) -> nn.Module | None:
        return None if kind is None else DOWNSAMPLES[kind](in_dim, out_dim, self.spec.macro_norm)

    def _drop_ignored_keys(self, state_dict: dict, prefix: str, *args: Any) -> None:
        own = set(self.state_dict(keep_vars=True))
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix) :]
            if local.rsplit(".", 1)[-1] in self.spec.ignore_keys and local not in own:
                del state_dict[key]

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding: ``(B, in_chans, H, W)`` to the first stage's map in ``spec.layout``.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            ``(B, C_0, H/p, W/p)``, or ``(B, H/p, W/p, C_0)`` when ``spec.layout`` is ``"NHWC"``, with
            ``C_0 = spec.dims[0]`` and ``p = spec.patch_size`` (sides rounded down).

        Raises:
            ValueError: If ``x`` is not ``(B, in_chans, H, W)`` or is smaller than one patch.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype={x.dtype}")
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if min(x.shape[2:]) < self.spec.patch_size:
            raise ValueError(f"x must be at least {self.spec.patch_size} pixels high and wide, got {tuple(x.shape)}")
        return self.patch_embed(x)


# -- timm registration ----------------------------------------------------------------------------------------------


def create_from_spec(spec: BackboneSpec, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered spec model through timm (``features_only``, ``pretrained_cfg``, ``out_indices``).

    Family entrypoints call this from their ``@register_model`` functions.

    Args:
        spec: The architecture.
        variant: The registered model name.
        pretrained: Load the weights the pretrained config names (a ``file`` in ``pretrained_cfg_overlay``).
        **kwargs: [`SpecBackbone`][zoo.builder.SpecBackbone] arguments and timm's.

    Returns:
        The model, or its feature wrapper.
    """
    return build_backbone(SpecBackbone, variant, pretrained, spec=spec, **kwargs)


def register_backbone(name: str, spec: BackboneSpec, *, paper: str = "", **cfg: Any) -> Callable[..., nn.Module]:
    """Register ``spec`` with timm as ``name``: then ``timm.create_model(name, ...)`` builds it.

    Args:
        name: A Python identifier that timm does not know yet (timm would silently replace its own entry).
        spec: The architecture.
        paper: What the architecture comes from, for the pretrained config.
        **cfg: Other pretrained-config fields (``mean``, ``std``, ``crop_pct``, ...).

    Returns:
        The timm entrypoint.

    Examples:
        >>> import timm
        >>> from zoo.builder import BackboneSpec, register_backbone
        >>> spec = BackboneSpec.pyramid(32, (1, 1, 2, 1), stage=dict(mixer="dwconv"))
        >>> _ = register_backbone("doc_tiny_dwconv_net", spec)
        >>> [f["num_chs"] for f in timm.create_model("doc_tiny_dwconv_net", features_only=True).feature_info]
        [32, 64, 128, 256]
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"spec must be a BackboneSpec, got {type(spec).__name__}")
    if timm.is_model(name):
        raise ValueError(f"timm already has a model named {name!r}; choose another name (e.g. 'uo_{name}')")
    for stage in spec.stages:
        if stage.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {stage.mixer!r}")
        if stage.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {stage.block!r}")

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_from_spec(spec, name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"Backbone {name!r} built from a BackboneSpec."
    default_cfgs.update(
        generate_default_cfgs(
            {name: pretrained_cfg(first_conv="patch_embed.proj", classifier=spec.classifier, paper=paper, **cfg)}
        )
    )
    register_model(entrypoint)
    # register_model lists the entrypoint in this module's __all__, where it is no attribute.
    if name in __all__:
        __all__.remove(name)
    return entrypoint
