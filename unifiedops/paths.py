"""Execution paths: ways to compute one aggregation, all equal to the reference path.

The reference path evaluates ``y_i = sum_j w_ij * x_j`` literally: gather every neighbour, multiply,
sum. The fast paths compute the same thing with the kernels PyTorch already has. Which fast path
applies follows from the neighbourhood and the weight source:

| path | neighbourhood | weights (``dynamism``) | computes with |
|---|---|---|---|
| ``conv`` | Sliding (zeros, reflect, mask), Point | static kernels | ``F.conv2d`` |
| ``decomposed`` | Sliding (zeros), Point | static + low-rank per-sample (DCD) | ``F.conv2d``, rank-``L`` ``1 x 1``s |
| ``batched_conv`` | Sliding (zeros, reflect, mask), Point | per-sample kernels | one ``F.conv2d(groups=B*groups)``¹ |
| ``shifted_sum`` | Sliding (zeros, reflect, mask), Point | per-position kernels | ``k*k`` shifted multiply-adds |
| ``window_sdpa`` | Window | q.k attention | SDPA over windows |
| ``halo_sdpa`` | Sliding (any border; stride or dilation) | q.k attention | SDPA over query tiles and key blocks |
| ``global_sdpa`` | Global | q.k attention | SDPA |

¹ On the CPU, kernels that mix channels run as one ``F.conv2d`` per sample instead, which oneDNN
runs faster than one grouped call.

Every path takes and returns ``(B, C, H, W)`` tensors of any memory format. The attention paths
and the reference path also take the ``q, k, v`` projections of the input when a composite
operator has already computed them (ACmix shares them with its convolution branch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from unifiedops._cache import cached_tables
from unifiedops.neighbourhoods import Axis, Global, Neighbourhood, Point, Sliding, Window, layout
from unifiedops.weights import ConvKernelSource, DecomposedKernelSource, QKAttention, WeightSource

if TYPE_CHECKING:
    from unifiedops.aggregation import Aggregation

__all__ = ["PATHS", "Path", "applicable_paths", "select_path"]


@dataclass(frozen=True)
class Path:
    """One way to execute an aggregation.

    Attributes:
        name: The name callers pass as ``path=``.
        applies: Whether the path can compute a given (neighbourhood, weight source).
        run: ``run(module, x) -> y`` on ``(B, C, H, W)`` tensors; the attention and reference
            paths also accept ``projected=`` ``(3, B, H, W, heads, head_dim)``.
    """

    name: str
    applies: Callable[[Neighbourhood, WeightSource], bool]
    run: Callable[[Aggregation, torch.Tensor], torch.Tensor]


# --- reference ---------------------------------------------------------------------------------


def _run_reference(module: Aggregation, x: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    source = module.source
    b = x.shape[0]
    lay = layout(module.neighbourhood, *x.shape[2:], x.device)
    padded = F.pad(x, lay.pad, mode=lay.pad_mode) if any(lay.pad) else x
    extra = {} if projected is None else {"projected": projected}
    values, weights, *sample_bias = source.reference(module, x, padded, lay, **extra)
    step, (h, w) = module.neighbourhood.step, x.shape[2:]
    if step > 1 and weights.shape[-2] == h * w:
        # a kernel predicted at every input position is used at the strided output positions only
        weights = weights.unflatten(-2, (h, w))[..., ::step, ::step, :].flatten(-3, -2)
    neighbours = values[:, :, lay.index].masked_fill(~lay.valid, 0)  # (B, C, P, K)
    if source.dense:
        # weights (Bw, O, C/g, Pw, K): output channel o of group g reads the group's input channels.
        groups = source.conv_groups
        neighbours = neighbours.unflatten(1, (groups, -1))  # (B, g, C/g, P, K)
        weights = weights.unflatten(1, (groups, -1)).expand(b, -1, -1, -1, neighbours.shape[3], -1)
        y = torch.einsum("bgipk,bgoipk->bgop", neighbours, weights)
    else:
        neighbours = neighbours.unflatten(1, (source.weight_groups, -1))  # (B, G, C/G, P, K)
        y = (neighbours * weights.unsqueeze(2)).sum(-1)
    y = y.reshape(b, source.out_channels, *lay.out_size)
    if sample_bias:  # a per-sample bias (B, O) that finish, having no input, cannot know
        y = y + sample_bias[0][:, :, None, None]
    return source.finish(module, y)


# --- convolutions ------------------------------------------------------------------------------


def _conv_neighbourhood(nb: Neighbourhood) -> bool:
    return isinstance(nb, Point) or (isinstance(nb, Sliding) and nb.border in ("zeros", "reflect", "mask"))


def _conv_geometry(nb: Neighbourhood) -> tuple[int, int, int, int]:
    """``(kernel_size, padding, dilation, stride)`` of the equivalent zero-padded convolution."""
    if isinstance(nb, Point):
        return 1, 0, 1, 1
    return nb.kernel_size, nb.dilation * (nb.kernel_size // 2), nb.dilation, nb.stride


def _pad_for_conv(nb: Neighbourhood, x: torch.Tensor, padding: int) -> tuple[torch.Tensor, int]:
    """F.conv2d pads with zeros only: another border rule pads first and convolves unpadded."""
    if padding and nb.pad_mode != "constant":
        return F.pad(x, (padding,) * 4, mode=nb.pad_mode), 0
    return x, padding


def _run_conv(module: Aggregation, x: torch.Tensor) -> torch.Tensor:
    source = module.source
    _, padding, dilation, stride = _conv_geometry(module.neighbourhood)
    x, padding = _pad_for_conv(module.neighbourhood, x, padding)
    weight = source.conv_weight(module, x)[0]
    bias = source.conv_bias(module)
    return F.conv2d(x, weight, bias, stride, padding, dilation, source.conv_groups)


def _run_batched_conv(module: Aggregation, x: torch.Tensor) -> torch.Tensor:
    source = module.source
    _, padding, dilation, stride = _conv_geometry(module.neighbourhood)
    weight, bias, in_scale, out_scale = source.sample_kernels(module, x)  # read before any padding
    if in_scale is not None:
        x = x * in_scale[:, :, None, None]
    x, padding = _pad_for_conv(module.neighbourhood, x, padding)
    y = _batched_conv(x, weight, bias, padding, dilation, stride, source.conv_groups)
    return y if out_scale is None else y * out_scale[:, :, None, None]


def _batched_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    dilation: int,
    stride: int,
    groups: int,
) -> torch.Tensor:
    """Sample ``b`` of ``x`` (already padded by any rule but zeros) convolved with ``weight[b]``."""
    b, c = x.shape[:2]
    per_sample_bias = bias is not None and bias.dim() == 2
    if b == 0:  # an empty batch has no kernels to fold; any kernel of the right shape gives the empty output
        bias = bias.sum(0) if per_sample_bias else bias
        return F.conv2d(x, weight.sum(0), bias, stride, padding, dilation, groups)
    if x.device.type == "cpu" and groups < c and isinstance(b, int):
        # oneDNN runs a grouped conv of B dense groups ~2.5x slower than B single-sample convs
        # (256->256 3x3 at 14x14, B=8: 25 ms against 10 ms); depth-wise kernels batch well. A
        # symbolic batch (torch.export with a dynamic batch) cannot be looped over: it takes the fold.
        # split/unbind, not indexing: the backward of B index ops writes B full-size zero gradients
        # (quadratic in B; 1.5 s of a 1.7 s step at B=64), theirs one concatenation.
        biases = bias.unbind(0) if per_sample_bias else [bias] * b
        samples = zip(x.split(1), weight.unbind(0), biases, strict=True)
        return torch.cat([F.conv2d(xi, wi, bi, stride, padding, dilation, groups) for xi, wi, bi in samples])
    # Folding the batch into the channels turns B different kernels into one grouped conv; the
    # bias rides along in the same call instead of costing another pass over the output.
    if bias is not None:
        bias = bias.reshape(-1) if per_sample_bias else bias.repeat(b)
    y = F.conv2d(
        x.reshape(1, b * c, *x.shape[2:]),
        weight.reshape(-1, *weight.shape[2:]),
        bias,
        stride,
        padding,
        dilation,
        b * groups,
    )
    return y.view(b, -1, *y.shape[2:])


def _run_shifted_sum(module: Aggregation, x: torch.Tensor) -> torch.Tensor:
    nb, source = module.neighbourhood, module.source
    b, c = x.shape[:2]
    k, padding, dilation, stride = _conv_geometry(nb)
    groups = source.weight_groups
    kernel = source.kernel(module, x)  # (B, G, K, H, W)
    if stride > 1:
        kernel = kernel[..., ::stride, ::stride]
    ho, wo = kernel.shape[-2:]
    kernel = kernel.unsqueeze(2)  # (B, G, 1, K, Ho, Wo)
    padded = F.pad(x, (padding,) * 4, mode=nb.pad_mode) if padding else x
    padded = padded.unflatten(1, (groups, c // groups))
    span_y, span_x = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    # One multiply-add per kernel tap keeps memory at a few copies of x, unlike unfolding K of them.
    y = x.new_zeros(b, groups, c // groups, ho, wo)
    for tap in range(k * k):
        dy, dx = (tap // k) * dilation, (tap % k) * dilation
        y.addcmul_(padded[..., dy : dy + span_y : stride, dx : dx + span_x : stride], kernel[:, :, :, tap])
    return source.finish(module, y.view(b, c, ho, wo))


# --- attention ---------------------------------------------------------------------------------


def _attention(q, k, v, mask, scale):
    """SDPA over blocks: ``q`` ``(B, T, G, L, D)``, ``k``/``v`` ``(B, T, G, S, D)``, ``mask``
    ``(T or 1, G or 1, L, S)`` or ``None``.

    PyTorch's fused CPU kernel takes 4-D inputs only (a 5-D call runs the unfused math path, two to
    three times slower), so the batch and block axes are folded into one, and a mask that varies
    over blocks is expanded over the batch to match.
    """
    b, t = q.shape[:2]
    if mask is not None and mask.shape[0] != 1:
        mask = mask.expand(b, *mask.shape).flatten(0, 1)
    o = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask, scale=scale)
    return o.unflatten(0, (b, t))


def _float_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _add_bias(mask: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return mask
    return bias if mask is None else bias + mask


@cached_tables
def _window_tables(nb: Window, height: int, width: int, dtype: torch.dtype):
    """The additive mask of Swin's shifted windows, ``(nW, 1, N, N)`` (``None`` when every key is
    visible), and the relative-position index of (query, key) pairs in a window, ``(N, N)``."""
    ws = nb.size

    def per_axis(length: int) -> torch.Tensor:
        region, inside = nb.rolled_regions(length)
        region, inside = region.view(-1, ws), inside.view(-1, ws)  # (windows, ws)
        allowed = region[:, :, None] == region[:, None, :]
        return allowed & inside[:, None, :] if nb.border == "mask" else allowed

    my, mx = per_axis(height), per_axis(width)
    allowed = (my[:, None, :, None, :, None] & mx[None, :, None, :, None, :]).reshape(
        my.shape[0] * mx.shape[0], 1, ws * ws, ws * ws
    )
    r = torch.arange(ws)
    rel = (r[:, None] - r[None, :]) + ws - 1  # query minus key
    rel_index = (rel[:, None, :, None] * (2 * ws - 1) + rel[None, :, None, :]).reshape(ws * ws, ws * ws)
    return (None if bool(allowed.all()) else _float_mask(allowed, dtype)), rel_index


def _run_window_sdpa(module: Aggregation, x: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    nb, source = module.neighbourhood, module.source
    h, w = x.shape[2:]
    ws, s = nb.size, nb.shift
    hp, wp = nb.padded_length(h), nb.padded_length(w)
    if projected is None:
        # Padding and rolling the input rather than q, k, v moves a third of the data.
        x = x.permute(0, 2, 3, 1)
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        qkv = source.project(module, x)
    else:
        qkv = source.pad_projected(module, projected, (0, wp - w, 0, hp - h), "constant")
        if s:
            qkv = torch.roll(qkv, (-s, -s), (2, 3))
    mask, rel_index = _window_tables(nb, h, w, qkv.dtype, device=qkv.device)
    mask = _add_bias(mask, source.bias(module, rel_index))
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(0)
    # Plain views rather than einops.rearrange: torch.compile traces einops' pattern parsing at every
    # call (half of the compile-time tracing of a Swin block); the ops and the result are the same.
    qkv = qkv.unflatten(2, (hp // ws, ws)).unflatten(4, (wp // ws, ws))  # t b nh wh nw ww g d
    qkv = qkv.permute(0, 1, 2, 4, 6, 3, 5, 7).flatten(5, 6).flatten(2, 3)  # t b (nh nw) g (wh ww) d
    o = _attention(qkv[0], qkv[1], qkv[2], mask, source.logit_scale)
    o = o.unflatten(1, (hp // ws, wp // ws)).unflatten(4, (ws, ws)).permute(0, 1, 4, 2, 5, 3, 6)  # b nh wh nw ww g d
    # An explicit copy, not reshape: with one column of windows reshape is a view of the fused CPU
    # kernel's output layout, and torch.export records it as one, which fails where the exporter
    # swaps in a kernel with another layout (ONNX: pytorch/pytorch#141107). Otherwise reshape copies too.
    o = o.clone(memory_format=torch.contiguous_format).view(o.shape[0], hp, wp, o.shape[-2] * o.shape[-1])  # B may be 0
    if s:
        o = torch.roll(o, (s, s), (1, 2))
    return source.finish(module, o[:, :h, :w].permute(0, 3, 1, 2))


def _halo_axis(axis: Axis, tile: int, in_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile one axis: queries (the axis' output positions) in tiles of ``tile``, keys (positions of
    the padded input, ``in_length`` before padding) in one block per tile holding every neighbour of
    its queries.

    Returns:
        ``(keys, allowed, rel)``: block key indices ``(nT, Tk)``; whether query ``q`` of tile
        ``t`` sees block key ``m``, ``(nT, tile, Tk)``; and that pair's relative position.
    """
    length, _ = axis.index.shape
    n_tiles = math.ceil(length / tile)
    tile_of = torch.arange(length) // tile
    big = torch.iinfo(torch.long).max
    lo = torch.where(axis.valid, axis.index, big).amin(1)
    hi = torch.where(axis.valid, axis.index, -1).amax(1)
    lo = torch.full((n_tiles,), big).scatter_reduce(0, tile_of, lo, "amin")
    hi = torch.full((n_tiles,), -1).scatter_reduce(0, tile_of, hi, "amax")
    block = int((hi - lo).max()) + 1
    keys_len = in_length + sum(axis.pad)
    start = torch.clamp(lo, max=keys_len - block)
    keys = start[:, None] + torch.arange(block)
    # hit[i, a, m]: slot a of query i is key m of its tile's block.
    offset = axis.index - start[tile_of][:, None]
    hit = (offset[:, :, None] == torch.arange(block)) & axis.valid[:, :, None]
    allowed = torch.zeros(n_tiles * tile, block, dtype=torch.bool)
    rel = torch.zeros(n_tiles * tile, block, dtype=torch.long)
    allowed[:length] = hit.any(1)
    rel[:length] = (hit * axis.rel[:, :, None]).sum(1)
    allowed[length:, 0] = True  # padding queries see one key so that their softmax stays finite
    return keys, allowed.view(n_tiles, tile, block), rel.view(n_tiles, tile, block)


