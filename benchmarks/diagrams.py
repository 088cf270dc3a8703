"""The docs' diagrams that are drawn, not measured: the relation graph and the presets on the axes.

Both are SVG files with clickable nodes: each operator links to its section of the presets
gallery. The links are relative to the SVG file, which mkdocs serves from ``img/``, so they hold
wherever the site is hosted. Pages embed them with ``<object>`` (an ``<img>`` would not follow
links); every link opens in the page, not in the embedded frame (``target="_top"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from unifiedops.catalog import PRESETS

__all__ = ["EDGES", "NODES", "axes_chart", "relation_graph"]

PRESETS_PAGE = "../presets/"
"""The presets gallery, relative to ``img/`` in the built site."""

# Colours of the three axes, shared by both diagrams and the Concepts text.
AXIS_COLOURS = {"sparsity": "#1f77b4", "sharing": "#2ca02c", "dynamism": "#d62728"}


@dataclass(frozen=True)
class Node:
    """One operator of the relation graph.

    Attributes:
        key: Short id used by the edges.
        label: Text in the box (lines separated by ``\\n``).
        xy: Centre in axis units (x to the right, y up).
        link: Anchor in the presets gallery (``"dwconv"``) or a page path, or ``None`` when the
            library has no preset for it.
    """

    key: str
    label: str
    xy: tuple[float, float]
    link: str | None


@dataclass(frozen=True)
class Edge:
    """One step of the relation graph: what changes from one operator to the next.

    Attributes:
        source: Key of the node the step starts from.
        target: Key of the node it leads to.
        label: What the step changes.
        axis: The axis it moves along (a key of ``AXIS_COLOURS``), or ``"similar"`` for the
            paper's equivalence claim (drawn dashed, without an arrow head).
    """

    source: str
    target: str
    label: str
    axis: str


# The relation graph of Han et al., "On the Connection between Local Attention and Dynamic Depth-wise
# Convolution" (ICLR 2022, arXiv:2106.04263, fig. 1), restricted to the operators this library has.
NODES: tuple[Node, ...] = (
    Node("mlp", "MLP\n(every position, every channel;\nno preset: weights fix H×W)", (0.0, 2.0), None),
    Node("sep_mlp", "separable MLP\n(MLP-Mixer, ResMLP;\nno preset)", (1.0, 3.0), None),
    Node("conv", "convolution\nDenseKernel source", (0.95, 1.0), "../api/weights/#unifiedops.weights.DenseKernel"),
    Node("dw", "depth-wise convolution\nDWConv", (2.05, 1.0), "dwconv"),
    Node("vit", "ViT attention\nGlobalAttention", (2.0, 3.0), "globalattention"),
    Node("window", "local ViT: window\nWindowAttention (Swin)", (3.0, 3.35), "windowattention"),
    Node("na", "local ViT: neighbourhood\nNeighborhoodAttention (NAT)", (3.0, 2.65), "neighborhoodattention"),
    Node("dyn_dw", "dynamic depth-wise conv\nDynamicDWConv (DWNet)", (3.0, 0.6), "dynamicdwconv"),
    Node(
        "idyn_dw",
        "inhomogeneous dynamic DW conv\n= involution\nInhomogeneousDWConv",
        (3.0, 1.55),
        "inhomogeneousdwconv",
    ),
)
"""The nodes, placed left (dense, static) to right (sparse, dynamic)."""

EDGES: tuple[Edge, ...] = (
    Edge("mlp", "conv", "locality", "sparsity"),
    Edge("mlp", "sep_mlp", "separate dimensions", "sparsity"),
    Edge("conv", "dw", "channels apart", "sparsity"),
    Edge("sep_mlp", "dw", "locality", "sparsity"),
    Edge("sep_mlp", "vit", "weights from q·k", "dynamism"),
    Edge("vit", "window", "locality", "sparsity"),
    Edge("vit", "na", "", "sparsity"),
    Edge("dw", "dyn_dw", "per-sample weights", "dynamism"),
    Edge("dw", "idyn_dw", "per-position weights", "dynamism"),
    Edge("na", "idyn_dw", "weights from a linear map of i, not q·k", "dynamism"),
)
"""The steps; each moves along one axis."""


def _href(link: str) -> str:
    return link if "/" in link else f"{PRESETS_PAGE}#{link}"


def _save_svg(figure: Figure, path: Path) -> Path:
    """Write the figure as SVG whose links open in the page that embeds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})  # no date: re-runs give identical files
    text = path.read_text(encoding="utf-8")
    # matplotlib opens links in a new tab; in the docs they should replace the page.
    text = text.replace('target="_blank"', 'target="_top"')
    path.write_text(text, encoding="utf-8")
    return path


