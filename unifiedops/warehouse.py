"""KernelWarehouse: convolution kernels assembled per sample from cells shared across layers.

KernelWarehouse (Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic Convolution", ICML 2024,
arXiv:2308.08361) splits every kernel of a group of layers into equal *cells* (a block of
``cell_out x cell_in`` channels, and by default one spatial tap), and replaces the cells by ``n``
shared ones, the *warehouse*. Each cell position of each layer (a *mixture*) is a per-sample linear
combination of the warehouse's cells, with coefficients from a small attention on the pooled input.

On the three axes a KW convolution is a sliding ``k x k`` aggregation with dense (cell-blocked)
channel mixing, whose weights are shared across positions and, through the warehouse, across layers,
and are dynamic per sample. It runs as an [`Aggregation`][unifiedops.Aggregation] whose
[`WarehouseKernel`][unifiedops.warehouse.WarehouseKernel] source assembles the kernels with one
matrix product, on the batch-folded grouped convolution (``batched_conv``), and on the literal
``reference`` path. A KW convolution whose geometry a centred window cannot express (an even kernel,
or a padding other than ``dilation * (k // 2)``, such as ConvNeXt's ``4 x 4`` stride-4 stem) runs as a
``1 x 1`` aggregation over the input's ``k x k`` patches (``F.unfold``), on the same two paths.

The life cycle is the official one:

1. create a [`Warehouse`][unifiedops.warehouse.Warehouse] and keep it as a submodule of the network;
2. [`reserve`][unifiedops.warehouse.Warehouse.reserve] every layer instead of building an
   ``nn.Conv2d`` (``nn.Conv1d``, ``nn.Linear``), with a name such as ``stage1_layer2_conv0``;
3. [`store`][unifiedops.warehouse.Warehouse.store] the warehouses and
   [`allocate`][unifiedops.warehouse.Warehouse.allocate] their cells to the layers (or call
   [`build`][unifiedops.warehouse.Warehouse.build], which does both);
4. during training, step a [`TemperatureSchedule`][unifiedops.warehouse.TemperatureSchedule] once per
   iteration.

Parameter names are the official ones: the network holds the warehouses as
``<manager attribute>.weights.<i>``, and each layer ``bias`` and ``attention.{fc1,norm1,fc2,fc3,
basis_bias}``, so official checkpoints load.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from unifiedops._checks import check_choice, check_divisible, check_input, check_int
from unifiedops.aggregation import Aggregation
from unifiedops.neighbourhoods import Layout, Neighbourhood, Point, Sliding
from unifiedops.weights import ConvKernelSource

__all__ = [
    "LAYER_TYPES",
    "CellLayout",
    "KWConv1d",
    "KWConv2d",
    "KWLinear",
    "TemperatureSchedule",
    "Warehouse",
    "WarehouseAttention",
    "WarehouseKernel",
    "WarehousePlan",
    "set_temperature",
]

LAYER_TYPES = ("conv1d", "conv2d", "linear")
"""Layer types [`Warehouse.reserve`][unifiedops.warehouse.Warehouse.reserve] builds."""

Ratio = float | Sequence[float]


# --- attention ----------------------------------------------------------------------------------


class WarehouseAttention(nn.Module):
    """The per-sample attention of one KW layer over the ``n`` cells of its warehouse (the paper's
    contrasting-driven attention function).

    ``GAP -> fc1 (C -> max(int(C * reduction), 16); bias only without BatchNorm1d) -> norm1 -> ReLU
    -> fc2 (-> (n + 1) * m)``; per mixture, the ``n + 1`` logits (the last is a "zero cell") are
    normalised linearly, ``z / (sum |z| + 1e-3)``, mixed with the binary initial assignment ``beta``
    as ``(1 - tau) z + tau beta``, and the zero cell is dropped.

    With ``nonlocal_basis_ratio < 1`` the logits of the cells owned by other layers come from
    ``max(int(n_nonlocal * ratio), 16)`` basis logits through ``fc3`` (no bias), and a learned
    ``basis_bias`` is added (fc2 then has no bias).

    ``beta`` is registered as a non-persistent buffer ``temp_bias``: it moves with ``.to()`` and is
    rebuilt by [`Warehouse.allocate`][unifiedops.warehouse.Warehouse.allocate] rather than loaded.
    (The official code keeps it as a plain tensor attribute, moved to the input's device in every
    forward.) ``tau`` is ``temp_value``, 0 until a schedule sets it.

    Args:
        in_planes: Input channels ``C`` of the layer.
        reduction: Hidden width ratio.
        num_static_cell: Cells ``n`` of the warehouse.
        num_local_mixture: Mixtures ``m`` of the layer.
        norm_layer: ``nn.BatchNorm1d`` (default) or a norm such as ``nn.LayerNorm``, called with the
            hidden width.
        cell_num_ratio: The warehouse's ``cell_num_ratio`` (cells the layer owns: ``int(ratio * m)``).
        nonlocal_basis_ratio: Basis reduction of the other layers' cells; off when ``>= 1``.
        start_cell_idx: First cell the layer owns (where its own logits sit among the basis-mapped ones).

    Shape:
        ``(B, C, *spatial) -> (B * m, n)``.
    """

    def __init__(
        self,
        in_planes: int,
        reduction: float,
        num_static_cell: int,
        num_local_mixture: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm1d,
        cell_num_ratio: float = 1.0,
        nonlocal_basis_ratio: float = 1.0,
        start_cell_idx: int = 0,
    ) -> None:
        super().__init__()
        hidden = max(int(in_planes * reduction), 16)
        self.kw_planes_per_mixture = num_static_cell + 1
        self.num_local_mixture = num_local_mixture
        self.kw_planes = self.kw_planes_per_mixture * num_local_mixture
        self.num_local_cell = int(cell_num_ratio * num_local_mixture)
        self.num_nonlocal_cell = num_static_cell - self.num_local_cell
        self.start_cell_idx = start_cell_idx
        self.fc1 = nn.Linear(in_planes, hidden, bias=norm_layer is not nn.BatchNorm1d)
        self.norm1 = norm_layer(hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.nonlocal_basis = nonlocal_basis_ratio < 1.0
        if self.nonlocal_basis:
            self.num_basis = max(int(self.num_nonlocal_cell * nonlocal_basis_ratio), 16)
            width = (self.num_local_cell + self.num_basis + 1) * num_local_mixture
            self.fc2 = nn.Linear(hidden, width, bias=False)
            with warnings.catch_warnings():  # a layer alone in its warehouse has no non-local cells
                warnings.simplefilter("ignore", UserWarning)
                self.fc3 = nn.Linear(self.num_basis, self.num_nonlocal_cell, bias=False)
            self.basis_bias = nn.Parameter(torch.zeros(self.kw_planes))
        else:
            self.fc2 = nn.Linear(hidden, self.kw_planes)
        self.register_buffer("temp_bias", torch.zeros(self.kw_planes), persistent=False)
        self.temp_value = 0.0
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.numel():
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def update_temperature(self, temp_value: float) -> None:
        """Set ``tau`` (the official method name, so official training loops drive it too).

        Args:
            temp_value: The temperature; 1 gives the initial assignment ``beta``, 0 the attention alone.
        """
        self.temp_value = float(temp_value)

    @torch.no_grad()
    def init_temperature(self, start_cell_idx: int, cell_num_ratio: float) -> int:
        """Build ``beta``, the initial assignment of mixtures to cells, from ``start_cell_idx`` on.

        With ``cell_num_ratio >= 1`` mixture ``i`` is one-hot on a cell of its own, the next one
        ``int(cell_num_ratio)`` cells further. With ``cell_num_ratio < 1`` and ``r = int(1 / ratio)``,
        mixture ``i`` takes the next cell when ``i % r == (i // r) % r`` and the zero cell otherwise.

        Args:
            start_cell_idx: First cell of the warehouse this layer owns.
            cell_num_ratio: The warehouse's ``cell_num_ratio``.

        Returns:
            The index after the last cell the layer owns.
        """
        beta = self.temp_bias.view(self.num_local_mixture, self.kw_planes_per_mixture)
        beta.zero_()
        if cell_num_ratio >= 1.0:
            step = int(cell_num_ratio)
            for i in range(self.num_local_mixture):
                beta[i, start_cell_idx] = 1
                start_cell_idx += step
            return start_cell_idx
        r = int(1.0 / cell_num_ratio)
        for i in range(self.num_local_mixture):
            if i % r == (i // r) % r:
                beta[i, start_cell_idx] = 1
                start_cell_idx += 1
            else:
                beta[i, -1] = 1
        return start_cell_idx

    def _map_to_cell(self, z: torch.Tensor) -> torch.Tensor:
        """Expand basis logits to one logit per warehouse cell, ``(B, (n + 1) * m)``."""
        z = z.reshape(-1, self.num_local_cell + self.num_basis + 1)
        local, basis, zero = z[:, : self.num_local_cell], z[:, self.num_local_cell : -1], z[:, -1:]
        nonlocal_ = self.fc3(basis)
        s = self.start_cell_idx
        z = torch.cat([nonlocal_[:, :s], local, nonlocal_[:, s:], zero], dim=1)
        return z.reshape(-1, self.kw_planes) + self.basis_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of every mixture of every sample over the warehouse's cells.

        Args:
            x: The layer input, ``(B, C, *spatial)``.

        Returns:
            ``(B * m, n)``, sample-major.
        """
        z = self.act1(self.norm1(self.fc1(x.flatten(2).mean(2))))
        z = self.fc2(z)
        if self.nonlocal_basis:
            z = self._map_to_cell(z)
        z = z.reshape(-1, self.kw_planes_per_mixture)
        z = z / (z.abs().sum(1, keepdim=True) + 1e-3)
        tau = self.temp_value
        if tau:
            z = ((1.0 - tau) * z.reshape(-1, self.kw_planes) + tau * self.temp_bias).reshape(z.shape)
        return z[:, :-1]

    def extra_repr(self) -> str:
        return (
            f"cells={self.kw_planes_per_mixture - 1}, mixtures={self.num_local_mixture}, temp_value={self.temp_value}"
        )


# --- the weight source --------------------------------------------------------------------------


@dataclass(frozen=True)
class CellLayout:
    """How one layer's kernel is cut into cells of its warehouse.

    Attributes:
        cells: Cells ``n`` in the warehouse.
        cell_shape: ``(cell_out, cell_in, *cell_kernel)``.
        groups_out: Cells along the output channels, ``out / cell_out``.
        groups_in: Cells along the input channels of a group, ``(in / groups) / cell_in``.
        groups_spatial: Cells along the kernel taps (``k*k`` for 1x1 cells, 1 for whole-kernel cells).
    """

    cells: int
    cell_shape: tuple[int, ...]
    groups_out: int
    groups_in: int
    groups_spatial: int

    @property
    def mixtures(self) -> int:
        """Mixtures ``m`` of the layer: cells its kernel is cut into."""
        return self.groups_out * self.groups_in * self.groups_spatial


@dataclass(frozen=True)
class WarehouseKernel(ConvKernelSource):
    """Per-sample dense kernels assembled from a shared warehouse of cells (KernelWarehouse).

    ``W = A @ cells``: the layer's attention ``A`` ``(B*m, n)`` times the warehouse ``(n, cell
    numel)``, reshaped to ``(B, out, in/groups, *k)`` by laying the ``m`` mixtures (spatial-major,
    then output blocks, then input blocks) over the kernel. ``dims=1`` assembles a 1-D kernel ``(k,)``
    and embeds it as the middle column of a ``k x k`` kernel, for a ``(B, C, L, 1)`` view of the input.

    A layer of patches (see [`KWConv2d`][unifiedops.warehouse.KWConv2d]) aggregates the ``C k k``
    channels of its unfolded input at one point: its source has ``channels = C k k`` and its kernel is
    reshaped to ``(B, O, C k k / groups, 1, 1)``, whose channel order is ``F.unfold``'s.

    It registers only ``bias`` (``(O,)``, zeros, or ``None``). The cells live in a
    [`Warehouse`][unifiedops.warehouse.Warehouse], and ``attention`` and the layer's
    [`CellLayout`][unifiedops.warehouse.CellLayout] are set by
    [`Warehouse.allocate`][unifiedops.warehouse.Warehouse.allocate].

    Args:
        channels: Input channels of the aggregation: ``C``, or ``C k k`` for a layer of patches.
        out_channels: Output channels ``O``.
        groups: Channel groups; ``C`` and ``O`` must be divisible by it.
        bias: Whether to add a learned per-channel bias (after the convolution).
        dims: Kernel dimensions of the layer, 1 or 2.
    """

    out_channels: int
    groups: int = 1
    bias: bool = False
    dims: int = 2
    dynamism: ClassVar[str] = "sample"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("out_channels", self.out_channels, minimum=1)
        check_int("groups", self.groups, minimum=1)
        check_divisible("channels", self.channels, "groups", self.groups)
        check_divisible("out_channels", self.out_channels, "groups", self.groups)
        check_choice("dims", self.dims, (1, 2))

    @property
    def conv_groups(self) -> int:
        """``groups``, the channel groups of the equivalent ``nn.Conv2d``."""
        return self.groups

    def build(self, module: nn.Module, neighbourhood: Neighbourhood) -> None:
        if not isinstance(neighbourhood, Sliding | Point):
            raise TypeError(
                f"WarehouseKernel needs a Sliding (or, for patches, a Point) neighbourhood, "
                f"got {type(neighbourhood).__name__}"
            )
        module.bias = nn.Parameter(torch.zeros(self.out_channels)) if self.bias else None
        module.register_module("attention", None)
        module.cell_layout = None
        # A Point layer aggregates unfolded patches; its forward sets the input its attention pools.
        module.unfold = isinstance(neighbourhood, Point)
        module.attention_input = None

    def assemble(self, module: nn.Module, attention: torch.Tensor, batch: int) -> torch.Tensor:
        """Kernels from attention values: ``(B*m, n) -> (B, O, C/groups, *k)`` (the layer's own ``k``).

        Args:
            module: The KW layer.
            attention: Attention over the warehouse cells, sample-major, ``(B*m, n)``.
            batch: ``B``.

        Returns:
            The layer's kernels in its own geometry: ``(B, O, C/groups, k, k)`` for a 2-D layer
                (also one of patches), ``(B, O, C/groups, k)`` for a 1-D one.
        """
        lay: CellLayout = module.cell_layout
        cells = module.warehouse_manager[0].take_cell(module.warehouse_id)
        w = torch.mm(attention, cells.reshape(lay.cells, -1))
        d = len(lay.cell_shape) - 2
        w = w.reshape(batch, lay.groups_spatial, lay.groups_out, lay.groups_in, *lay.cell_shape)
        # (B, spatial, out blocks, in blocks, cell_out, cell_in, *cell_k) -> (B, out, in, taps): the
        # official order, so 1x1 cells tile the taps row-major.
        w = w.permute(0, 2, 4, 3, 5, 1, *range(6, 6 + d))
        return w.reshape(batch, self.out_channels, module.in_planes // self.groups, *module.kernel_size)

    def conv_weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-sample kernels, assembled from the attention on the layer's input.

        Args:
            module: The KW layer.
            x: The aggregation's input, ``(B, C, H, W)``: the layer input, its ``(B, C, L, 1)`` view
                for a 1-D layer, or its unfolded patches ``(B, C k k, Ho, Wo)`` for a layer of
                patches (whose attention pools the layer input instead).

        Returns:
            ``(B, O, C/groups, k, k)``; for a 1-D layer the kernel is the middle column of the
                ``k x k`` kernel; for a layer of patches ``(B, O, C k k / groups, 1, 1)``.

        Raises:
            RuntimeError: If the layer's warehouse has not been stored and allocated.
        """
        if module.cell_layout is None:
            raise RuntimeError(
                "this KW layer has no cells yet: call store() and allocate(network), or build(network), "
                "on its Warehouse"
            )
        # A layer of patches receives the unfolded input; its attention pools the layer's own input.
        pooled = x if module.attention_input is None else module.attention_input
        w = self.assemble(module, module.attention(pooled), x.shape[0])
        if module.unfold:
            # (B, O, C/g, k, k) -> (B, O, C/g * k * k, 1, 1): F.unfold orders a patch's channels (c, i, j).
            return w.reshape(*w.shape[:2], -1, 1, 1)
        if self.dims == 1:
            # The 1-D kernel becomes the middle column of a k x k kernel over a width-1 input.
            r = module.kernel_size[0] // 2
            w = F.pad(w.unsqueeze(-1), (r, r))
        return w

    def reference(
        self, module: nn.Module, x: torch.Tensor, padded: torch.Tensor, lay: Layout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded input and the kernels of [`conv_weight`][unifiedops.warehouse.WarehouseKernel.conv_weight].

        Args:
            module: The KW layer.
            x: The aggregation's input, ``(B, C, H, W)`` (see ``conv_weight``).
            padded: ``x`` padded as the neighbourhood asks, ``(B, C, Hp, Wp)``.
            lay: The neighbourhood's layout for ``(H, W)``.

        Returns:
            ``(values, weights)``: ``(B, C, Hp*Wp)`` and ``(B, O, C/groups, 1, K)``, ``K = k*k``
                (1 for a layer of patches).
        """
        return padded.flatten(2), self.conv_weight(module, x).flatten(3).unsqueeze(3)


# --- layers -------------------------------------------------------------------------------------


def _square_kernel(kernel_size: int | Sequence[int]) -> int:
    if not isinstance(kernel_size, int | Sequence) or isinstance(kernel_size, str):
        raise TypeError(
            f"kernel_size must be an int or a sequence of ints, got {type(kernel_size).__name__} {kernel_size!r}"
        )
    if not isinstance(kernel_size, int):
        sizes = tuple(kernel_size)
        if not sizes or any(s != sizes[0] for s in sizes):
            raise ValueError(f"kernel_size must be one int or equal ints (square), got kernel_size={kernel_size!r}")
        kernel_size = sizes[0]
    return check_int("kernel_size", kernel_size, minimum=1)


def _odd_kernel(kernel_size: int | Sequence[int]) -> int:
    kernel_size = _square_kernel(kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd with padding=None (same padding), got kernel_size={kernel_size}; "
            "give an explicit padding for an even kernel"
        )
    return kernel_size


def _padding(padding: int | Sequence[int] | None, kernel_size: int, dilation: int, dims: int) -> int:
    """The layer's zero padding on every side; only 2-D layers take one other than ``dilation * (k // 2)``."""
    same = dilation * (kernel_size // 2)
    if padding is None:
        _odd_kernel(kernel_size)
        return same
    pads = (padding,) if isinstance(padding, int) else tuple(padding)
    if not pads or any(p != pads[0] for p in pads) or any(isinstance(p, bool) or not isinstance(p, int) for p in pads):
        raise ValueError(f"padding must be None, one int or equal ints, got padding={padding!r}")
    if pads[0] < 0:
        raise ValueError(f"padding must be >= 0, got padding={padding!r}")
    if dims == 1 and (pads[0] != same or kernel_size % 2 == 0):
        raise ValueError(
            f"padding must be dilation * (kernel_size // 2) = {same} with an odd kernel_size for a 1-D KW "
            f"layer (it pads to keep the size), got kernel_size={kernel_size}, padding={padding!r}"
        )
    return pads[0]


class _KWLayer(Aggregation):
    """A KW convolution: ``Aggregation(Sliding(k, dilation, stride=stride), WarehouseKernel(...))``, or
    ``Aggregation(Point(), WarehouseKernel(C k k, ...))`` over the unfolded input where a centred window
    cannot express the geometry."""

    dimension: ClassVar[int] = 2

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | Sequence[int] = 1,
        stride: int = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        warehouse_id: int | None = None,
        warehouse_manager: Warehouse | None = None,
        *,
        path: str = "auto",
    ) -> None:
        k = _square_kernel(kernel_size)
        check_int("stride", stride, minimum=1)
        check_int("dilation", dilation, minimum=1)
        pad = _padding(padding, k, dilation, self.dimension)
        if not isinstance(warehouse_manager, Warehouse):
            raise TypeError(
                f"warehouse_manager must be a Warehouse (use Warehouse.reserve), got {type(warehouse_manager).__name__}"
            )
        check_int("in_planes", in_planes, minimum=1)
        # A centred k x k window pads d * (k // 2); any other geometry is a 1x1 aggregation of patches,
        # exact on every path (the paths take centred windows only).
        unfold = k % 2 == 0 or pad != dilation * (k // 2)
        channels = in_planes * k * k if unfold else in_planes
        source = WarehouseKernel(channels, out_planes, groups, bias, self.dimension)
        neighbourhood = Point() if unfold else Sliding(k, dilation, stride=stride)
        super().__init__(neighbourhood, source, path=path)
        self.in_planes, self.out_planes, self.groups = in_planes, out_planes, groups
        self.kernel_size = (k,) * self.dimension
        self.stride, self.dilation = stride, dilation
        self.padding = (pad,) * self.dimension
        self.warehouse_id = warehouse_id
        # A list, so that the manager is not registered once more as a submodule of every layer.
        self.warehouse_manager = [warehouse_manager]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` ``(B, C, H, W)`` into ``(B, O, Ho, Wo)``."""
        if not self.unfold:
            return super().forward(x)
        check_input(x, self.in_planes, False)
        k, s, p, d = self.kernel_size[0], self.stride, self.padding[0], self.dilation
        ho, wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n in x.shape[2:])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"x of size {tuple(x.shape[2:])} is smaller than the dilated kernel ({d * (k - 1) + 1}) "
                f"after padding {p}"
            )
        patches = F.unfold(x, k, d, p, s).view(x.shape[0], -1, ho, wo)
        self.attention_input = x
        try:
            return super().forward(patches)
        finally:
            self.attention_input = None


class KWConv2d(_KWLayer):
    """A KernelWarehouse 2-D convolution (Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic
    Convolution", ICML 2024, arXiv:2308.08361).

    Axes: sparsity, sliding ``k x k`` with dense channel mixing in cells; sharing, across positions
    and, through the warehouse, across layers; dynamism, per sample (linear-normalised attention over
    the warehouse's cells).

    Replaces ``nn.Conv2d(in_planes, out_planes, k, stride, padding, dilation, groups, bias)`` with a
    square kernel and zero padding. Build it with
    [`Warehouse.reserve`][unifiedops.warehouse.Warehouse.reserve]; it computes nothing until its
    warehouse is stored and allocated. ``bias`` (zeros) is added after the convolution; ``attention``
    is a [`WarehouseAttention`][unifiedops.warehouse.WarehouseAttention]. The execution path is
    ``batched_conv`` (one grouped ``F.conv2d`` with the batch folded into the groups), or
    ``reference``.

    With an odd ``k`` and ``padding = dilation * (k // 2)`` (the default) the layer is a sliding
    ``k x k`` window. Any other geometry (an even kernel, such as ConvNeXt's ``4 x 4`` stride-4 stem
    and ``2 x 2`` stride-2 downsampling, or another padding) runs as a ``1 x 1`` aggregation over the
    ``C k k`` channels of the input's patches (``F.unfold``): exact, and as cheap as the convolution
    when ``stride = k`` (the patches do not overlap); overlapping patches cost ``k^2 / stride^2``
    copies of the input. The attention pools the layer's input in both cases.

    Args:
        in_planes: Input channels ``C``.
        out_planes: Output channels ``O``.
        kernel_size: Kernel size ``k`` (square).
        stride: Stride.
        padding: Zero padding on every side; ``None`` is ``dilation * (k // 2)`` (odd ``k`` only).
        dilation: Dilation.
        groups: Channel groups.
        bias: Whether to add a per-channel bias.
        warehouse_id: Index of the layer's warehouse in the manager.
        warehouse_manager: The [`Warehouse`][unifiedops.warehouse.Warehouse].
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, H, W) -> (B, O, Ho, Wo)`` with ``nn.Conv2d``'s ``Ho = (H + 2 p - d (k - 1) - 1) // s + 1``
        (``ceil(H / stride)`` with the default padding).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from unifiedops.warehouse import Warehouse
        >>> net = nn.Module()
        >>> net.warehouse_manager = Warehouse(sharing_range=("layer", "conv"))
        >>> net.conv1 = net.warehouse_manager.reserve(16, 32, 3, warehouse_name="stage0_layer0_conv0")
        >>> net.conv2 = net.warehouse_manager.reserve(32, 32, 3, stride=2, warehouse_name="stage0_layer1_conv0")
        >>> net.warehouse_manager.build(net)
        >>> net.warehouse_manager.weights[0].shape  # 32x16 cells; m = 1*1*9 + 1*2*9, one cell each at 1x
        torch.Size([27, 32, 16, 1, 1])
        >>> net.conv2(net.conv1(torch.randn(2, 16, 8, 8))).shape
        torch.Size([2, 32, 4, 4])
        >>> stem = Warehouse().reserve(3, 8, 4, stride=4, padding=0)  # a ConvNeXt stem: patches
        >>> stem.kernel_size, stem.padding, stem.neighbourhood
        ((4, 4), (0, 0), Point())
    """


class KWConv1d(_KWLayer):
    """A KernelWarehouse 1-D convolution: ``nn.Conv1d`` with odd kernels, same padding, any stride.

    The same layer as [`KWConv2d`][unifiedops.warehouse.KWConv2d] on a ``(B, C, L, 1)`` view of the
    input. With ``k = 1`` that is exactly a 1x1 aggregation. With ``k > 1`` the assembled 1-D kernel
    is the middle column of a ``k x k`` kernel (zeros elsewhere), which is exact but costs ``k``
    times the multiply-adds of a native 1-D convolution and ``k`` times the assembled-kernel memory.

    Args:
        in_planes: Input channels ``C``.
        out_planes: Output channels ``O``.
        kernel_size: Odd kernel size ``k``.
        stride: Stride.
        padding: ``None`` or ``dilation * (k // 2)``.
        dilation: Dilation.
        groups: Channel groups.
        bias: Whether to add a per-channel bias.
        warehouse_id: Index of the layer's warehouse in the manager.
        warehouse_manager: The [`Warehouse`][unifiedops.warehouse.Warehouse].
        path: Execution path (``"auto"`` is ``"batched_conv"``).

    Shape:
        ``(B, C, L) -> (B, O, ceil(L / stride))``.
    """

    dimension: ClassVar[int] = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve a sequence, as ``nn.Conv1d`` with same padding.

        Args:
            x: ``(B, C, L)``.

        Returns:
            ``(B, O, Lo)``, ``Lo = ceil(L / stride)``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"x must be 3-D (B, C, L), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
        if x.shape[2] == 0:
            raise ValueError(f"x must have L >= 1 (B, C, L), got shape {tuple(x.shape)}")
        return super().forward(x.unsqueeze(-1)).squeeze(-1)


class KWLinear(nn.Module):
    """A KernelWarehouse linear layer: ``nn.Linear`` on ``(B, ..., C)``, as the official ``KWLinear``.

    A 1x1 [`KWConv1d`][unifiedops.warehouse.KWConv1d] (attribute ``conv``, so keys are
    ``conv.attention.*`` and ``conv.bias``) over the tokens of each sample: the attention pools over
    all of a sample's tokens.

    Args:
        in_planes: Input features ``C``.
        out_planes: Output features ``O``.
        bias: Whether to add a bias.
        warehouse_id: Index of the layer's warehouse in the manager.
        warehouse_manager: The [`Warehouse`][unifiedops.warehouse.Warehouse].
        path: Execution path of the convolution.

    Shape:
        ``(B, ..., C) -> (B, ..., O)``.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        bias: bool = True,
        warehouse_id: int | None = None,
        warehouse_manager: Warehouse | None = None,
        *,
        path: str = "auto",
    ) -> None:
        super().__init__()
        # nn.Linear's attribute names, for code that sizes heads from a classifier.
        self.in_features, self.out_features = in_planes, out_planes
        self.conv = KWConv1d(
            in_planes,
            out_planes,
            1,
            bias=bias,
            warehouse_id=warehouse_id,
            warehouse_manager=warehouse_manager,
            path=path,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map the last axis to ``O`` features, as ``nn.Linear``; the attention pools each sample's tokens.

        Args:
            x: ``(B, ..., C)``.

        Returns:
            ``(B, ..., O)``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"x must be (B, ..., C) with at least 2 dimensions, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x has {x.shape[-1]} features but the layer was built for in_planes={self.in_features} "
                f"(layout (B, ..., C)), got shape {tuple(x.shape)}"
            )
        if 0 in x.shape[1:-1]:
            raise ValueError(f"x must have at least one token (B, ..., C), got shape {tuple(x.shape)}")
        shape = x.shape
        y = self.conv(x.reshape(shape[0], math.prod(shape[1:-1]), shape[-1]).transpose(1, 2))
        return y.transpose(1, 2).reshape(*shape[:-1], y.shape[1])


_KW_CLASSES = {"conv1d": KWConv1d, "conv2d": KWConv2d}
_PLAIN_CONVS = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d}


_KAIMING_FAN_OUT = functools.partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")


# --- the manager --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehousePlan:
    """The size of one warehouse, from the layers that share it.

    Attributes:
        name: The fused warehouse name.
        layer_shapes: ``(out, in/groups, *k)`` of each layer, in reservation order.
        cell_shape: ``(cell_out, cell_in, *cell_kernel)``.
        mixtures: ``m`` of each layer.
        cells: ``n = max(int(sum(m) * cell_num_ratio), 1)``.
    """

    name: str
    layer_shapes: tuple[tuple[int, ...], ...]
    cell_shape: tuple[int, ...]
    mixtures: tuple[int, ...]
    cells: int

    @property
    def numel(self) -> int:
        """Parameters of the warehouse."""
        return self.cells * math.prod(self.cell_shape)


def _per_warehouse(name: str, value, count: int) -> list:
    """A scalar or a 1- or ``count``-long sequence, as one value per warehouse."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * count
    if len(value) == 1:
        return list(value) * count
    if len(value) != count:
        raise ValueError(
            f"{name} must be a scalar or a sequence of 1 or {count} values (one per warehouse), got {value!r}"
        )
    return list(value)


def _check_ratio(name: str, value) -> None:
    values = [value] if isinstance(value, str) or not isinstance(value, Sequence) else list(value)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ValueError(
                f"{name} must be a positive number or a sequence of them (one per warehouse), got {value!r}"
            )


def _sharing_range(value) -> tuple[str, ...]:
    if isinstance(value, str):
        # The official JSON configs pass a string such as "layer_conv", which the official code
        # iterates character by character; splitting it keeps the same grouping with whole prefixes.
        value = value.split("_")
    if not isinstance(value, Sequence) or not all(isinstance(p, str) and p for p in value):
        raise TypeError(f"sharing_range must be a sequence of non-empty name prefixes, got {value!r}")
    return tuple(value)


class Warehouse(nn.Module):
    """The KernelWarehouse manager: which layers share a warehouse, its cells, and their allocation
    (Li & Yao, "KernelWarehouse: Rethinking the Design of Dynamic Convolution", ICML 2024,
    arXiv:2308.08361). The official ``Warehouse_Manager``.

    Layers are named by ``_``-separated tokens (``stage1_layer2_conv0``); every token that starts with
    a prefix in ``sharing_range`` is replaced by that prefix, and layers with equal fused names share
    a warehouse: with ``("layer", "conv")`` all layers of a stage share ``stage1_layer_conv``.

    Per warehouse: ``cell_out = max(int(gcd(out) * cell_outplane_ratio), 1)`` and ``cell_in =
    max(int(gcd(in/groups) * cell_inplane_ratio), 1)`` over its layers; cells are ``1 x 1`` in space
    with ``spatial_partition`` (else whole kernels, equal across the layers); a layer is cut into
    ``m = (out / cell_out) (in / groups / cell_in) (taps per cell)`` mixtures; the warehouse holds
    ``n = max(int(sum(m) * cell_num_ratio), 1)`` cells, ``weights[i]`` of shape ``(n, cell_out,
    cell_in, *cell_kernel)``. With ``cell_num_ratio = 1`` and ratios 1 the warehouse has exactly the
    parameters of the layers' kernels.

    Every ratio is a scalar or a sequence with one value per warehouse (in order of first reservation).

    Args:
        reduction: Hidden width ratio of the attentions.
        cell_num_ratio: Cells per mixture; ``>= 1`` gives every mixture a cell of its own at
            initialisation; ``< 1`` (``1 / r``) shares; then ``cell_in/outplane_ratio`` should be
            ``<= cell_num_ratio`` (the official 1/2x and 1/4x configs use 0.5), or the allocation
            claims a different number of cells than the warehouse has and raises.
        cell_inplane_ratio: Cell input channels over the gcd of the layers' ``in / groups``.
        cell_outplane_ratio: Cell output channels over the gcd of the layers' ``out``.
        sharing_range: Name prefixes that collapse, a sequence of strings. A single string is split
            on ``_`` (``"layer_conv"`` means ``("layer", "conv")``); the official code iterates a string
            character by character, which groups the official configs' layers the same way but gives
            other warehouse names.
        nonlocal_basis_ratio: Basis reduction of the other layers' cells in each attention (off at 1).
        norm_layer: Normalisation of the attentions' hidden layer: ``nn.BatchNorm1d`` or e.g. ``nn.LayerNorm``.
        spatial_partition: Whether cells are single taps (``True``) or whole kernels.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from unifiedops.warehouse import Warehouse, TemperatureSchedule
        >>> net = nn.Module()
        >>> net.warehouse_manager = Warehouse(cell_num_ratio=4)
        >>> net.fc = net.warehouse_manager.reserve(64, 32, layer_type="linear")
        >>> net.warehouse_manager.build(net)
        >>> [p.shape for p in net.warehouse_manager.weights]
        [torch.Size([4, 32, 64, 1])]
        >>> schedule = TemperatureSchedule(iters_per_epoch=100)
        >>> schedule.step(net)  # once per training iteration
        0.9995
        >>> net.fc(torch.randn(2, 7, 64)).shape
        torch.Size([2, 7, 32])
    """

    def __init__(
        self,
        reduction: Ratio = 0.0625,
        cell_num_ratio: Ratio = 1,
        cell_inplane_ratio: Ratio = 1,
        cell_outplane_ratio: Ratio = 1,
        sharing_range: Sequence[str] | str = (),
        nonlocal_basis_ratio: Ratio = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm1d,
        spatial_partition: bool | Sequence[bool] = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("reduction", reduction),
            ("cell_num_ratio", cell_num_ratio),
            ("cell_inplane_ratio", cell_inplane_ratio),
            ("cell_outplane_ratio", cell_outplane_ratio),
            ("nonlocal_basis_ratio", nonlocal_basis_ratio),
        ):
            _check_ratio(name, value)
        if not callable(norm_layer):
            raise TypeError(f"norm_layer must be callable (e.g. nn.BatchNorm1d), got {norm_layer!r}")
        self.sharing_range = _sharing_range(sharing_range)
        self.reduction = reduction
        self.cell_num_ratio = cell_num_ratio
        self.cell_inplane_ratio = cell_inplane_ratio
        self.cell_outplane_ratio = cell_outplane_ratio
        self.nonlocal_basis_ratio = nonlocal_basis_ratio
        self.norm_layer = norm_layer
        self.spatial_partition = spatial_partition
        self.warehouse_list: dict[str, list[tuple[int, ...]]] = {}
        self.weights = nn.ParameterList()

    def fuse_warehouse_name(self, warehouse_name: str) -> str:
        """The warehouse a layer name belongs to: tokens starting with a sharing prefix become it.

        Args:
            warehouse_name: A ``_``-separated layer name.

        Returns:
            The fused name.
        """
        tokens = []
        for token in warehouse_name.split("_"):
            for prefix in self.sharing_range:
                if token.startswith(prefix):
                    token = prefix
            tokens.append(token)
        return "_".join(tokens)

    def reserve(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | Sequence[int] = 1,
        stride: int = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        warehouse_name: str = "default",
        enabled: bool = True,
        layer_type: str = "conv2d",
    ) -> nn.Module:
        """A layer in place of ``nn.Conv2d`` (``nn.Conv1d``, ``nn.Linear``), recorded for its warehouse.

        Args:
            in_planes: Input channels.
            out_planes: Output channels.
            kernel_size: Kernel size (ignored for ``"linear"``); odd unless ``padding`` is given.
            stride: Stride.
            padding: ``None`` (same: ``dilation * (k // 2)``) or any zero padding for ``"conv2d"``
                (``nn.Conv2d``'s geometry, e.g. ``kernel_size=4, stride=4, padding=0``); ``"conv1d"``
                takes same padding only, and a plain layer (``enabled=False``) any padding.
            dilation: Dilation.
            groups: Channel groups.
            bias: Whether the layer has a bias.
            warehouse_name: ``_``-separated layer name; see ``sharing_range``.
            enabled: ``False`` returns the plain PyTorch layer instead.
            layer_type: One of [`LAYER_TYPES`][unifiedops.warehouse.LAYER_TYPES].

        Returns:
            A [`KWConv2d`][unifiedops.warehouse.KWConv2d], [`KWConv1d`][unifiedops.warehouse.KWConv1d] or
            [`KWLinear`][unifiedops.warehouse.KWLinear] (or the plain layer).
        """
        check_choice("layer_type", layer_type, LAYER_TYPES)
        check_int("in_planes", in_planes, minimum=1)
        check_int("out_planes", out_planes, minimum=1)
        if not isinstance(warehouse_name, str) or not warehouse_name:
            raise TypeError(f"warehouse_name must be a non-empty str, got {warehouse_name!r}")
        if not enabled:
            if layer_type == "linear":
                return nn.Linear(in_planes, out_planes, bias=bias)
            k = _odd_kernel(kernel_size) if padding is None else kernel_size
            pad = dilation * (k // 2) if padding is None else padding
            return _PLAIN_CONVS[layer_type](in_planes, out_planes, kernel_size, stride, pad, dilation, groups, bias)
        if len(self.weights):
            raise RuntimeError("reserve() after store(): reserve every layer before storing the warehouses")
        name = self.fuse_warehouse_name(warehouse_name)
        warehouse_id = (
            list(self.warehouse_list).index(name) if name in self.warehouse_list else len(self.warehouse_list)
        )
        kw = dict(warehouse_id=warehouse_id, warehouse_manager=self)
        if layer_type == "linear":
            layer = KWLinear(in_planes, out_planes, bias, **kw)
            conv = layer.conv
        else:
            layer = conv = _KW_CLASSES[layer_type](
                in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias, **kw
            )
        self.warehouse_list.setdefault(name, []).append((out_planes, in_planes // groups, *conv.kernel_size))
        return layer

    def plan(self) -> list[WarehousePlan]:
        """The warehouses that [`store`][unifiedops.warehouse.Warehouse.store] creates, without creating them.

        Returns:
            One [`WarehousePlan`][unifiedops.warehouse.WarehousePlan] per warehouse, in order of first reservation.
        """
        count = len(self.warehouse_list)
        spatial = _per_warehouse("spatial_partition", self.spatial_partition, count)
        num_ratio = _per_warehouse("cell_num_ratio", self.cell_num_ratio, count)
        in_ratio = _per_warehouse("cell_inplane_ratio", self.cell_inplane_ratio, count)
        out_ratio = _per_warehouse("cell_outplane_ratio", self.cell_outplane_ratio, count)
        plans = []
        for idx, (name, shapes) in enumerate(self.warehouse_list.items()):
            dims = {len(s) for s in shapes}
            if len(dims) != 1:
                raise ValueError(f"warehouse {name!r} mixes 1-D and 2-D layers; give them different names")
            out_gcd = math.gcd(*(s[0] for s in shapes))
            in_gcd = math.gcd(*(s[1] for s in shapes))
            kernels = {s[2:] for s in shapes}
            if not spatial[idx] and len(kernels) != 1:
                raise ValueError(
                    f"spatial_partition=False needs one kernel size per warehouse; {name!r} has {sorted(kernels)}"
                )
            cell_out = max(int(out_gcd * out_ratio[idx]), 1)
            cell_in = max(int(in_gcd * in_ratio[idx]), 1)
            cell_kernel = (1,) * (dims.pop() - 2) if spatial[idx] else shapes[0][2:]
            mixtures = []
            for s in shapes:
                if s[0] % cell_out or s[1] % cell_in:
                    raise ValueError(
                        f"warehouse {name!r}: cells of {cell_out}x{cell_in} channels do not tile a layer of "
                        f"{s[0]}x{s[1]}; use cell_outplane_ratio/cell_inplane_ratio that divide the gcds"
                    )
                taps = math.prod(k // c for k, c in zip(s[2:], cell_kernel, strict=True))
                mixtures.append(s[0] // cell_out * (s[1] // cell_in) * taps)
            cells = max(int(sum(mixtures) * num_ratio[idx]), 1)
            plans.append(WarehousePlan(name, tuple(shapes), (cell_out, cell_in, *cell_kernel), tuple(mixtures), cells))
        return plans

    def store(self) -> None:
        """Create the warehouses, ``weights[i]`` ``(n, cell_out, cell_in, *cell_kernel)`` (standard normal
        until [`allocate`][unifiedops.warehouse.Warehouse.allocate] initialises them)."""
        if len(self.weights):
            raise RuntimeError("store() was already called")
        for p in self.plan():
            self.weights.append(nn.Parameter(torch.randn(p.cells, *p.cell_shape)))

    @torch.no_grad()
    def allocate(
        self,
        network: nn.Module,
        init: Callable[[torch.Tensor], object] = _KAIMING_FAN_OUT,
    ) -> None:
        """Give every KW layer of ``network`` (in module order) its attention and its cells.

        Each layer owns the next cells of its warehouse (one per mixture, ``int(cell_num_ratio)`` per
        mixture, or one per ``r`` mixtures); ``init`` is applied to them as one
        ``(cells * cell_out, cell_in, *cell_kernel)`` tensor, as in the official code.

        Args:
            network: The module holding the layers reserved from this warehouse.
            init: In-place initialisation of a layer's cells.

        Raises:
            RuntimeError: If the layers do not claim exactly the cells of every warehouse.
        """
        if not len(self.weights):
            raise RuntimeError("allocate() before store(): call store() first, or build(network)")
        plans = self.plan()
        count = len(plans)
        reduction = _per_warehouse("reduction", self.reduction, count)
        num_ratio = _per_warehouse("cell_num_ratio", self.cell_num_ratio, count)
        basis = _per_warehouse("nonlocal_basis_ratio", self.nonlocal_basis_ratio, count)
        ends = [0] * count
        for layer in network.modules():
            if not isinstance(layer, _KWLayer) or layer.warehouse_manager[0] is not self:
                continue
            idx = layer.warehouse_id
            cells = self.weights[idx]
            n, cell_shape = cells.shape[0], tuple(cells.shape[1:])
            groups_spatial = math.prod(k // c for k, c in zip(layer.kernel_size, cell_shape[2:], strict=True))
            lay = CellLayout(
                n,
                cell_shape,
                layer.out_planes // cell_shape[0],
                layer.in_planes // layer.groups // cell_shape[1],
                groups_spatial,
            )
            start = ends[idx]
            layer.attention = WarehouseAttention(
                layer.in_planes, reduction[idx], n, lay.mixtures, self.norm_layer, num_ratio[idx], basis[idx], start
            ).to(cells.device, cells.dtype)
            layer.cell_layout = lay
            end = layer.attention.init_temperature(start, num_ratio[idx])
            if end > n:
                raise RuntimeError(self._claim_error(plans[idx].name, end, n))
            init(cells[start:end].view(-1, *cell_shape[1:]))
            ends[idx] = end
        for idx, p in enumerate(plans):
            if ends[idx] != p.cells:
                raise RuntimeError(self._claim_error(p.name, ends[idx], p.cells))

    @staticmethod
    def _claim_error(name: str, claimed: int, cells: int) -> str:
        return (
            f"the layers of warehouse {name!r} claim {claimed} cells but it has {cells}: every layer "
            "reserved from this manager must be inside the network passed to allocate(), and with "
            "cell_num_ratio < 1 the cell_inplane/outplane ratios must be <= cell_num_ratio"
        )

    def build(self, network: nn.Module) -> None:
        """[`store`][unifiedops.warehouse.Warehouse.store], then
        [`allocate`][unifiedops.warehouse.Warehouse.allocate] ``network`` (the simpler API).

        Args:
            network: The module holding the reserved layers.
        """
        self.store()
        self.allocate(network)

    def take_cell(self, warehouse_idx: int) -> torch.Tensor:
        """The cells of one warehouse (the official method name).

        Args:
            warehouse_idx: Index of the warehouse, in order of first reservation.

        Returns:
            ``weights[warehouse_idx]``, ``(n, cell_out, cell_in, *cell_kernel)``.
        """
        return self.weights[warehouse_idx]

    def extra_repr(self) -> str:
        return f"warehouses={list(self.warehouse_list)}, sharing_range={self.sharing_range}"


# --- temperature --------------------------------------------------------------------------------


def set_temperature(
    model: nn.Module, tau: float, kind: type[nn.Module] | tuple[type[nn.Module], ...] = WarehouseAttention
) -> int:
    """Set the temperature of every attention of type ``kind`` in ``model``.

    Args:
        model: The network.
        tau: The temperature.
        kind: Attention class(es) to update: KW layers' by default;
            [`MixtureAttention`][unifiedops.mixture.MixtureAttention] for DY-Conv.

    Returns:
        How many attentions were updated (0 usually means the wrong model or ``kind``).
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float):
        raise TypeError(f"tau must be a number, got {tau!r}")
    count = 0
    for m in model.modules():
        if isinstance(m, kind):
            m.update_temperature(tau)
            count += 1
    return count


class TemperatureSchedule:
    """The linear temperature decay of the official training loop, stepped once per iteration.

    ``tau(t) = end + max(0, (init - end) (T - t) / max(T, 1))`` with ``T = iters_per_epoch *
    temp_epochs`` and ``t`` the global iteration, counted from 1: KernelWarehouse decays ``tau``
    from 1 to 0 over the first 20 epochs (the official ``--temp_init_value 1.0 --temp_epoch 20``;
    MobileNetV2 configs use 15 epochs). DY-Conv uses the same form from 30 to 1 over 10 epochs (see
    [`dyconv_schedule`][unifiedops.mixture.dyconv_schedule]).

    Args:
        iters_per_epoch: Iterations per epoch.
        temp_epochs: Epochs of the decay.
        init: ``tau`` at ``t = 0``.
        end: ``tau`` after the decay.
        kind: Attention class(es) [`step`][unifiedops.warehouse.TemperatureSchedule.step] updates.

    Examples:
        >>> from unifiedops.warehouse import TemperatureSchedule
        >>> s = TemperatureSchedule(iters_per_epoch=10, temp_epochs=2)
        >>> s.value(1), s.value(10), s.value(20), s.value(30)
        (0.95, 0.5, 0.0, 0.0)
    """

    def __init__(
        self,
        iters_per_epoch: int,
        temp_epochs: float = 20,
        init: float = 1.0,
        end: float = 0.0,
        kind: type[nn.Module] | tuple[type[nn.Module], ...] = WarehouseAttention,
    ) -> None:
        check_int("iters_per_epoch", iters_per_epoch, minimum=1)
        if isinstance(temp_epochs, bool) or not isinstance(temp_epochs, int | float) or temp_epochs < 0:
            raise ValueError(f"temp_epochs must be a number >= 0, got temp_epochs={temp_epochs!r}")
        self.iters_per_epoch = iters_per_epoch
        self.temp_epochs = temp_epochs
        self.init = float(init)
        self.end = float(end)
        self.kind = kind
        self.iteration = 0

    def value(self, iteration: int) -> float:
        """``tau`` at global iteration ``iteration`` (the first training iteration is 1).

        Args:
            iteration: Global iteration, ``epoch * iters_per_epoch + step + 1``.

        Returns:
            The temperature.
        """
        total = self.iters_per_epoch * self.temp_epochs
        return self.end + max(0.0, (self.init - self.end) * ((total - iteration) / max(1.0, total)))

    def step(self, model: nn.Module) -> float:
        """Advance one iteration and set the new ``tau`` on every attention of ``model``.

        Args:
            model: The network.

        Returns:
            The temperature set.
        """
        self.iteration += 1
        tau = self.value(self.iteration)
        set_temperature(model, tau, self.kind)
        return tau
