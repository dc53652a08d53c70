"""Matplotlib figures of a dataset: class counts, box sizes and aspect ratios, boxes per image and
anchor coverage (the numbers: ``data.statistics`` and ``detection.anchor_coverage``).

Scatter plots draw at most ``max_points`` boxes, a fixed random subset (seed 0) beyond that, so a
COCO-sized dataset plots in seconds and the same data always gives the same picture. Box sizes are
in pixels of the model input; anchor shapes of that input are overlaid as black crosses, so the
gap between where the boxes are and where the anchors are is visible at a glance.
"""

import numpy as np
from matplotlib.figure import Figure

from mobiledet_jax.visualization import draw
from mobiledet_jax.visualization.figures import DPI, new_figure


def _marker_size(n: int) -> float:
    return 12.0 if n < 2000 else 3.0


def _subset(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))


def class_counts_figure(names, images_per_class, boxes_per_class, dpi: int = DPI) -> Figure:
    """Images holding each class and boxes of each class, side by side."""
    n = len(names)
    fig = new_figure(11, float(np.clip(0.25 * n + 1.5, 3, 30)), dpi)
    y = np.arange(n)
    colors = [draw.class_color_float(c) for c in range(n)]
    for i, (values, title) in enumerate(
        ((images_per_class, "images per class"), (boxes_per_class, "boxes per class"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.barh(y, values, color=colors)
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {int(v)}", va="center", fontsize=6)
        ax.set_yticks(y, labels=list(names) if i == 0 else [""] * n, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="count")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def box_size_figure(
    heights,
    widths,
    classes,
    image_size,
    anchor_shapes=None,
    max_points: int = 20_000,
    dpi: int = DPI,
) -> Figure:
    """Left: box width against height; right: sqrt(area) against aspect ratio (w / h); both in
    input pixels of ``image_size``, log scales, points in class colours; ``anchor_shapes``
    (``[S, 2]`` heights, widths in input pixels) as black crosses."""
    heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    keep = _subset(len(heights), max_points)
    h, w = np.maximum(heights[keep], 0.5), np.maximum(widths[keep], 0.5)
    colors = [draw.class_color_float(c) for c in np.asarray(classes)[keep]]
    fig = new_figure(12, 5.5, dpi)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    size = _marker_size(len(keep))
    left.scatter(w, h, s=size, c=colors, alpha=0.5, linewidths=0)
    right.scatter(np.sqrt(w * h), w / h, s=size, c=colors, alpha=0.5, linewidths=0)
    if anchor_shapes is not None and len(anchor_shapes):
        ah, aw = np.asarray(anchor_shapes, np.float64).T
        left.scatter(aw, ah, marker="x", color="black", s=30, label="anchor shapes")
        right.scatter(np.sqrt(aw * ah), aw / ah, marker="x", color="black", s=30, label="anchors")
        left.legend(loc="upper left", fontsize=7)
    sampled = f" ({len(keep)} of {len(heights)} boxes)" if len(keep) < len(heights) else ""
    input_size = f"{image_size[0]}x{image_size[1]} input"
    left.set(xscale="log", yscale="log", xlabel="box width (px)", ylabel="box height (px)")
    left.set_title(f"box sizes in the {input_size}{sampled}", fontsize=9)
    right.set(xscale="log", yscale="log", xlabel="sqrt(box area) (px)", ylabel="aspect w / h")
    right.set_title("size and aspect ratio", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def boxes_per_image_figure(boxes_per_image, dpi: int = DPI) -> Figure:
    """Histogram of training boxes per image (0: negative images)."""
    counts = np.bincount(np.asarray(boxes_per_image, np.int64))
    fig = new_figure(7, 4, dpi)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(counts)), counts, color="tab:blue", width=0.9)
    mean = float(np.mean(boxes_per_image)) if len(boxes_per_image) else 0.0
    ax.set(xlabel="boxes in the image", ylabel="images", title=f"boxes per image (mean {mean:.2f})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def coverage_figure(coverage, max_points: int = 20_000, dpi: int = DPI) -> Figure:
    """Left: fraction of boxes whose best anchor reaches the matched threshold, by size bucket,
    with covered / total and forced-only counts; right: best anchor IoU against box size.
    ``coverage``: a ``detection.anchor_coverage.Coverage``."""
    buckets = coverage.buckets()
    fig = new_figure(12, 5, dpi)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(len(buckets))
    fractions = [0.0 if b["num_boxes"] == 0 else b["fraction_covered"] for b in buckets]
    left.bar(x, fractions, color="tab:green")
    for xi, b, f in zip(x, buckets, fractions, strict=True):
        text = f"{b['num_covered']}/{b['num_boxes']}\nforced {b['num_forced_only']}"
        left.text(xi, f + 0.02, text, ha="center", fontsize=7)
    left.set_xticks(x, labels=[b["bucket"] for b in buckets])
    h, w = coverage.image_size
    t = coverage.matched_threshold
    left.set(ylim=(0, 1.2), xlabel="sqrt(box area) in input pixels", ylabel="fraction covered")
    overall = coverage.overall()
    left.set_title(
        f"boxes with an anchor at IoU >= {t:g} ({h}x{w}, {coverage.num_anchors} anchors): "
        f"{overall['num_covered']}/{overall['num_boxes']}",
        fontsize=9,
    )
    keep = _subset(len(coverage.sizes), max_points)
    right.scatter(
        np.maximum(coverage.sizes[keep], 0.5),
        coverage.best_iou[keep],
        s=_marker_size(len(keep)),
        alpha=0.5,
        linewidths=0,
    )
    right.axhline(t, color="red", linestyle="--", label=f"matched threshold {t:g}")
    for edge in coverage.size_edges:
        right.axvline(edge, color="gray", linestyle=":", linewidth=0.8)
    right.set(xscale="log", ylim=(0, 1), xlabel="sqrt(box area) (px)", ylabel="best anchor IoU")
    right.set_title("best anchor IoU of each box (below the line: forced match only)", fontsize=9)
    right.legend(loc="lower right", fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
