"""A [`Backbone`][zoo.blocks.Backbone] for networks whose stages are runs of top-level attributes."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.blocks.backbone import Backbone
from zoo.blocks.layout import convert_layout, infer_layout

__all__ = ["FlatBackbone", "drop_path_rates"]


class FlatBackbone(Backbone):
    """A [`Backbone`][zoo.blocks.Backbone] whose stages are runs of top-level attributes.

    Official checkpoints of VAN and UniFormer keep each stage's layers directly on the model
    (``patch_embed2``, ``block2.0``, ``norm2``), not under a ``stages.i`` container. A subclass
    registers those layers under their official names and calls
    [`set_stage_layers`][zoo.blocks.FlatBackbone.set_stage_layers] with the attribute names of each
    stage, in order. A ``ModuleList`` among them is run item by item (and checkpointed item by item
    under ``set_grad_checkpointing``); each layer gets the layout it reads.
    """

    norm_attr = None

    @staticmethod
    def check_stage_args(embed_dims: Sequence[int], **per_stage: Sequence) -> None:
        """Raise a ``ValueError`` unless the per-stage arguments have one entry per stage.

        Args:
            embed_dims: Channels of each stage (positive ints).
            **per_stage: Other per-stage sequences by argument name; ``depths`` must hold positive ints.
        """
        if not embed_dims or any(not isinstance(d, int) or d < 1 for d in embed_dims):
            raise ValueError(f"embed_dims must be positive ints, got {embed_dims!r}")
        for name, values in per_stage.items():
            if len(values) != len(embed_dims):
                raise ValueError(f"{name} must have one entry per stage ({len(embed_dims)}), got {values!r}")
        depths = per_stage.get("depths", ())
        if any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be positive ints, got {depths!r}")

    def set_stage_layers(self, stage_layers: Sequence[Sequence[str]]) -> None:
        """Name the attributes that make up each stage.

        Args:
            stage_layers: For each stage, the attribute names of its layers in execution order.
        """
        for names in stage_layers:
            for name in names:
                if not isinstance(getattr(self, name, None), nn.Module):
                    raise ValueError(f"stage_layers names {name!r}, which is not a module of {type(self).__name__}")
        self.stage_layers = [tuple(names) for names in stage_layers]

    def add_stage(self, layers: Sequence[tuple[str, nn.Module | Sequence[nn.Module]]]) -> None:
        """Register the layers of the next stage under their (official) names.

        Args:
            layers: ``(name, layer)`` pairs in execution order; a sequence of blocks becomes a ``ModuleList``.
        """
        for name, layer in layers:
            self.add_module(name, layer if isinstance(layer, nn.Module) else nn.ModuleList(layer))
        self.set_stage_layers([*getattr(self, "stage_layers", []), [name for name, _ in layers]])

    def finish_stages(
        self, embed_dims: Sequence[int], num_classes: int, global_pool: str, drop_rate: float, feature_layer: int = -1
    ) -> None:
        """Create the head and the feature info once every stage is added (each stage halves the map, from 1/4).

        Args:
            embed_dims: Channels of each stage.
            num_classes: Classes (``0``: no classifier).
            global_pool: Pooling type.
            drop_rate: Dropout before the classifier.
            feature_layer: Index, within each stage's layers, of the layer whose output is the stage's map.
        """
        self.init_head(embed_dims[-1], num_classes, global_pool, drop_rate)
        reductions = [4 * 2**i for i in range(len(embed_dims))]
        self.set_feature_info(embed_dims, reductions, [names[feature_layer] for names in self.stage_layers])

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The identity: the first stage starts with its own patch embedding.

        Args:
            x: Images ``(B, 3, H, W)`` (3 is ``in_chans``).

        Returns:
            ``x`` unchanged.
        """
        return x

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run the layers of stage ``index``, from the previous stage's map to this stage's, in ``output_fmt``.

        Each layer gets the layout it reads; the blocks of a ``ModuleList`` are checkpointed one by one
        under ``set_grad_checkpointing``.

        Args:
            index: Stage index, from 0.
            x: The images ``(B, in_chans, H, W)`` for stage 0, else the previous stage's map
                ``(B, C_{i-1}, H/r_{i-1}, W/r_{i-1})``.

        Returns:
            This stage's map ``(B, C_i, H/r_i, W/r_i)`` (``r_i = 4 * 2**i``), in ``output_fmt``.
        """
        layout = self.output_fmt
        for name in self.stage_layers[index]:
            module = getattr(self, name)
            is_list = isinstance(module, nn.ModuleList)
            for layer in module if is_list else (module,):
                wanted = infer_layout(layer)
                x = convert_layout(x, layout, wanted)
                layout = wanted or layout
                if is_list and self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(layer, x, use_reentrant=False)
                else:
                    x = layer(x)
        return convert_layout(x, layout, self.output_fmt)

    def prune_stages(self, keep: int) -> None:
        """Delete the layers of the stages from ``keep`` on.

        Args:
            keep: Number of stages to keep.
        """
        for names in self.stage_layers[keep:]:
            for name in names:
                delattr(self, name)
        del self.stage_layers[keep:]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Regexes grouping parameters by stage (``coarse``) or by block (for layer-wise learning-rate decay).

        The stem is the first stage's first layer; other layers are grouped by the stage number
        that ends their name (``block3.4`` belongs to stage 3, block 4).

        Args:
            coarse: One group per stage instead of one per block. Grouping by block, the layers of a stage
                that are not blocks (``patch_embed2``, ``norm2``) join the group of its last block.

        Returns:
            timm's matcher dict: ``stem`` and ``blocks`` (a regex, or a list of ``(regex, suffix)``
            pairs when grouping by block).
        """
        names = [name for stage in self.stage_layers for name in stage]
        prefixes = {re.sub(r"\d+$", "", name) for name in names}
        lists = sorted({re.sub(r"\d+$", "", n) for n in names if isinstance(getattr(self, n), nn.ModuleList)})
        others = sorted(prefixes - set(lists))
        stem = rf"^{re.escape(self.stage_layers[0][0])}\b"
        if coarse or not lists:
            return dict(stem=stem, blocks=rf"^(?:{'|'.join(sorted(prefixes))})(\d+)")
        return dict(
            stem=stem,
            blocks=[(rf"^(?:{'|'.join(lists)})(\d+)\.(\d+)", None), (rf"^(?:{'|'.join(others)})(\d+)", (99999,))],
        )


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over all blocks, split by stage.

    Computed in Python rather than with ``torch.linspace`` so that models build on the ``meta``
    device.

    Args:
        rate: The rate of the last block.
        depths: Blocks per stage.

    Returns:
        One list of rates per stage.
    """
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [flat[s : s + d] for s, d in zip(starts, depths, strict=True)]