@cached_tables
def _halo_tables(kernel_size: int, border: str, stride: int, height: int, width: int, tile: int, dtype: torch.dtype):
    """Tables of the halo path for ``Sliding(kernel_size, 1, border, stride)`` on an ``height x width`` input.

    The neighbourhood is passed as its fields, not as a ``Sliding``: the caller builds it during the
    forward pass, and under ``torch.compile`` only Python constants reach a cached table builder.

    Returns:
        ``(queries, keys, mask, rel)``: each tile's queries as flat indices into the output grid,
            ``(nT * T*T,)`` (positions past the border repeat the last row or column); each tile's
            key block as flat indices into the (padded) key map, ``(nT, Tk*Tk)``; the additive mask
            of the keys each query sees, ``(nT, 1, T*T, Tk*Tk)``; and the relative-position index of
            every (query, block key) pair, ``(nT, T*T, Tk*Tk)``.
    """
    nb = Sliding(kernel_size, 1, border, stride)
    axis_y, axis_x = nb.axis(height), nb.axis(width)
    ho, wo = axis_y.index.shape[0], axis_x.index.shape[0]
    ky, ay, ry = _halo_axis(axis_y, tile, height)
    kx, ax, rx = _halo_axis(axis_x, tile, width)
    nty, ntx = ky.shape[0], kx.shape[0]
    qy = torch.arange(nty * tile).clamp(max=ho - 1).view(nty, 1, tile, 1)
    qx = torch.arange(ntx * tile).clamp(max=wo - 1).view(1, ntx, 1, tile)
    queries = (qy * wo + qx).reshape(-1)
    e = nb.kernel_size
    key_width = width + sum(axis_x.pad)
    keys = ky[:, None, :, None] * key_width + kx[None, :, None, :]
    allowed = ay[:, None, :, None, :, None] & ax[None, :, None, :, None, :]
    rel = (ry[:, None, :, None, :, None] + e - 1) * (2 * e - 1) + (rx[None, :, None, :, None, :] + e - 1)
    n_tiles, block = nty * ntx, ky.shape[1] * kx.shape[1]
    shape = (n_tiles, tile * tile, block)
    mask = _float_mask(allowed.reshape(shape), dtype).unsqueeze(1)
    return queries, keys.reshape(n_tiles, block), mask, rel.reshape(shape)


