"""One residual block definition for every family: named steps, grouped into residual branches.

A MetaFormer block is ``x + DropPath(LS(mixer(norm1(x))))`` then ``x + DropPath(LS(mlp(norm2(x))))``;
a ResNet bottleneck is ``act(conv-bn-act-conv-bn-act-conv-bn(x) + downsample(x))``; an inverted
residual is the same without the final activation, and without the sum when the shape changes.
All are a [`Block`][zoo.blocks.Block] of [`Branch`][zoo.blocks.Branch]es. Each step is registered
under the name the family's official checkpoint uses, so its keys load unchanged, and each step
runs in the layout it reads (see [`infer_layout`][zoo.blocks.layout.infer_layout]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import DropPath
from torch import nn

from zoo.blocks.layout import LAYOUTS, convert_layout, infer_layout

__all__ = ["INLINE", "Block", "Branch"]

INLINE = ""
"""Step name that registers a module's children on the block itself, not under a name of their own.

UniFormer's ``CBlock`` keeps ``conv1``, ``attn``, ``conv2`` beside ``norm1``; with the name
``INLINE`` the [`UniFormerLocalMHRA`][unifiedops.mixers.UniFormerLocalMHRA] preset runs as one step
while its keys sit where the official checkpoint has them.
"""

Steps = Sequence[tuple[str, nn.Module]]


@dataclass
class Branch:
    """One residual branch of a [`Block`][zoo.blocks.Block].

    Computes ``after(shortcut(x) + drop_path(scale * steps(x)))``, or ``steps(x)`` alone without a
    residual.

    Args:
        steps: ``(name, module)`` pairs run in order; the name is the module's key in the state dict
            (or [`INLINE`][zoo.blocks.block.INLINE]).
        residual: Add the branch input (through ``shortcut``, if given) to the output.
        shortcut: ``(name, module)`` applied to the skip path (ResNet's ``downsample``).
        layer_scale: ``(name, init)`` of a learnable per-channel scale, registered as a parameter of
            shape ``(C,)`` (VAN's ``layer_scale_1``, ConvNeXt's ``gamma``).
        drop_path: Stochastic-depth rate of the residual.
        after: Steps applied after the sum (ResNet's last ReLU).
    """

    steps: Steps
    residual: bool = True
    shortcut: tuple[str, nn.Module] | None = None
    layer_scale: tuple[str, float] | None = None
    drop_path: float = 0.0
    after: Steps = field(default_factory=tuple)


class Block(nn.Module):
    """A sequence of residual branches over one stream of feature maps.

    Args:
        branches: The branches, in order.
        dim: Channels of the branch outputs (sizes the layer scales).
        layout: Layout of the stream between branches (``"NCHW"`` or ``"NHWC"``). Steps that read
            the other layout get a permuted view.

    Shape:
        ``(B, C, H, W) -> (B, C', H', W')`` in the stream's layout.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from timm.layers import Mlp
        >>> from unifiedops import DWConv
        >>> from zoo.blocks import Block, Branch
        >>> block = Block(
        ...     Branch([("norm1", nn.BatchNorm2d(32)), ("attn", DWConv(32, 7))], layer_scale=("ls1", 1e-2)),
        ...     Branch([("norm2", nn.LayerNorm(32)), ("mlp", Mlp(32, 128))]),
        ...     dim=32,
        ... )
        >>> sorted({k.split(".")[0] for k in block.state_dict()})
        ['attn', 'ls1', 'mlp', 'norm1', 'norm2']
        >>> block(torch.randn(2, 32, 14, 14)).shape
        torch.Size([2, 32, 14, 14])
    """

    def __init__(self, *branches: Branch, dim: int, layout: str = "NCHW") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not branches:
            raise ValueError("a Block needs at least one Branch")
        self.layout = layout
        self.dim = dim
        # Steps are looked up by name at run time, so replacing a child (`block.attn = other`)
        # takes effect; only inlined modules are held directly, since they have no name.
        self._plan: list[dict] = []
        for index, branch in enumerate(branches):
            if not isinstance(branch, Branch):
                raise TypeError(f"branches must be Branch objects, got {type(branch).__name__}")
            self._plan.append(
                {
                    "steps": [self._register(step) for step in branch.steps],
                    "after": [self._register(step) for step in branch.after],
                    "residual": branch.residual,
                    "shortcut": None if branch.shortcut is None else self._register(branch.shortcut),
                    "scale": self._register_scale(branch.layer_scale, dim),
                    "drop_path": f"drop_path{index + 1}",
                }
            )
            self.add_module(f"drop_path{index + 1}", DropPath(branch.drop_path) if branch.drop_path else nn.Identity())

    def _register(self, step: tuple[str, nn.Module]) -> str | nn.Module:
        name, module = step
        if not isinstance(module, nn.Module):
            raise TypeError(f"step {name!r} must be an nn.Module, got {type(module).__name__}")
        if name != INLINE:
            if hasattr(self, name):
                raise ValueError(f"step name {name!r} is used twice in one block")
            self.add_module(name, module)
            return name
        if any(True for _ in module.named_parameters(recurse=False)) or any(
            True for _ in module.named_buffers(recurse=False)
        ):
            raise ValueError(f"an inlined step must keep its tensors in children; {type(module).__name__} does not")
        for child_name, child in module.named_children():
            self.add_module(child_name, child)
        return module

    def _register_scale(self, spec: tuple[str, float] | None, dim: int) -> str | None:
        if spec is None:
            return None
        name, init = spec
        self.register_parameter(name, nn.Parameter(torch.full((dim,), float(init))))
        return name

    def _run(self, steps: list, x: torch.Tensor, layout: str) -> tuple[torch.Tensor, str]:
        for step in steps:
            module = getattr(self, step) if isinstance(step, str) else step
            wanted = infer_layout(module)
            x = convert_layout(x, layout, wanted)
            layout = wanted or layout
            x = module(x)
        return x, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches in order, each on the previous one's output.

        Args:
            x: A map in the block's ``layout``: ``(B, C, H, W)`` or, channels-last, ``(B, H, W, C)``.

        Returns:
            The output in the same layout, ``(B, C', H', W')`` or ``(B, H', W', C')``: the input's shape
            unless a branch changes it (a ``shortcut`` that downsamples, or a branch without residual).
        """
        for plan in self._plan:
            out, layout = self._run(plan["steps"], x, self.layout)
            out = convert_layout(out, layout, self.layout)
            if plan["scale"] is not None:
                scale = getattr(self, plan["scale"])
                out = out * (scale if self.layout == "NHWC" else scale.view(-1, 1, 1))
            if plan["residual"]:
                skip, skip_layout = self._run([plan["shortcut"]], x, self.layout) if plan["shortcut"] else (x, None)
                out = convert_layout(skip, skip_layout or self.layout, self.layout) + getattr(self, plan["drop_path"])(
                    out
                )
            out, layout = self._run(plan["after"], out, self.layout)
            x = convert_layout(out, layout, self.layout)
        return x
