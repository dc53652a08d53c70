"""The block diagram of a backbone: one box per block, as a PNG (``plot_blocks``).

Drawn from an ``architecture_summary.ModelSummary``: box height grows with the output channels
(square root), colour gives the block type, stride-2 blocks carry a red "s2" marker and outline,
residual blocks an arc over the box, SE blocks a purple band; the SSD source endpoints are
labelled. The blocks themselves are described in docs/reference/architectures.md. matplotlib is
imported only when a diagram is drawn.
"""

import math

from mobiledet_jax.models import specs
from mobiledet_jax.models.architecture_summary import TYPE_LABELS, ModelSummary, Row, madds_text

TYPE_COLORS = {
    specs.CONV: "#9e9e9e",
    specs.IBN: "#4c8bf5",
    specs.IBN_NOEXP: "#a9cdfc",
    specs.FUSED: "#f4a742",
    specs.TUCKER: "#5bb36d",
}
SE_COLOR = "#8e44ad"
STRIDE_COLOR = "#c62828"
BOX_WIDTH = 0.8


def plot_blocks(summary: ModelSummary, path: str) -> None:
    """Write a PNG diagram of the backbone blocks of ``summary`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = summary.backbone_rows()
    n = len(blocks)
    max_c = max(b.cout for b in blocks)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * n + 1.5), 4.6))
    sources = {e: f"map {i}" for i, e in enumerate(summary.ssd_sources, start=1)}
    for i, b in enumerate(blocks):
        _draw_block(ax, i, b, 0.45 + 1.55 * math.sqrt(b.cout / max_c), sources)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(-2.2, 2.1)
    ax.axis("off")
    handles = _legend_handles(blocks)
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        fontsize=8,
    )
    t, (h, w) = summary.total, summary.input_hw
    ax.set_title(
        f"SSDLite + {summary.scope} backbone ({summary.model_name}), input {h}x{w}: "
        f"{t['params']:,} params, {madds_text(t)} conv MAdds\n"
        "box height ~ sqrt(output channels); labels: type, kernel, expansion or Tucker ratios",
        fontsize=9,
        pad=30,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _draw_block(ax, i: int, b: Row, height: float, sources: dict[str, str]) -> None:
    """Block ``b`` as box number ``i``: fill, SE band, outline, channels, residual arc, labels."""
    from matplotlib import patches

    x0, y0 = i - BOX_WIDTH / 2, -height / 2
    box = dict(boxstyle="round,pad=0,rounding_size=0.06")
    fill = TYPE_COLORS.get(b.type, "#cccccc")
    ax.add_patch(patches.FancyBboxPatch((x0, y0), BOX_WIDTH, height, fc=fill, lw=0, **box))
    if b.se:
        ax.add_patch(patches.Rectangle((x0, y0), BOX_WIDTH, 0.16, facecolor=SE_COLOR, lw=0))
    ax.add_patch(  # the outline on top of the fill and the SE band
        patches.FancyBboxPatch(
            (x0, y0),
            BOX_WIDTH,
            height,
            fc="none",
            ec=STRIDE_COLOR if b.stride > 1 else "black",
            lw=2.0 if b.stride > 1 else 0.6,
            **box,
        )
    )
    ax.text(i, 0.05, str(b.cout), ha="center", va="center", fontsize=6.5)
    if b.residual:
        ax.add_patch(
            patches.Arc((i, height / 2), BOX_WIDTH * 0.9, 0.35, theta1=0, theta2=180, lw=0.9)
        )
    if b.stride > 1:
        ax.text(i, 1.3, f"s{b.stride}", ha="center", va="center", fontsize=7, color=STRIDE_COLOR)
    if b.endpoint:
        text = b.endpoint + (f"\n{sources[b.endpoint]}" if b.endpoint in sources else "")
        ax.text(i, 1.5, text, ha="center", va="bottom", fontsize=7, weight="bold")
    ax.text(i, -1.15, b.label, ha="center", va="top", fontsize=7, rotation=90)


def _legend_handles(blocks: list[Row]) -> list:
    """One legend entry per block type present, then SE, stride 2 and residual."""
    import matplotlib.pyplot as plt
    from matplotlib import patches

    handles = [
        patches.Patch(facecolor=TYPE_COLORS[t], edgecolor="black", lw=0.6, label=TYPE_LABELS[t])
        for t in specs.BLOCK_TYPES
        if any(b.type == t for b in blocks)
    ]
    if any(b.se for b in blocks):
        handles.append(patches.Patch(facecolor=SE_COLOR, label="SE"))
    handles.append(
        patches.Patch(facecolor="white", edgecolor=STRIDE_COLOR, lw=2.0, label="stride 2")
    )
    if any(b.residual for b in blocks):
        handles.append(
            plt.Line2D([], [], color="black", marker="$\\cap$", ls="", ms=9, label="residual")
        )
    return handles
