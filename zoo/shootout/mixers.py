"""Which mixers a shoot-out compares, and the check that each one fills the backbone's mixer slot."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.blocks.layout import convert_layout, infer_layout
from zoo.builder import MIXERS, BackboneSpec, MixerSite

__all__ = ["DEFAULT_MIXERS", "MixerEntry", "check_slot", "resolve_mixers"]


@dataclass(frozen=True)
class MixerEntry:
    """One contestant: a builder mixer with its options, in all stages or only the late ones.

    Args:
        name: Row label of the report (also the run folder's name).
        mixer: A key of [`MIXERS`][zoo.builder.MIXERS].
        options: The mixer factory's options.
        stages: ``"all"``; ``"late"``: the second half of the stages (``n // 2`` onwards), the others keeping
            the backbone's own mixer (global attention is quadratic in the tokens, so hybrids such as UniFormer
            use it only where the maps are small); or a tuple of stage indices.
    """

    name: str
    mixer: str
    options: Mapping[str, Any] = field(default_factory=dict)
    stages: str | tuple[int, ...] = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("_", "").isalnum():
            raise ValueError(f"name must be letters, digits and underscores, got name={self.name!r}")
        if not isinstance(self.stages, str):
            object.__setattr__(self, "stages", tuple(self.stages))
        elif self.stages not in ("all", "late"):
            raise ValueError(f"stages must be 'all', 'late' or stage indices, got stages={self.stages!r}")

    def stage_indices(self, num_stages: int) -> tuple[int, ...]:
        """The stages this entry puts its mixer in, for a backbone of ``num_stages`` stages.

        Args:
            num_stages: Stages of the backbone.

        Returns:
            Stage indices, ascending.
        """
        if self.stages == "all":
            return tuple(range(num_stages))
        if self.stages == "late":
            return tuple(range(num_stages // 2, num_stages))
        return tuple(sorted(self.stages))

    def apply(self, spec: BackboneSpec) -> BackboneSpec:
        """The backbone with this entry's mixer in its stages.

        Args:
            spec: The backbone (its other stages keep their mixer).

        Returns:
            The new spec.
        """
        return spec.with_mixer(self.mixer, stages=self.stage_indices(len(spec.stages)), **self.options)

    def to_dict(self) -> dict[str, Any]:
        """The entry as a plain dict, for the report.

        Returns:
            ``name``, ``mixer``, ``options`` and ``stages``.
        """
        stages = self.stages if isinstance(self.stages, str) else list(self.stages)
        return {"name": self.name, "mixer": self.mixer, "options": dict(self.options), "stages": stages}


DEFAULT_MIXERS: tuple[MixerEntry, ...] = (
    MixerEntry("dwconv", "dwconv", {"kernel_size": 7}),
    MixerEntry("dynamic_dwconv", "dynamic_dwconv", {"kernel_size": 7}),
    MixerEntry("inhomogeneous_dwconv", "inhomogeneous_dwconv", {"kernel_size": 7, "group_channels": 16}),
    MixerEntry("window_attention", "window_attention", {"window_size": 4, "head_dim": 16}),
    MixerEntry("neighborhood_attention", "neighborhood_attention", {"kernel_size": 3, "head_dim": 16}),
    MixerEntry("global_attention", "global_attention", {"head_dim": 16}, stages="late"),
    MixerEntry("lka", "lka", {"kernel_size": 21, "dilation": 3}),
    MixerEntry("acmix", "acmix", {"kernel_att": 3, "kernel_conv": 3, "num_heads": 4}),
    MixerEntry("kernelwarehouse", "kernelwarehouse", {"kernel_size": 3}),
    MixerEntry("odconv", "odconv", {"kernel_size": 3, "kernel_num": 4}),
    MixerEntry("dcd", "dcd", {"kernel_size": 3}),
)
"""The default contestants: every preset that fills a token-mixer slot of the same width, with options sized
for the shoot-out's small default backbone (32×32 digits: maps of 16, 8 and 4 pixels). ODConv runs with four
candidate kernels (its paper's 4×); KernelWarehouse keeps one warehouse per layer."""


def resolve_mixers(names: Sequence[str | MixerEntry] | None) -> tuple[MixerEntry, ...]:
    """Mixer entries from names (those of [`DEFAULT_MIXERS`][zoo.shootout.DEFAULT_MIXERS], or any registered
    builder mixer with its default options) and entries.

    Args:
        names: Names and entries; ``None`` for [`DEFAULT_MIXERS`][zoo.shootout.DEFAULT_MIXERS].

    Returns:
        The entries, in the order given.

    Raises:
        ValueError: For an unknown name (the message lists the known ones) or a name given twice.
    """
    if names is None:
        return DEFAULT_MIXERS
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"mixers must be a sequence of names or MixerEntry, got {type(names).__name__}")
    if not names:
        raise ValueError("mixers must name at least one mixer")
    defaults = {entry.name: entry for entry in DEFAULT_MIXERS}
    entries = []
    for item in names:
        if isinstance(item, MixerEntry):
            entries.append(item)
        elif isinstance(item, str) and item in defaults:
            entries.append(defaults[item])
        elif isinstance(item, str) and item in MIXERS:
            entries.append(MixerEntry(item, item))
        elif isinstance(item, str):
            known = sorted(set(defaults) | set(MIXERS))
            close = difflib.get_close_matches(item, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"mixers: unknown mixer {item!r}{hint}; known: {', '.join(known)}")
        else:
            raise TypeError(f"mixers must hold names or MixerEntry objects, got {item!r}")
    seen = [e.name for e in entries]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ValueError(f"mixers: each mixer may appear once, got {twice} more than once")
    return tuple(entries)


def check_slot(spec: BackboneSpec, entry: MixerEntry) -> None:
    """Check that ``entry``'s mixer can fill each stage it goes into: it builds at the stage's width and site,
    and maps a map of the stage's size to a map of the same shape.

    Two sites per stage are built (an even and an odd block: Swin-style mixers shift on odd blocks), and each
    runs once on zeros of the stage's reference resolution, in the layout the mixer reads.

    Args:
        spec: The backbone with the slot.
        entry: The contestant.

    Raises:
        ValueError: If the mixer is unknown, its options do not fit a stage, it fails to run, or it changes the
            shape of the map (a dense convolution to another width, say), naming the entry and the stage.
    """
    if entry.mixer not in MIXERS:
        raise ValueError(f"mixer {entry.name!r}: {entry.mixer!r} is not a registered builder mixer")
    stages = entry.stage_indices(len(spec.stages))
    bad = [i for i in stages if not 0 <= i < len(spec.stages)]
    if bad:
        raise ValueError(f"mixer {entry.name!r}: stages {bad} do not exist in a {len(spec.stages)}-stage backbone")
    resolutions = spec.resolutions()
    channels_last = spec.layout == "NHWC"
    for i in stages:
        dim, (h, w) = spec.stages[i].dim, resolutions[i]
        for block in range(min(2, spec.stages[i].depth)):
            where = f"mixer {entry.name!r} in stage {i} (width {dim}, {h}x{w} maps)"
            try:
                module = MIXERS[entry.mixer](dim, MixerSite(i, block, (h, w), channels_last), **entry.options)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where} cannot be built with options {dict(entry.options)}: {e}") from e
            if not isinstance(module, torch.nn.Module):
                raise ValueError(f"{where}: the factory returned {type(module).__name__}, not an nn.Module")
            layout = infer_layout(module) or "NCHW"
            x = convert_layout(torch.zeros(2, dim, h, w), "NCHW", layout)
            try:
                with torch.no_grad():
                    y = module.eval()(x)
            except Exception as e:
                raise ValueError(f"{where} fails on a {tuple(x.shape)} {layout} map: {e}") from e
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(
                    f"{where} maps {tuple(x.shape)} to {got}: the slot needs a token mixer that keeps the "
                    "shape of the map (same width and size)"
                )