def relation_graph(path: str | Path) -> Path:
    """Draw the relation graph of the DWNet paper with each node linked to its preset.

    Args:
        path: The SVG file to write (its folder is created).

    Returns:
        The path written.
    """
    figure = Figure(figsize=(11.5, 5.4))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(-0.75, 3.8)
    axes.set_ylim(0.25, 3.75)
    axes.axis("off")
    nodes = {node.key: node for node in NODES}
    boxes = {}
    for node in NODES:
        text = axes.text(
            *node.xy,
            node.label,
            ha="center",
            va="center",
            fontsize=8.5,
            color="#0b3d91" if node.link else "#555555",
            bbox=dict(
                boxstyle="round,pad=0.45",
                facecolor="#e8f0fe" if node.link else "#f2f2f2",
                edgecolor="#0b3d91" if node.link else "#999999",
            ),
            url=_href(node.link) if node.link else None,
            zorder=3,
        )
        boxes[node.key] = text
    # Draw once so that every box has its final extent; the arrows are clipped at the boxes' edges.
    FigureCanvasAgg(figure).draw()
    for edge in EDGES:
        start, end = nodes[edge.source].xy, nodes[edge.target].xy
        similar = edge.axis == "similar"
        arrow = FancyArrowPatch(
            start,
            end,
            arrowstyle="-" if similar else "-|>",
            mutation_scale=12,
            color=AXIS_COLOURS.get(edge.axis, "#777777"),
            linestyle="--" if similar else "-",
            linewidth=1.4,
            patchA=boxes[edge.source].get_bbox_patch(),
            patchB=boxes[edge.target].get_bbox_patch(),
            shrinkA=1,
            shrinkB=3,
            zorder=3.5,
        )
        axes.add_patch(arrow)
        if edge.label:
            mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
            axes.text(
                *mid,
                edge.label,
                ha="center",
                va="center",
                fontsize=7.5,
                color=AXIS_COLOURS.get(edge.axis, "#777777"),
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"),
                zorder=4,
            )
    used = [axis for axis in AXIS_COLOURS if any(edge.axis == axis for edge in EDGES)]
    for i, axis in enumerate(used):
        colour = AXIS_COLOURS[axis]
        axes.add_patch(FancyBboxPatch((-0.68, 0.35 + 0.22 * i), 0.12, 0.04, boxstyle="square,pad=0", color=colour))
        axes.text(-0.52, 0.37 + 0.22 * i, f"step along {axis}", fontsize=8, va="center")
    return _save_svg(figure, Path(path))


# Columns and rows of the axes chart: the first word of a catalog entry's sparsity, and its dynamism.
SPARSITY_COLUMNS = ("point", "sliding", "window", "global")
DYNAMISM_ROWS = ("static", "per sample", "per position", "attention")


def _cell(sparsity: str, dynamism: str) -> tuple[int, int]:
    column = next(i for i, word in enumerate(SPARSITY_COLUMNS) if sparsity.startswith(word))
    row = next(i for i, word in enumerate(DYNAMISM_ROWS) if dynamism.startswith(word))
    return column, row


def axes_chart(path: str | Path) -> Path:
    """Place every preset of the catalog on the sparsity and dynamism axes, linked to its section.

    A preset sits in the cell of its first (main) aggregation; composites name the others in the
    gallery. Channel sharing (depth-wise, per head, dense) is written beside each name.

    Args:
        path: The SVG file to write (its folder is created).

    Returns:
        The path written.
    """
    cells: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for entry in PRESETS:
        main = entry.sparsity.split("∥")[0]
        channels = next((word for word in ("heads", "depth-wise", "dense") if word in main), "per channel")
        cells.setdefault(_cell(entry.sparsity, entry.dynamism), []).append((entry.name, channels))
    figure = Figure(figsize=(11.5, 5.6))
    axes = figure.add_axes((0.11, 0.08, 0.88, 0.84))
    axes.set_xlim(0, len(SPARSITY_COLUMNS))
    axes.set_ylim(0, len(DYNAMISM_ROWS))
    axes.set_xticks([i + 0.5 for i in range(len(SPARSITY_COLUMNS))], [f"{c}" for c in SPARSITY_COLUMNS])
    axes.set_yticks([i + 0.5 for i in range(len(DYNAMISM_ROWS))], list(DYNAMISM_ROWS))
    axes.set_xlabel("sparsity: which positions a position reads", color=AXIS_COLOURS["sparsity"])
    axes.set_ylabel("dynamism: where the weights come from", color=AXIS_COLOURS["dynamism"])
    axes.set_title("The presets on the axes (channel grouping, the sharing axis, in brackets)", fontsize=10)
    axes.grid(False)
    for i in range(1, len(SPARSITY_COLUMNS)):
        axes.axvline(i, color="#cccccc", linewidth=0.8)
    for i in range(1, len(DYNAMISM_ROWS)):
        axes.axhline(i, color="#cccccc", linewidth=0.8)
    for (column, row), names in cells.items():
        for k, (name, channels) in enumerate(names):
            axes.text(
                column + 0.5,
                row + 1 - (k + 1) / (len(names) + 1),
                f"{name} [{channels}]",
                ha="center",
                va="center",
                fontsize=8,
                color="#0b3d91",
                url=f"{PRESETS_PAGE}#{name.lower()}",
            )
    return _save_svg(figure, Path(path))
