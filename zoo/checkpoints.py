"""Which existing checkpoints load into each zoo model, and how that was checked.

Every family keeps the parameter names of the code it reproduces, so a state dict of that code
loads with ``strict=True``, directly or through one documented converter. This table records, per
family, the source of those state dicts, the converter if any, the largest logit difference
measured in fp32 eval mode, and whether the check runs in the test suite (timm's models, which
the tests can build) or was run once against the official code outside the repository (which
the tests never import). The docs' zoo table is generated from it.

Examples:
    >>> from zoo.checkpoints import checkpoint_sources
    >>> [source.checkpoint for source in checkpoint_sources("swin_tiny")]
    ["timm's swin_tiny_patch4_window7_224"]
    >>> checkpoint_sources("mixformer_b0")[0].converter
    'unifiedops.mixers.convert_paddle_state_dict'
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

__all__ = ["CHECKPOINT_SOURCES", "CheckpointSource", "checkpoint_sources"]


@dataclass(frozen=True)
class CheckpointSource:
    """One source of state dicts that load into a set of zoo models.

    Attributes:
        pattern: Shell-style pattern over zoo model names (``"van_*"``).
        checkpoint: The code or model whose state dicts load (``"official VAN"``).
        converter: Dotted path of the function that converts its keys, or ``None`` when they
            load unchanged.
        max_difference: The largest absolute difference of the logits measured in fp32 eval mode,
            or ``None`` where only the keys and shapes are checked.
        in_ci: Whether the test suite runs the check (``True``) or it was run once against the
            official code outside the repository (``False``).
        condition: What the model must be built with for the keys to match (``"kw=False"``), or
            ``None``.
        note: What the outputs were compared on, where it is less than the full model.
    """

    pattern: str
    checkpoint: str
    converter: str | None
    max_difference: float | None
    in_ci: bool
    condition: str | None = None
    note: str | None = None

    def matches(self, model: str) -> bool:
        """Whether this source applies to a zoo model.

        Args:
            model: A zoo model name.

        Returns:
            ``True`` if ``model`` matches ``pattern``.
        """
        return fnmatch.fnmatchcase(model, self.pattern)

    def describe(self) -> str:
        """A short table cell: source, condition, converter, measured difference and where it was checked.

        Returns:
            Markdown text, e.g. ``"timm's resnet18 (`kw=False`): Δ ≤ 1e-05, CI"``.
        """
        text = self.checkpoint
        if self.condition:
            text += f" (`{self.condition}`)"
        if self.converter:
            text += f" via `{self.converter.rsplit('.', 1)[-1]}`"
        measured = "keys and shapes" if self.max_difference is None else f"Δ ≤ {self.max_difference:.1g}"
        if self.note:
            measured += f" {self.note}"
        return f"{text}: {measured}, {'CI' if self.in_ci else 'once'}"


CHECKPOINT_SOURCES: tuple[CheckpointSource, ...] = (
    CheckpointSource("swin_tiny", "timm's swin_tiny_patch4_window7_224", None, 3e-7, True),
    CheckpointSource(
        "swin_small", "timm's swin_small_patch4_window7_224", None, 1e-5, True, note="at reduced depth (1, 2, 1, 1)"
    ),
    CheckpointSource("swin_base", "timm's swin_base_patch4_window7_224", None, None, True),
    CheckpointSource("acmix_swin_*", "official ACmix (SwinTransformer_acmix)", None, 1.5e-6, False),
    CheckpointSource("*dwnet_*", "official DemystifyLocalViT", None, 1.9e-6, False),
    CheckpointSource("van_*", "official VAN", None, 2.7e-7, False),
    CheckpointSource("acmix_resnet*", "official ACmix (ResNet_ImageNet)", None, 2.8e-7, False),
    CheckpointSource("kw_resnet*", "official KernelWarehouse", None, 1.4e-7, False),
    CheckpointSource("kw_resnet18_*", "timm's resnet18", None, 1e-5, True, "kw=False"),
    CheckpointSource("kw_resnet50_*", "timm's resnet50", None, 1e-5, True, "kw=False", "at 96×96"),
    CheckpointSource(
        "kw_mobilenetv2_*", "official KernelWarehouse", "zoo.kw_mobilenetv2.convert_official_mobilenetv2", 1.9e-6, False
    ),
    CheckpointSource("kw_mobilenetv2_100_*", "timm's mobilenetv2_100", None, 1e-5, True, "kw=False"),
    CheckpointSource("kw_mobilenetv2_050_*", "timm's mobilenetv2_050", None, 1e-5, True, "kw=False"),
    CheckpointSource(
        "kw_convnext_*", "official KernelWarehouse", "zoo.convnext_family.convert_official_convnext", 1.7e-6, False
    ),
    CheckpointSource("od_resnet*", "official ODConv", None, 1.9e-6, False),
    CheckpointSource(
        "od_mobilenetv2_*",
        "official ODConv",
        "zoo.blocks.mobilenetv2_layout.convert_official_mobilenetv2",
        4.8e-7,
        False,
    ),
    CheckpointSource("dcd_resnet*", "official DCD", "zoo.dcd_resnet.convert_official_dcd_resnet", 2.3e-5, False),
    CheckpointSource(
        "dcd_mobilenetv2_*", "official DCD", "zoo.dcd_mobilenetv2.convert_official_dcd_mobilenetv2", 6.7e-6, False
    ),
    CheckpointSource("uo_convnext_tiny", "timm's convnext_tiny", None, 1e-5, True),
    CheckpointSource("uniformer_*", "official UniFormer", None, 5.7e-7, False),
    CheckpointSource(
        "mixformer_*", "official MixFormer (Paddle)", "unifiedops.mixers.convert_paddle_state_dict", 8e-6, False
    ),
)
"""Every source, in table order; a model may have several (official code and timm's model)."""


def checkpoint_sources(model: str) -> list[CheckpointSource]:
    """The checkpoint sources that load into a zoo model.

    Args:
        model: A zoo model name.

    Returns:
        The matching entries of [`CHECKPOINT_SOURCES`][zoo.checkpoints.CHECKPOINT_SOURCES], in
        table order (empty when none is known).
    """
    return [source for source in CHECKPOINT_SOURCES if source.matches(model)]
