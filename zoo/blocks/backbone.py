"""timm's model interface, written once for every zoo family.

A family describes its network as a stem, a number of stages and a final norm, under its
official parameter names; [`Backbone`][zoo.blocks.Backbone] supplies ``forward_features``,
``forward_head``, ``forward_intermediates`` (and so ``features_only``), ``prune_intermediate_layers``,
``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher`` and ``no_weight_decay``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from torch import nn

from zoo.blocks.layout import LAYOUTS, convert_layout
from zoo.blocks.stage import Stage

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class of the zoo's models: stem, stages, final norm, pooled classifier.

    Subclasses build their layers, then call [`init_head`][zoo.blocks.Backbone.init_head] and
    [`set_feature_info`][zoo.blocks.Backbone.set_feature_info]. They override
    ``forward_stem``, and either keep their stages in a ``ModuleList`` of
    [`Stage`][zoo.blocks.Stage] named by ``stage_attr`` or override ``forward_stage``;
    ``forward_norm`` applies the module at ``norm_attr`` if there is one.

    The methods below are timm's model interface; they are documented here once, with the shapes
    every family follows. Stage ``i`` (from 0) has ``C_i = feature_info[i]["num_chs"]`` channels at
    stride ``r_i = feature_info[i]["reduction"]`` (4, 8, 16, 32 in every zoo family), so its map is
    ``(B, C_i, H/r_i, W/r_i)`` (rounded up where a layer pads), or ``(B, H/r_i, W/r_i, C_i)`` when
    ``output_fmt`` is ``"NHWC"``.

    Shape:
        ``forward``: ``(B, in_chans, H, W) -> (B, num_classes)``, or the pooled features
        ``(B, head_hidden_size)`` when ``num_classes=0``.

    Attributes:
        output_fmt: Layout of the map ``forward_features`` returns (``"NCHW"``, or ``"NHWC"`` for
            Swin-style models).
        stage_attr: Name of the ``ModuleList`` of stages used by the default ``forward_stage``.
        norm_attr: Name of the final norm applied to the last stage's map (``None``: none).
        no_weight_decay_keys: Parameter leaf names excluded from weight decay.
    """

    output_fmt: str = "NCHW"
    stage_attr: str = "stages"
    norm_attr: str | None = "norm"
    no_weight_decay_keys: tuple[str, ...] = ()

    # -- set-up helpers -------------------------------------------------------------------------

    def init_head(
        self,
        num_features: int,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        *,
        classifier: str = "head",
        head_norm: nn.Module | None = None,
        head_norm_name: str = "head.norm",
    ) -> None:
        """Create pooling, dropout and the classifier ``Linear`` under the official name.

        Args:
            num_features: Channels of the final map.
            num_classes: Classes (``0``: no classifier, ``forward`` returns pooled features).
            global_pool: Pooling type of ``timm.layers.SelectAdaptivePool2d`` (``""``: none).
            drop_rate: Dropout before the classifier.
            classifier: Dotted attribute name of the classifier (``"head"``, ``"head.fc"``, ``"fc"``).
            head_norm: A norm applied to the pooled features (ConvNeXt's ``head.norm``).
            head_norm_name: Dotted attribute name of ``head_norm``.
        """
        if self.output_fmt not in LAYOUTS:
            raise ValueError(f"output_fmt must be one of {LAYOUTS}, got {self.output_fmt!r}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.classifier_name = classifier
        self.head_norm_name = head_norm_name if head_norm is not None else None
        self.head_drop = nn.Dropout(drop_rate)
        self.global_pool = self._pool(global_pool)
        if head_norm is not None:
            self._set_path(head_norm_name, head_norm)
        self._set_path(classifier, self._linear(num_features, num_classes))
        self.grad_checkpointing = False

    def set_feature_info(self, channels: Sequence[int], reductions: Sequence[int], modules: Sequence[str]) -> None:
        """Record each stage's output for ``features_only`` and necks.

        Args:
            channels: Channels of each stage's map.
            reductions: Stride of each stage's map relative to the input.
            modules: Name of the module that produces it.
        """
        if not len(channels) == len(reductions) == len(modules):
            raise ValueError("channels, reductions and modules must have one entry per stage")
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(channels, reductions, modules, strict=True)
        ]
        self.num_stages = self._active_stages = len(channels)

    def _pool(self, pool_type: str) -> nn.Module:
        # Without pooling the map keeps its shape, as in timm's heads.
        return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type), input_fmt=self.output_fmt)

    @staticmethod
    def _linear(num_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _set_path(self, dotted: str, module: nn.Module) -> None:
        *parents, leaf = dotted.split(".")
        owner: nn.Module = self
        for name in parents:
            if not hasattr(owner, name):
                owner.add_module(name, nn.Module())
            owner = getattr(owner, name)
        owner.add_module(leaf, module)

    # -- family hooks ---------------------------------------------------------------------------

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Image to the first stage's input; every family overrides it.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The input of stage 0 in ``output_fmt``: usually the patch-embedded map ``(B, C_0, H/4, W/4)``
            (``(B, H/4, W/4, C_0)`` for ``"NHWC"``); a family whose first stage embeds its own patches
            returns ``x`` unchanged.

        Raises:
            NotImplementedError: On the base class.
        """
        raise NotImplementedError

    def stage_modules(self) -> Sequence[nn.Module]:
        """The stage modules the default ``forward_stage`` runs.

        Returns:
            The module named by ``stage_attr`` (a ``ModuleList`` of [`Stage`][zoo.blocks.Stage]s), one
            entry per stage.
        """
        return getattr(self, self.stage_attr)

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``index``: from the previous stage's feature map to this stage's.

        A stage whose downsampling runs after its blocks (``downsample_last``) has its feature map
        before that layer; the layer then runs at the start of the next stage's ``forward_stage``.

        Args:
            index: Stage index, from 0.
            x: The previous stage's feature map ``(B, C_{i-1}, H/r_{i-1}, W/r_{i-1})`` (the stem's output
                for stage 0), in ``output_fmt``.

        Returns:
            This stage's feature map ``(B, C_i, H/r_i, W/r_i)``, in ``output_fmt``.
        """
        stages = self.stage_modules()
        layout = self.output_fmt
        if index > 0 and isinstance(stages[index - 1], Stage):
            x = convert_layout(x, layout, stages[index - 1].layout)
            layout = stages[index - 1].layout
            x = stages[index - 1].forward_tail(x)
        stage = stages[index]
        if isinstance(stage, Stage):
            x = convert_layout(x, layout, stage.layout)
            layout = stage.layout
            x = stage.forward_body(x)
        else:
            x = stage(x)
        return convert_layout(x, layout, self.output_fmt)

    def prune_stages(self, keep: int) -> None:
        """Remove every layer after the feature map of stage ``keep - 1`` (override for flat layouts).

        Args:
            keep: Number of stages to keep.
        """
        stages = self.stage_modules()
        if isinstance(stages, nn.ModuleList):
            del stages[keep:]
            last = stages[keep - 1]
            if isinstance(last, Stage) and last.downsample_last:
                last.downsample = nn.Identity()

    def forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm (the module at ``norm_attr``) on the last stage's map.

        Args:
            x: The last stage's map ``(B, C_last, H/32, W/32)``, in ``output_fmt``.

        Returns:
            The normalised map, same shape and layout (``x`` itself when there is no final norm).
        """
        norm = getattr(self, self.norm_attr) if self.norm_attr else None
        return x if norm is None else norm(x)

    # -- timm interface -------------------------------------------------------------------------

    def get_classifier(self) -> nn.Module:
        """The classifier layer.

        Returns:
            The module at ``classifier_name``: a ``Linear`` from ``head_hidden_size`` to ``num_classes``,
            or ``nn.Identity`` when ``num_classes=0``.
        """
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """Replace the classifier (``num_classes=0`` removes it) and optionally the pooling.

        Args:
            num_classes: New number of classes.
            global_pool: New pooling type (``None``: unchanged).
            reset_other: Also drop the head norm (used when pruning).
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._pool(global_pool)
        if reset_other and self.head_norm_name is not None:
            self._set_path(self.head_norm_name, nn.Identity())
        # The classifier reads the pooled head features, wider than the map where a family projects first.
        self._set_path(self.classifier_name, self._linear(self.head_hidden_size, num_classes))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations.

        Args:
            enable: Turn checkpointing on (``True``) or off.
        """
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, Stage):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Regexes grouping parameters into stem and stages (for layer-wise learning-rate decay).

        timm's ``group_parameters`` orders the groups by the numbers the regexes capture, so every
        capture is a number: ``(stage,)`` with ``coarse``, else ``(stage, block)``, with a stage's
        downsampling first and the final norm last. Parameters no regex matches (a KernelWarehouse
        model's shared cells, the head) form the last group.

        Args:
            coarse: Group by stage rather than by block.

        Returns:
            timm's matcher dict: ``stem``, a regex over the stem's top-level names, and ``blocks``,
            a regex (``coarse``) or a list of ``(regex, fixed order)`` pairs.
        """
        names = [name for name, _ in self.named_children()]
        stem = [n for n in names if n.startswith(("stem", "patch_embed", "conv1", "bn1", "conv_stem"))]
        stage = re.escape(self.stage_attr)
        if coarse:
            blocks: str | list = rf"^{stage}\.(\d+)"
        else:
            blocks = [
                (rf"^{stage}\.(\d+)\.downsample", (0,)),
                (rf"^{stage}\.(\d+)\.(?:blocks\.)?(\d+)", None),
                (r"^(?:norm|conv_head|bn2|last_proj)", (99999,)),
            ]
        return dict(stem=r"^(?:" + "|".join(stem) + r")" if stem else r"^stem", blocks=blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay.

        Returns:
            The full names of the parameters whose last component is in ``no_weight_decay_keys``.
        """
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in self.no_weight_decay_keys}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and final norm; the unpooled map in ``output_fmt``.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            The final map ``(B, num_features, H/32, W/32)``, or ``(B, H/32, W/32, num_features)`` when
            ``output_fmt`` is ``"NHWC"`` (after ``prune_intermediate_layers``, the last kept stage's).
        """
        x = self.forward_stem(x)
        for index in range(self._active_stages):
            x = self.forward_stage(index, x)
        return self.forward_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, head norm, dropout and classifier.

        Args:
            x: The output of ``forward_features``, ``(B, num_features, h, w)`` or ``(B, h, w, num_features)``
                as ``output_fmt`` says.
            pre_logits: Return the features before the classifier.

        Returns:
            Logits ``(B, num_classes)``, or with ``pre_logits`` the pooled features ``(B, head_hidden_size)``.
            With ``global_pool=""`` nothing is pooled and the map keeps its spatial dimensions.
        """
        x = self.global_pool(x)
        if self.head_norm_name is not None:
            norm = self.get_submodule(self.head_norm_name)
            x = (
                norm(x)
                if x.ndim == 2
                else convert_layout(norm(convert_layout(x, self.output_fmt, "NHWC")), "NHWC", self.output_fmt)
            )
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images: ``forward_head(forward_features(x))``.

        Args:
            x: Images ``(B, in_chans, H, W)``.

        Returns:
            Logits ``(B, num_classes)`` (the pooled features ``(B, head_hidden_size)`` when ``num_classes=0``).
        """
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage feature maps, and optionally the final features (timm's API).

        Args:
            x: Images ``(B, 3, H, W)``.
            indices: Stages to return: ``None`` all, an int the last ``n``, or a sequence of indices.
            norm: Apply the final norm to the last stage's map.
            stop_early: Stop after the last requested stage.
            output_fmt: Layout of the returned maps, ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return only the list of maps.

        Returns:
            The list of maps ``(B, C_i, H/r_i, W/r_i)`` (``(B, H/r_i, W/r_i, C_i)`` for ``"NHWC"``), or
            ``(final features, maps)``: the map of the last stage run, through the final norm when that is
            the last stage (then it equals ``forward_features(x)``).
        """
        if output_fmt not in LAYOUTS:
            raise ValueError(f"output_fmt must be one of {LAYOUTS}, got {output_fmt!r}")
        take, max_index = feature_take_indices(self._active_stages, indices)
        last = self._active_stages - 1
        stop = max_index if stop_early or intermediates_only else last
        intermediates = []
        x = self.forward_stem(x)
        for index in range(stop + 1):
            x = self.forward_stage(index, x)
            if index in take:
                feature = self.forward_norm(x) if norm and index == last else x
                intermediates.append(convert_layout(feature, self.output_fmt, output_fmt))
        if intermediates_only:
            return intermediates
        if stop == last:
            x = self.forward_norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one, and the norm and head as asked.

        Args:
            indices: Stages to keep features of.
            prune_norm: Remove the final norm.
            prune_head: Remove the classifier.

        Returns:
            The absolute indices of the stages whose maps ``forward_intermediates`` returns.
        """
        take, max_index = feature_take_indices(self._active_stages, indices)
        prune_end = max_index < self._active_stages - 1
        self._active_stages = max_index + 1
        if prune_end:
            self.prune_stages(self._active_stages)
        if (prune_norm or prune_end) and self.norm_attr is not None:
            setattr(self, self.norm_attr, nn.Identity())
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return take