def _halo_group(module, q, k, v, nb: Sliding, tile: int, size: tuple[int, int]) -> torch.Tensor:
    """Neighbourhood attention, non-dilated, for queries ``q`` ``(B, Ho, Wo, G, D)`` (the output
    positions) over keys and values ``(B, Hk, Wk, G, D)`` of an input of ``size`` (``Hk = H + 2r``
    when the border pads)."""
    source = module.source
    b, ho, wo, groups, dim = q.shape
    queries, keys, mask, rel = _halo_tables(nb.kernel_size, nb.border, nb.stride, *size, tile, q.dtype, device=q.device)
    mask = _add_bias(mask, source.bias(module, rel))
    nty, ntx = math.ceil(ho / tile), math.ceil(wo / tile)
    n_tiles, block = keys.size()
    q = q.reshape(b, ho * wo, groups, dim).index_select(1, queries).view(b, n_tiles, tile * tile, groups, dim)
    k, v = k.flatten(1, 2), v.flatten(1, 2)  # (B, Hk*Wk, G, D); flatten, not reshape(b, -1), for B = 0
    keys = keys.flatten()
    # One sample at a time: the key blocks overlap (each key is copied into up to (Tk/T)^2 blocks)
    # and the mask varies over tiles, so batching would multiply both by B. Per sample, the fused
    # kernel still sees nT * G attention problems, and memory stays near that of window attention.
    out = q.new_empty(b, nty, tile, ntx, tile, groups, dim)
    for i in range(b):
        o = F.scaled_dot_product_attention(
            q[i].transpose(1, 2),  # (nT, G, T*T, D)
            k[i].index_select(0, keys).view(n_tiles, block, groups, dim).transpose(1, 2),
            v[i].index_select(0, keys).view(n_tiles, block, groups, dim).transpose(1, 2),
            attn_mask=mask,
            scale=source.logit_scale,
        )
        # Written straight into the output layout: a rearranged copy would be copied again.
        out[i] = o.view(nty, ntx, groups, tile, tile, dim).permute(0, 3, 1, 4, 2, 5)
    return out.view(b, nty * tile, ntx * tile, groups * dim)[:, :ho, :wo]


