"""Matplotlib figures of an evaluation: PR curves, F1 against score threshold, the confusion
matrix heat map and the per-class AP bar chart; and the helpers every figure uses.

The functions take plain arrays (``evaluation.curves`` and ``evaluation.confusion`` compute them)
and return a ``matplotlib.figure.Figure`` on an Agg canvas; ``save_figure`` writes it as a PNG and
``figure_to_array`` renders it to a uint8 ``[H, W, 3]`` array (TensorBoard images). No pyplot: a
figure is an object, freed with its last reference, safe to draw from any thread.

Classes are drawn in their ``draw.class_color`` colours. With more than ``max_legend`` classes the
per-class curves stay thin and unlabelled (the AP bar chart names them), so a 90-class COCO figure
stays readable.
"""

import io
import os

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mobiledet_jax.visualization import draw

DPI = 100


def new_figure(width: float, height: float, dpi: int = DPI) -> Figure:
    """A figure of ``width x height`` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as uint8 ``[H, W, 3]`` (white background)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def save_figure(fig: Figure, path: str | os.PathLike) -> epath.Path:
    """Writes ``fig`` as a PNG at ``path`` (parent folders created; any ``epath``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def _class_lines(ax, x, rows, names, max_legend: int) -> None:
    labelled = len(names) <= max_legend
    for c, (row, name) in enumerate(zip(rows, names, strict=True)):
        if np.all(np.isnan(row)):
            continue
        ax.plot(
            x,
            row,
            color=draw.class_color_float(c),
            linewidth=1.2 if labelled else 0.6,
            alpha=0.9 if labelled else 0.5,
            label=name if labelled else None,
        )


def pr_curve_figure(
    recall: np.ndarray,
    precision: np.ndarray,
    names,
    title: str,
    max_legend: int = 12,
    dpi: int = DPI,
) -> Figure:
    """Precision against recall: ``precision [C, R]`` at the ``recall [R]`` points (NaN rows:
    classes without ground truth), one line per class and their mean in bold black (its mean
    over R is the mAP of the curves, printed in the legend)."""
    fig = new_figure(7, 5.5, dpi)
    ax = fig.add_subplot()
    _class_lines(ax, recall, precision, names, max_legend)
    valid = ~np.all(np.isnan(precision), axis=1)
    if valid.any():
        mean = precision[valid].mean(axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"mean (AP {mean.mean():.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=2 if len(names) > 6 else 1)
    fig.tight_layout()
    return fig


def f1_threshold_figure(
    thresholds: np.ndarray,
    per_class_f1: np.ndarray,
    names,
    overall: dict,
    best: dict,
    title: str = "F1 against score threshold (IoU 0.5)",
    max_legend: int = 12,
    dpi: int = DPI,
) -> Figure:
    """F1 per class (thin) and over all classes (bold black) against the score threshold, with
    the overall precision and recall dashed and the best overall threshold marked.

    ``per_class_f1 [C, T]`` and ``overall["precision" | "recall" | "f1"] [T]`` at ``thresholds
    [T]``; ``best``: ``{"threshold", "f1", "precision", "recall"}``."""
    fig = new_figure(7, 5.5, dpi)
    ax = fig.add_subplot()
    _class_lines(ax, thresholds, per_class_f1, names, max_legend)
    ax.plot(thresholds, overall["f1"], color="black", linewidth=2.5, label="F1 (all classes)")
    ax.plot(thresholds, overall["precision"], "--", color="tab:blue", label="precision (all)")
    ax.plot(thresholds, overall["recall"], "--", color="tab:orange", label="recall (all)")
    if best["f1"] > 0:
        t = best["threshold"]
        ax.axvline(t, color="gray", linestyle=":")
        ax.annotate(
            f"best F1 {best['f1']:.3f}\nat score {t:.3f}",
            (t, best["f1"]),
            xytext=(8, 8),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7, ncol=2 if len(names) > 6 else 1)
    fig.tight_layout()
    return fig


def confusion_figure(
    matrix: np.ndarray, names, title: str, annotate_up_to: int = 25, dpi: int = DPI
) -> Figure:
    """Heat map of a ``[K + 1, K + 1]`` confusion matrix (rows ground truth, columns detections,
    the last row and column background; ``names`` has K + 1 entries). Colour is ``log(1 + count)``
    so that rare confusions stay visible next to a large diagonal; counts are written in the
    cells up to ``annotate_up_to`` rows."""
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    side = float(np.clip(0.4 * n + 2.5, 5, 20))
    fig = new_figure(side + 1, side, dpi)
    ax = fig.add_subplot()
    image = ax.imshow(np.log1p(matrix), cmap="Blues", interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("log(1 + count)")
    if n <= 60:
        ax.set_xticks(range(n), labels=list(names), rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=list(names), fontsize=7)
    if n <= annotate_up_to:
        high = np.log1p(matrix.max()) / 2 if matrix.size else 0
        for (r, c), v in np.ndenumerate(matrix):
            if v:
                color = "white" if np.log1p(v) > high else "black"
                ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="detected class", ylabel="ground-truth class", title=title)
    fig.tight_layout()
    return fig


def ap_bar_figure(names, ap: np.ndarray, ap50: np.ndarray, dpi: int = DPI) -> Figure:
    """Horizontal bars of AP (IoU 0.5:0.95) and AP50 per class; classes without ground truth
    (NaN) are left out and counted in the title."""
    ap, ap50 = np.asarray(ap, np.float64), np.asarray(ap50, np.float64)
    keep = np.flatnonzero(~np.isnan(ap))
    height = float(np.clip(0.28 * len(keep) + 1.5, 3, 30))
    fig = new_figure(7, height, dpi)
    ax = fig.add_subplot()
    y = np.arange(len(keep))
    ax.barh(y - 0.2, ap50[keep], height=0.4, color="tab:orange", label="AP50")
    ax.barh(y + 0.2, ap[keep], height=0.4, color="tab:blue", label="AP (0.5:0.95)")
    for yi, a, a50 in zip(y, ap[keep], ap50[keep], strict=True):
        ax.text(a50 + 0.01, yi - 0.2, f"{a50:.3f}", va="center", fontsize=6)
        ax.text(a + 0.01, yi + 0.2, f"{a:.3f}", va="center", fontsize=6)
    ax.set_yticks(y, labels=[names[c] for c in keep], fontsize=7)
    ax.invert_yaxis()
    missing = len(ap) - len(keep)
    title = "AP per class" + (
        f" ({missing} classes without ground truth left out)" if missing else ""
    )
    ax.set(xlim=(0, 1), xlabel="AP", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
