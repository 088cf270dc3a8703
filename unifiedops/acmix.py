"""ACmix: self-attention and convolution computed from one set of ``q, k, v`` projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022 (arXiv 2111.14556).
Both halves of the operator are aggregations, and they share their first stage, the 1x1
projections of the input:

* the attention half aggregates the values ``v`` with per-position weights from ``q . k``
  (the [`Aggregation`][unifiedops.Aggregation] these classes are);
* the convolution half mixes the ``3 * heads`` projected maps at each channel index into ``k*k``
  maps (``fc``, a 1x1 conv) and aggregates those with a static grouped ``k x k`` kernel
  (``dep_conv``, itself an ``Aggregation`` with a [`DenseKernel`][unifiedops.DenseKernel]),
  initialised to the ``k*k`` shifts, so that it starts as the paper's sum of shifted feature maps.

The output is ``rate1 * attention + rate2 * convolution``. Two forms exist, as in the official code:

| class | attention | projections | official module |
|---|---|---|---|
| ``ACmix`` | sliding, reflect border, stride, coordinates | ``conv1/2/3`` | ``ACmix`` (ResNet) |
| ``ACmixWindowAttention`` | Swin's windows, relative bias, ``proj`` | ``qkv`` | ``WindowAttention_acmix`` |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unifiedops._checks import check_divisible, check_input, check_int
from unifiedops.aggregation import Aggregation
from unifiedops.instances import _check_window_args
from unifiedops.neighbourhoods import Sliding, Window
from unifiedops.weights import DenseKernel, QKAttention

__all__ = ["ACmix", "ACmixWindowAttention", "shift_kernel"]


def shift_kernel(out_channels: int, kernel_size: int) -> torch.Tensor:
    """The shift initialisation of ACmix's ``dep_conv``: input slice ``i`` of every group is one-hot
    at kernel position ``(i // k, i % k)``, so the grouped conv sums the ``k*k`` inputs of a group,
    each shifted by its own tap.

    Args:
        out_channels: Output channels ``O`` of the grouped conv.
        kernel_size: Kernel size ``k``.

    Returns:
        The weight, ``(O, k*k, k, k)``.

    Examples:
        >>> from unifiedops.acmix import shift_kernel
        >>> shift_kernel(2, 3)[0, 5]
        tensor([[0., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """
    taps = kernel_size * kernel_size
    kernel = torch.eye(taps).view(taps, kernel_size, kernel_size)
    return kernel.expand(out_channels, -1, -1, -1).clone()


def _check_odd(name: str, value: object) -> int:
    check_int(name, value, minimum=1)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd, got {name}={value}")
    return value


class _ConvBranch:
    """The convolution half shared by both forms, and a ``path`` that covers it too.

    Setting ``path`` selects the attention's path; ``dep_conv`` follows, so ``path="reference"``
    computes both halves literally.
    """

    source: QKAttention

    def _build_conv_branch(self, kernel_conv: int, stride: int, fc_bias: bool) -> None:
        heads, head_dim, out = self.source.heads, self.source.head_dim, self.source.out_channels
        taps = kernel_conv * kernel_conv
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        self.fc = nn.Conv2d(3 * heads, taps, 1, bias=fc_bias)
        self.dep_conv = Aggregation(
            Sliding(kernel_conv, stride=stride),
            DenseKernel(taps * head_dim, out, groups=head_dim, bias=False),
        )
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift_kernel(out, kernel_conv))
        self.path = self.path  # now that dep_conv exists, align its path with the attention's

    @property
    def path(self) -> str:
        """The attention's execution path; ``dep_conv`` runs ``"reference"`` with it, else ``"conv"``."""
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        Aggregation.path.fset(self, value)
        if "dep_conv" in self._modules:
            self.dep_conv.path = "reference" if self._path == "reference" else "auto"

    def conv_branch(self, qkv: torch.Tensor) -> torch.Tensor:
        """The convolution half on projections ``qkv`` ``(3, B, H, W, heads, head_dim)``.

        ``fc`` mixes the ``3 * heads`` maps that share a channel index ``d`` (the official stack of
        ``q, k, v`` viewed as ``(B, 3 * heads, head_dim, H * W)``); its ``k*k`` outputs become channels
        ``d * k*k + tap`` of ``dep_conv``'s input, whose ``head_dim`` groups each read one ``d``.

        Args:
            qkv: The projections.

        Returns:
            ``(B, O, Ho, Wo)``.
        """
        t, b, h, w, g, d = qkv.shape
        stack = qkv.permute(1, 2, 3, 5, 0, 4).reshape(b, h, w, d, t * g)
        mixed = F.linear(stack, self.fc.weight.flatten(1), self.fc.bias)  # (B, H, W, D, k*k)
        return self.dep_conv(mixed.flatten(3).permute(0, 3, 1, 2))

    def _mix(self, attention: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        return self.rate1 * attention + self.rate2 * conv


class ACmix(_ConvBranch, Aggregation):
    """ACmix, ResNet form: sliding-window self-attention plus a shift convolution, both computed
    from the same 1x1 projections.

    From Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022
    (arXiv 2111.14556); the official ``ACmix`` module replaces the 3x3 conv of a ResNet bottleneck.

    * ``q, k, v`` = ``conv1``, ``conv2``, ``conv3`` (1x1, ``in_planes -> out_planes``, with bias),
      in ``head`` heads of ``head_dim = out_planes / head`` channels.
    * **Attention** (this ``Aggregation``): on the axes, sparsity ``Sliding(kernel_att,
      border="reflect", stride)`` (keys and values reflection-padded, queries subsampled by the
      stride), sharing per head (``head_dim`` channels share a weight), dynamism per position from
      ``q . k``. Logit ``s * q_i . (k_j + pe_i - pe_j)`` with ``s = head_dim^-0.5`` and
      ``pe = conv_p(grid)``, a 1x1 conv (``2 -> head_dim``) of the ``linspace(-1, 1)`` coordinate grid
      (``x`` first) reflection-padded like the keys; softmax over the ``kernel_att^2`` neighbours.
    * **Convolution**: ``fc`` (1x1, ``3 * head -> kernel_conv^2``, no bias) mixes the ``3 * head``
      unscaled projections at each channel index; ``dep_conv`` aggregates the result with a static
      kernel: sparsity ``Sliding(kernel_conv, stride)`` with zero padding, sharing over positions
      and samples, grouped dense (``kernel_conv^2 * head_dim -> out_planes``, ``groups=head_dim``, no
      bias), initialised to the shifts of [`shift_kernel`][unifiedops.acmix.shift_kernel] and trainable.
    * Output ``rate1 * attention + rate2 * convolution``; ``rate1 = rate2 = 0.5`` initially.

    The ``state_dict`` keys are the official ones: ``rate1``, ``rate2``, ``conv1``, ``conv2``, ``conv3``,
    ``conv_p``, ``fc``, ``dep_conv.weight``. The attention runs on the ``halo_sdpa`` path (fused
    attention over query tiles and key blocks) instead of the official unfold, which gathers
    ``kernel_att^2`` copies of the keys and values.

    Differences from the official code, all where it fails:

    * ``dilation`` must be 1. The official module uses it only in the reflection padding, not in
      the unfold, so any other value raises a shape error there.
    * ``dep_conv`` pads by ``kernel_conv // 2``; the official pads by 1 whatever the kernel, which
      only works for ``kernel_conv = 3`` (the only value the official ResNet uses).
    * With a stride the output is ``ceil(H / stride) x ceil(W / stride)``; the official computes
      ``H // stride`` and fails on odd sizes.

    Args:
        in_planes: Input channels ``C``.
        out_planes: Output channels ``O`` (also the width of ``q, k, v``).
        kernel_att: Odd attention window ``k_att``.
        head: Number of heads; must divide ``out_planes``.
        kernel_conv: Odd kernel size ``k_conv`` of the convolution half.
        stride: Stride of both halves.
        dilation: Must be 1 (see above).
        path: Execution path of the attention (``"auto"`` is ``"halo_sdpa"``; ``"reference"`` also
            runs ``dep_conv`` literally).

    Shape:
        ``(B, C, H, W) -> (B, O, ceil(H / stride), ceil(W / stride))``; ``H`` and ``W`` must exceed
        ``kernel_att // 2`` (reflection padding).

    Examples:
        >>> import torch
        >>> from unifiedops.acmix import ACmix
        >>> m = ACmix(64, 64, kernel_att=7, head=4, kernel_conv=3, stride=2)
        >>> m(torch.randn(2, 64, 15, 16)).shape
        torch.Size([2, 64, 8, 8])
        >>> sorted(m.state_dict())  # doctest: +NORMALIZE_WHITESPACE
        ['conv1.bias', 'conv1.weight', 'conv2.bias', 'conv2.weight', 'conv3.bias', 'conv3.weight',
         'conv_p.bias', 'conv_p.weight', 'dep_conv.weight', 'fc.weight', 'rate1', 'rate2']
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        path: str = "auto",
    ) -> None:
        check_int("in_planes", in_planes, minimum=1)
        check_int("out_planes", out_planes, minimum=1)
        check_int("head", head, minimum=1)
        check_divisible("out_planes", out_planes, "head", head)
        _check_odd("kernel_att", kernel_att)
        _check_odd("kernel_conv", kernel_conv)
        check_int("stride", stride, minimum=1)
        check_int("dilation", dilation, minimum=1)
        if dilation != 1:
            raise ValueError(
                f"dilation must be 1, got dilation={dilation}: the official ACmix dilates only the "
                "reflection padding, not the attention window, and fails for any other value"
            )
        super().__init__(
            Sliding(kernel_att, border="reflect", stride=stride),
            QKAttention(
                in_planes,
                heads=head,
                value_channels=out_planes,
                projection="conv",
                out_proj=False,
                coord_pos_embed=True,
            ),
            path=path,
        )
        self._build_conv_branch(kernel_conv, stride, fc_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention and convolution of ``x``, mixed.

        Args:
            x: ``(B, C, H, W)``.

        Returns:
            ``(B, O, ceil(H / stride), ceil(W / stride))``.
        """
        check_input(x, self.source.channels, False)
        pad = self.neighbourhood.kernel_size // 2
        if min(x.shape[2:]) <= pad:
            raise ValueError(
                f"ACmix(kernel_att={self.neighbourhood.kernel_size}) reflection-pads keys and values by {pad}, "
                f"which needs H and W larger than {pad}; got an input of {x.shape[2]}x{x.shape[3]}"
            )
        qkv = self.source.project(self, x.permute(0, 2, 3, 1))
        return self._mix(self._run(self, x, projected=qkv), self.conv_branch(qkv))


class ACmixWindowAttention(_ConvBranch, Aggregation):
    """ACmix, Swin form: Swin's (shifted) window attention plus a 3x3 shift convolution of the same
    ``q, k, v``.

    From Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022
    (arXiv 2111.14556); the official ``WindowAttention_acmix`` replaces the attention of every
    Swin block.

    * ``qkv`` (``Linear(C, 3C)``) projects the whole map.
    * **Attention** (this ``Aggregation``): sparsity ``Window(window_size, shift_size)`` (Swin's
      cyclic shift and mask), sharing per head, dynamism per position from ``q . k`` plus the
      relative-position bias table, then ``proj``; exactly [`WindowAttention`][unifiedops.WindowAttention].
    * **Convolution**: ``fc`` (1x1, ``3 * num_heads -> 9``, with bias) mixes the projections at each
      channel index; ``dep_conv`` (3x3 zero-padded, ``9 * head_dim -> C``, ``groups=head_dim``, no bias,
      shift-initialised, trainable) aggregates them: sparsity ``Sliding(3)``, static, shared over
      positions and samples. It skips ``proj``.
    * Output ``rate1 * proj(attention) + rate2 * convolution``; ``rate1 = rate2 = 0.5`` initially.

    The official block calls its attention on the rolled map, so the convolution half runs there
    too: with ``shift_size > 0`` its 3x3 taps reach across the roll seam (from the bottom rows to the
    top rows and from the right columns to the left), and the zero padding of the conv sits at the
    edges of the rolled map, not the image. This module takes the unrolled map and reproduces that:
    it rolls the projections by ``-shift_size``, runs the convolution half, and rolls back. When
    ``H`` or ``W`` is not a multiple of the window it pads the map at the bottom and right before
    rolling (Swin's detection order, as [`WindowAttention`][unifiedops.WindowAttention] does), so
    both halves see the padded positions, then crops. (The official block also shrinks the window
    to the input and drops the shift when the input is not larger than the window; that is the
    block's choice, left to the caller, as for [`WindowAttention`][unifiedops.WindowAttention].)

    The ``state_dict`` keys are the official ones: ``relative_position_bias_table``,
    ``relative_position_index`` (a buffer kept only so official checkpoints load with
    ``strict=True``; the paths build the same index themselves), ``rate1``, ``rate2``, ``qkv``,
    ``proj``, ``fc``, ``dep_conv.weight``.

    Args:
        dim: Channels ``C``.
        num_heads: Number of heads; must divide ``dim``.
        window_size: Window size ``w``.
        shift_size: Cyclic shift, ``0 <= shift_size < window_size``.
        qkv_bias: Whether the ``qkv`` projection has a bias.
        channels_last: Take and return ``(B, H, W, C)`` (the official layout) instead of ``(B, C, H, W)``.
        path: Execution path of the attention (``"auto"`` is ``"window_sdpa"``; ``"reference"`` also
            runs ``dep_conv`` literally).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, or ``(B, H, W, C) -> (B, H, W, C)`` with ``channels_last``.

    Examples:
        >>> import torch
        >>> from unifiedops.acmix import ACmixWindowAttention
        >>> m = ACmixWindowAttention(96, num_heads=3, window_size=7, shift_size=3, channels_last=True)
        >>> m(torch.randn(2, 56, 56, 96)).shape
        torch.Size([2, 56, 56, 96])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        qkv_bias: bool = True,
        *,
        channels_last: bool = False,
        path: str = "auto",
    ) -> None:
        _check_window_args(dim, num_heads, window_size, shift_size, qkv_bias)
        super().__init__(
            Window(window_size, shift_size),
            QKAttention(dim, heads=num_heads, qkv_bias=qkv_bias, rel_pos_bias=True),
            path=path,
            channels_last=channels_last,
        )
        r = torch.arange(window_size)
        rel = r[:, None] - r[None, :] + window_size - 1  # query minus key, from 0
        index = rel[:, None, :, None] * (2 * window_size - 1) + rel[None, :, None, :]
        self.register_buffer("relative_position_index", index.reshape(window_size**2, window_size**2))
        self._build_conv_branch(3, 1, fc_bias=True)

    def rolled_conv_branch(self, qkv: torch.Tensor) -> torch.Tensor:
        """The convolution half as the official block computes it: on the padded and rolled map.

        Args:
            qkv: Projections of the unpadded, unrolled input, ``(3, B, H, W, heads, head_dim)``.

        Returns:
            ``(B, C, H, W)``.
        """
        nb = self.neighbourhood
        h, w, s = qkv.shape[2], qkv.shape[3], nb.shift
        hp, wp = nb.padded_length(h), nb.padded_length(w)
        qkv = self.source.pad_projected(self, qkv, (0, wp - w, 0, hp - h), "constant")
        if s:
            qkv = torch.roll(qkv, (-s, -s), (2, 3))
        y = self.conv_branch(qkv)
        if s:
            y = torch.roll(y, (s, s), (2, 3))
        return y[:, :, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention and convolution of ``x``, mixed.

        Args:
            x: ``(B, C, H, W)``, or ``(B, H, W, C)`` with ``channels_last``.

        Returns:
            The same shape as ``x``.
        """
        check_input(x, self.source.channels, self.channels_last)
        nhwc = x if self.channels_last else x.permute(0, 2, 3, 1)
        qkv = self.source.project(self, nhwc)
        y = self._mix(self._run(self, nhwc.permute(0, 3, 1, 2), projected=qkv), self.rolled_conv_branch(qkv))
        return y.permute(0, 2, 3, 1) if self.channels_last else y