def _run_halo_sdpa(module: Aggregation, x: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    nb, source = module.neighbourhood, module.source
    b, _, h, w = x.shape
    d, r, s = nb.dilation, nb.kernel_size // 2, nb.stride
    pads = nb.border in ("zeros", "reflect")
    halo = d * r if pads else 0
    if projected is None and nb.border == "zeros":
        # Padding the input rather than q, k, v moves a third of the data.
        x = x.permute(0, 2, 3, 1)
        q, k, v = source.project(module, F.pad(x, (0, 0, halo, halo, halo, halo)) if halo else x)
    else:
        if projected is None:
            projected = source.project(module, x.permute(0, 2, 3, 1))
        if nb.border == "reflect":
            nb.check_reflectable(h, w)
        q, k, v = source.pad_projected(module, projected, (halo,) * 4, nb.pad_mode)
    pe = source.position_embedding(module, h, w, (halo,) * 4, nb.pad_mode, q)
    if pe is not None:
        k = k - pe[:, :, None, :]  # q_i . pe_i is the same for every key: it cancels in the softmax
    q = q[:, halo : halo + h : s, halo : halo + w : s]
    # Tables of a zero-padded and a reflected window are the same: both read the padded map.
    base = Sliding(nb.kernel_size, 1, "zeros" if pads else nb.border, s)
    tile = module.halo_tile or nb.kernel_size
    if d == 1:
        o = _halo_group(module, q, k, v, base, tile, (h, w))
    else:
        # A dilated neighbourhood is d*d interleaved non-dilated ones (NATTEN's dilation groups).
        o = q.new_empty(b, h, w, source.out_channels)
        for gy in range(d):
            for gx in range(d):
                sub = (slice(None), slice(gy, None, d), slice(gx, None, d))
                size = q[sub].shape[1:3]
                if size[0] and size[1]:  # empty where the dilation exceeds the input
                    o[sub] = _halo_group(module, q[sub], k[sub], v[sub], base, tile, size)
    return source.finish(module, o.permute(0, 3, 1, 2))


def _run_global_sdpa(module: Aggregation, x: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    source = module.source
    h, w = x.shape[2:]
    if projected is None:
        projected = source.project(module, x.permute(0, 2, 3, 1))
    q, k, v = projected.flatten(2, 3).transpose(2, 3)  # t b g (h w) d
    o = F.scaled_dot_product_attention(q, k, v, scale=source.logit_scale)
    return source.finish(module, o.transpose(2, 3).flatten(1, 2).unflatten(2, (h, w)))  # b (g d) h w


# --- registry ----------------------------------------------------------------------------------


def _is_conv_source(dynamism: str) -> Callable[[WeightSource], bool]:
    return lambda src: isinstance(src, ConvKernelSource) and src.dynamism == dynamism


def _is_attention(src: WeightSource, *, positional_embedding: bool = True) -> bool:
    return isinstance(src, QKAttention) and (positional_embedding or not src.coord_pos_embed)


def _halo_neighbourhood(nb: Neighbourhood) -> bool:
    return isinstance(nb, Sliding) and (nb.stride == 1 or nb.dilation == 1)


def _pairs(
    neighbourhood: Callable[[Neighbourhood], bool], source: Callable[[WeightSource], bool]
) -> Callable[[Neighbourhood, WeightSource], bool]:
    return lambda nb, src: neighbourhood(nb) and source(src)


PATHS: dict[str, Path] = {
    p.name: p
    for p in (
        Path("conv", _pairs(_conv_neighbourhood, _is_conv_source("static")), _run_conv),
        Path(
            "decomposed",
            _pairs(_conv_neighbourhood, lambda src: isinstance(src, DecomposedKernelSource)),
            lambda module, x: module.source.feature_space(module, x),
        ),
        Path("batched_conv", _pairs(_conv_neighbourhood, _is_conv_source("sample")), _run_batched_conv),
        Path(
            "shifted_sum",
            _pairs(_conv_neighbourhood, lambda src: src.dynamism == "position" and not src.dense),
            _run_shifted_sum,
        ),
        Path(
            "window_sdpa",
            _pairs(lambda nb: isinstance(nb, Window), lambda src: _is_attention(src, positional_embedding=False)),
            _run_window_sdpa,
        ),
        Path("halo_sdpa", _pairs(_halo_neighbourhood, _is_attention), _run_halo_sdpa),
        Path(
            "global_sdpa",
            _pairs(lambda nb: isinstance(nb, Global), lambda src: _is_attention(src, positional_embedding=False)),
            _run_global_sdpa,
        ),
        Path("reference", lambda nb, src: True, _run_reference),
    )
}
"""Every execution path by name; ``"reference"`` applies to every configuration."""


def applicable_paths(neighbourhood: Neighbourhood, source: WeightSource) -> list[str]:
    """Names of the paths that can compute this configuration, fastest first.

    Args:
        neighbourhood: The spatial neighbourhood.
        source: The weight source.

    Returns:
        Path names; the last is always ``"reference"``.
    """
    return [name for name, p in PATHS.items() if p.applies(neighbourhood, source)]


def select_path(neighbourhood: Neighbourhood, source: WeightSource, path: str = "auto") -> str:
    """Resolve ``path`` for a configuration.

    Args:
        neighbourhood: The spatial neighbourhood.
        source: The weight source.
        path: ``"auto"`` (the first applicable fast path, else the reference) or a name in
            [`PATHS`][unifiedops.paths.PATHS].

    Returns:
        The path name.

    Raises:
        ValueError: If ``path`` is unknown or cannot compute this configuration.
    """
    if not isinstance(path, str) or (path != "auto" and path not in PATHS):
        raise ValueError(f"path must be 'auto' or one of {', '.join(map(repr, PATHS))}; got path={path!r}")
    options = applicable_paths(neighbourhood, source)
    if path == "auto":
        return options[0]
    if path not in options:
        raise ValueError(
            f"path={path!r} cannot compute {type(neighbourhood).__name__} with {type(source).__name__}; "
            f"applicable: {', '.join(map(repr, options))}"
        )
    return path
