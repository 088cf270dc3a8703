"""Backbones as data: [`StageSpec`][zoo.builder.StageSpec] and [`BackboneSpec`][zoo.builder.BackboneSpec]."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zoo.blocks import (
    LAYOUTS,
)
from zoo.builder.parts import DOWNSAMPLES, MIXERS, NORMS

__all__ = ["BackboneSpec", "StageSpec"]

# -- specs ----------------------------------------------------------------------------------------------------------

_LAYOUT_POSITIONS = ("leading", "trailing")


def _frozen_mapping(name: str, value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {key!r}")
    return types.MappingProxyType(dict(value))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks of width ``dim`` around the mixer ``mixer``.

    Args:
        depth: Number of blocks.
        dim: Channels of the stage.
        mixer: A key of [`MIXERS`][zoo.builder.MIXERS].
        mixer_kwargs: Options of the mixer factory (e.g. ``head_dim``, ``window_size``, ``kernel_size``).
        block: A key of [`BLOCKS`][zoo.builder.BLOCKS]: ``"metaformer"`` (pre-norm mixer and MLP branches);
            families add their own (DWNet's ``"dwnet"``).
        block_kwargs: Options of the block factory (e.g. ``mixer_name`` for the mixer's state-dict name).
        norm: The blocks' norm, a key of [`NORMS`][zoo.builder.NORMS] or ``None``.
        mlp_ratio: Hidden width of the MLP over ``dim``.
        layer_scale: Initial value of per-channel layer scales on both branches (``None``: none).
        downsample: The layer that brings the stream into this stage (a key of
            [`DOWNSAMPLES`][zoo.builder.DOWNSAMPLES], or ``None`` to keep the resolution); ignored for the
            first stage, which the stem feeds. Where it is registered (end of the previous stage, or start of
            this one) is [`BackboneSpec.downsample_position`][zoo.builder.BackboneSpec].
    """

    depth: int
    dim: int
    mixer: str = "window_attention"
    mixer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    block: str = "metaformer"
    block_kwargs: Mapping[str, Any] = field(default_factory=dict)
    norm: str | None = "layernorm"
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    downsample: str | None = "patch_merging"

    def __post_init__(self) -> None:
        _positive_int("depth", self.depth)
        _positive_int("dim", self.dim)
        for name in ("mixer", "block"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        object.__setattr__(self, "mixer_kwargs", _frozen_mapping("mixer_kwargs", self.mixer_kwargs))
        object.__setattr__(self, "block_kwargs", _frozen_mapping("block_kwargs", self.block_kwargs))
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)} or None, got {self.norm!r}")
        if self.downsample is not None and self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {sorted(DOWNSAMPLES)} or None, got {self.downsample!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if self.layer_scale is not None and (
            isinstance(self.layer_scale, bool) or not isinstance(self.layer_scale, (int, float))
        ):
            raise TypeError(f"layer_scale must be None or a number, got {self.layer_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        """The stage as a plain dict (the inverse of ``StageSpec(**d)``).

        Returns:
            One entry per field; ``mixer_kwargs`` and ``block_kwargs`` as new ``dict``s.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["mixer_kwargs"] = dict(self.mixer_kwargs)
        out["block_kwargs"] = dict(self.block_kwargs)
        return out

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # The read-only kwargs views cannot be pickled or deep-copied (timm's ModelEma deep-copies
        # the model, which holds its spec); rebuild the stage from plain dicts instead.
        return _stage_from_dict, (self.to_dict(),)


def _stage_from_dict(fields: dict[str, Any]) -> StageSpec:
    return StageSpec(**fields)


_STAGE_FIELDS = {f.name for f in dataclasses.fields(StageSpec)}


@dataclass(frozen=True)
class BackboneSpec:
    """A hierarchical backbone: patch-embedding stem, stages, final norm, pooled linear classifier.

    Args:
        stages: The stages, in order.
        patch_size: Kernel and stride of the stem convolution ``patch_embed.proj``.
        macro_norm: The norm outside the blocks: after the stem (``patch_embed.norm``), inside patch merging
            and at the end (``norm``); a key of [`NORMS`][zoo.builder.NORMS] or ``None``.
        downsample_position: ``"leading"``: each stage starts with the layer that brings the stream in
            (``layers.{i}.downsample`` for ``i >= 1``, timm's Swin); ``"trailing"``: each stage ends with the
            layer into the next (``i <= n - 2``, the official Swin, DWNet and ACmix code).
        classifier: Dotted name of the classifier ``Linear``: ``"head.fc"`` (timm) or ``"head"`` (official).
        global_pool: Pooling before the classifier (timm's ``SelectAdaptivePool2d`` type).
        drop_path_rate: Stochastic depth, rising linearly over all blocks from 0 to this.
        img_size: Reference input size: the stage resolutions that mixers may adapt to (Swin's window clamp)
            are computed for it. Other sizes still run.
        layout: Layout of the stream between blocks and of ``forward_features``' output.
        ignore_keys: Leaf names of buffers that official checkpoints carry but that this model derives (the
            official ACmix-Swin's ``attn_mask``); ``load_state_dict`` drops them, so those checkpoints load
            with ``strict=True``.
    """

    stages: tuple[StageSpec, ...]
    patch_size: int = 4
    macro_norm: str | None = "layernorm"
    downsample_position: str = "leading"
    classifier: str = "head.fc"
    global_pool: str = "avg"
    drop_path_rate: float = 0.1
    img_size: int | tuple[int, int] = 224
    layout: str = "NHWC"
    ignore_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stages = tuple(self.stages) if isinstance(self.stages, Iterable) else self.stages
        if not isinstance(stages, tuple) or not stages:
            raise ValueError("stages must be a non-empty sequence of StageSpec")
        stages = tuple(StageSpec(**s) if isinstance(s, Mapping) else s for s in stages)
        for s in stages:
            if not isinstance(s, StageSpec):
                raise TypeError(f"stages must hold StageSpec objects or dicts, got {type(s).__name__}")
        object.__setattr__(self, "stages", stages)
        _positive_int("patch_size", self.patch_size)
        if self.macro_norm is not None and self.macro_norm not in NORMS:
            raise ValueError(f"macro_norm must be one of {sorted(NORMS)} or None, got {self.macro_norm!r}")
        if self.downsample_position not in _LAYOUT_POSITIONS:
            raise ValueError(
                f"downsample_position must be one of {_LAYOUT_POSITIONS}, got {self.downsample_position!r}"
            )
        if not isinstance(self.classifier, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", self.classifier):
            raise ValueError(f"classifier must be a dotted attribute name, got {self.classifier!r}")
        if not isinstance(self.drop_path_rate, (int, float)) or not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"img_size must be a positive int or a pair of them, got {self.img_size!r}")
        object.__setattr__(self, "img_size", size)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "ignore_keys", tuple(self.ignore_keys))
        for i, (prev, cur) in enumerate(itertools.pairwise(stages), start=1):
            if cur.downsample is None and cur.dim != prev.dim:
                raise ValueError(f"stage {i} changes the width from {prev.dim} to {cur.dim} but has no downsample")

    # -- construction helpers -----------------------------------------------------------------------------------

    @classmethod
    def pyramid(
        cls, embed_dim: int, depths: Sequence[int], *, stage: Mapping[str, Any] | None = None, **fields: Any
    ) -> BackboneSpec:
        """Stages whose width doubles from ``embed_dim`` (Swin's widths), all alike otherwise.

        Args:
            embed_dim: Width of the first stage.
            depths: Blocks per stage.
            stage: Other [`StageSpec`][zoo.builder.StageSpec] fields, the same for every stage.
            **fields: Other [`BackboneSpec`][zoo.builder.BackboneSpec] fields.

        Returns:
            The spec.
        """
        _positive_int("embed_dim", embed_dim)
        stage = dict(stage or {})
        clash = {"depth", "dim"} & set(stage)
        if clash:
            raise ValueError(f"stage must not set {sorted(clash)}: they come from depths and embed_dim")
        stages = tuple(StageSpec(depth, embed_dim * 2**i, **stage) for i, depth in enumerate(depths))
        return cls(stages, **fields)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> BackboneSpec:
        """A spec from a plain dict (e.g. parsed from YAML or JSON).

        Either ``"stages"``, a list of [`StageSpec`][zoo.builder.StageSpec] field dicts, or ``"depths"`` with
        ``"dims"`` (or ``"embed_dim"``, doubled per stage) and any ``StageSpec`` field at the top level, which
        then applies to every stage. Every other key is a ``BackboneSpec`` field.

        Args:
            config: The dict.

        Returns:
            The spec.

        Examples:
            >>> from zoo.builder import BackboneSpec
            >>> spec = BackboneSpec.from_dict(
            ...     {"depths": [2, 2, 6, 2], "embed_dim": 96, "mixer": "dwconv", "mixer_kwargs": {"kernel_size": 7}}
            ... )
            >>> spec.dims, spec.stages[0].mixer
            ((96, 192, 384, 768), 'dwconv')
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        config = dict(config)
        spec_fields = {f.name for f in dataclasses.fields(cls)}
        shared = {k: config.pop(k) for k in list(config) if k in _STAGE_FIELDS - {"depth", "dim"}}
        if "stages" in config:
            if shared or {"depths", "dims", "embed_dim"} & set(config):
                raise ValueError("give either 'stages' or 'depths' with 'dims'/'embed_dim' and shared stage fields")
            stages = config.pop("stages")
            if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
                raise TypeError("stages must be a list of dicts")
            stages = [dict(s) for s in stages]
        else:
            if "depths" not in config:
                raise ValueError("config needs 'stages', or 'depths' with 'dims' or 'embed_dim'")
            depths = list(config.pop("depths"))
            if ("dims" in config) == ("embed_dim" in config):
                raise ValueError("give exactly one of 'dims' or 'embed_dim' with 'depths'")
            dims = (
                list(config.pop("dims"))
                if "dims" in config
                else [config["embed_dim"] * 2**i for i in range(len(depths))]
            )
            config.pop("embed_dim", None)
            if len(dims) != len(depths):
                raise ValueError(f"dims has {len(dims)} entries, depths {len(depths)}")
            stages = [dict(depth=d, dim=c, **shared) for d, c in zip(depths, dims, strict=True)]
        unknown = set(config) - spec_fields
        if unknown:
            raise ValueError(f"unknown BackboneSpec fields {sorted(unknown)}; known: {sorted(spec_fields)}")
        for s in stages:
            bad = set(s) - _STAGE_FIELDS
            if bad:
                raise ValueError(f"unknown StageSpec fields {sorted(bad)}; known: {sorted(_STAGE_FIELDS)}")
        if "ignore_keys" in config:
            config["ignore_keys"] = tuple(config["ignore_keys"])
        return cls(stages=tuple(StageSpec(**s) for s in stages), **config)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict; ``BackboneSpec.from_dict(spec.to_dict()) == spec``.

        Returns:
            One entry per field, with ``stages`` as a list of [`StageSpec.to_dict`][zoo.builder.StageSpec.to_dict]
            dicts and ``img_size`` and ``ignore_keys`` as lists.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["stages"] = [s.to_dict() for s in self.stages]
        out["img_size"] = list(self.img_size)
        out["ignore_keys"] = list(self.ignore_keys)
        return out

    # -- variations -----------------------------------------------------------------------------------------------

    def with_mixer(self, mixer: str, *, stages: Iterable[int] | None = None, **mixer_kwargs: Any) -> BackboneSpec:
        """The same backbone with another mixer (and its options) in every stage, or in ``stages``.

        Args:
            mixer: A key of [`MIXERS`][zoo.builder.MIXERS].
            stages: Indices of the stages to change (``None``: all).
            **mixer_kwargs: The new mixer's options (they replace the old ones).

        Returns:
            The new spec.
        """
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {mixer!r}")
        picked = set(range(len(self.stages))) if stages is None else set(stages)
        bad = picked - set(range(len(self.stages)))
        if bad:
            raise ValueError(f"stages must be indices below {len(self.stages)}, got {sorted(bad)}")
        new = tuple(
            dataclasses.replace(s, mixer=mixer, mixer_kwargs=mixer_kwargs) if i in picked else s
            for i, s in enumerate(self.stages)
        )
        return dataclasses.replace(self, stages=new)

    def with_stages(self, **changes: Any) -> BackboneSpec:
        """The same backbone with ``StageSpec`` fields changed in every stage.

        Sequence values of ``depth`` or ``dim`` (alias ``depths``, ``dims``) give one entry per stage;
        other values apply to every stage.

        Args:
            **changes: ``StageSpec`` fields.

        Returns:
            The new spec.
        """
        per_stage = {}
        for alias, name in (("depths", "depth"), ("dims", "dim")):
            if alias in changes:
                changes[name] = changes.pop(alias)
            if name in changes and isinstance(changes[name], Sequence):
                values = tuple(changes.pop(name))
                if len(values) != len(self.stages):
                    raise ValueError(f"{name} needs {len(self.stages)} entries, got {len(values)}")
                per_stage[name] = values
        bad = set(changes) - _STAGE_FIELDS
        if bad:
            raise ValueError(f"unknown StageSpec fields {sorted(bad)}")
        new = tuple(
            dataclasses.replace(s, **changes, **{k: v[i] for k, v in per_stage.items()})
            for i, s in enumerate(self.stages)
        )
        return dataclasses.replace(self, stages=new)

    @property
    def depths(self) -> tuple[int, ...]:
        """Blocks per stage."""
        return tuple(s.depth for s in self.stages)

    @property
    def dims(self) -> tuple[int, ...]:
        """Width per stage."""
        return tuple(s.dim for s in self.stages)

    @property
    def reductions(self) -> tuple[int, ...]:
        """Stride of each stage's map relative to the input."""
        out, r = [], self.patch_size
        for i, s in enumerate(self.stages):
            if i and s.downsample is not None:
                r *= 2
            out.append(r)
        return tuple(out)

    def resolutions(self) -> tuple[tuple[int, int], ...]:
        """``(H, W)`` of each stage's map at ``img_size`` (a stride-2 layer rounds up, as padding does).

        Returns:
            One ``(H, W)`` pair per stage: ``img_size // patch_size`` for stage 0, halved (rounded up) at
            each stage that has a ``downsample``.
        """
        h, w = (v // self.patch_size for v in self.img_size)
        out = []
        for i, s in enumerate(self.stages):
            if i and s.downsample is not None:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            out.append((h, w))
        return tuple(out)
