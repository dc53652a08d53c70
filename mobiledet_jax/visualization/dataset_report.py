"""The dataset statistics report of ``validate_data --plots``: figures and ``statistics.json``.

Written into one folder: ``class_counts.png`` (images per class, boxes per class),
``box_sizes.png`` (width against height, size against aspect ratio, anchor shapes overlaid),
``boxes_per_image.png``, ``anchor_coverage.png`` and ``statistics.json`` (``data.statistics``
counts plus ``detection.anchor_coverage`` for the input size; the definitions are in those
modules).
"""

import json

import ml_collections
import numpy as np
from etils import epath

from mobiledet_jax import config as config_lib
from mobiledet_jax.data.statistics import BoxTable
from mobiledet_jax.detection import anchor_coverage
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.visualization import dataset_figures, figures

STATISTICS_FILE = "statistics.json"


def anchor_shapes(anchors: np.ndarray, image_size) -> np.ndarray:
    """The distinct ``(height, width)`` of ``anchors [A, 4]`` in input pixels, ``[S, 2]``."""
    height, width = image_size
    hw = np.stack(
        [(anchors[:, 2] - anchors[:, 0]) * height, (anchors[:, 3] - anchors[:, 1]) * width], 1
    )
    return np.unique(np.round(hw, 3), axis=0)


def write_dataset_report(
    table: BoxTable,
    out_dir,
    image_size: tuple[int, int],
    *,
    anchor_settings: anchors_lib.AnchorSettings | None = None,
    matched_threshold: float | None = None,
    vis: ml_collections.ConfigDict | None = None,
) -> dict:
    """Writes the figures and ``statistics.json`` of ``table`` into ``out_dir``; returns the
    statistics. Anchors and matched threshold default to the reference (``config.detection``),
    figure settings to ``config.visualization``."""
    vis = vis or config_lib.visualization_config()
    if matched_threshold is None:
        matched_threshold = config_lib.detection_config().matcher.matched_threshold
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    anchors = anchors_lib.anchors_for_image(*image_size, anchor_settings)
    coverage = anchor_coverage.anchor_coverage(
        table.boxes, anchors, image_size, matched_threshold, vis.coverage_size_edges
    )
    stats = {**table.summary(image_size), "anchor_coverage": coverage.to_dict()}
    heights, widths = table.input_pixels(image_size)
    dpi, points = vis.figure_dpi, vis.max_scatter_points
    drawn = {
        "class_counts": dataset_figures.class_counts_figure(
            table.class_names, table.images_per_class(), table.boxes_per_class(), dpi=dpi
        ),
        "box_sizes": dataset_figures.box_size_figure(
            heights,
            widths,
            table.classes,
            image_size,
            anchor_shapes(anchors, image_size),
            max_points=points,
            dpi=dpi,
        ),
        "boxes_per_image": dataset_figures.boxes_per_image_figure(table.boxes_per_image(), dpi),
        "anchor_coverage": dataset_figures.coverage_figure(coverage, points, dpi),
    }
    files = [str(figures.save_figure(fig, out_dir / f"{name}.png")) for name, fig in drawn.items()]
    stats["files"] = [*files, str(out_dir / STATISTICS_FILE)]
    (out_dir / STATISTICS_FILE).write_text(json.dumps(stats, indent=1))
    return stats


def format_coverage(stats: dict) -> str:
    """The anchor coverage lines ``validate_data`` prints."""
    cov = stats["anchor_coverage"]
    h, w = cov["image_size"]
    a = cov["all"]
    lines = [
        f"anchor coverage at {h}x{w} ({cov['num_anchors']} anchors): {a['num_covered']} of "
        f"{a['num_boxes']} boxes have an anchor at IoU >= {cov['matched_threshold']:g}; "
        f"{a['num_forced_only']} only by the forced match"
    ]
    for b in cov["buckets"]:
        fraction = "   -  " if b["num_boxes"] == 0 else f"{b['fraction_covered']:6.1%}"
        lines.append(
            f"  sqrt(area) {b['bucket']:>8s} px: {fraction} of {b['num_boxes']:7d} boxes, "
            f"{b['num_forced_only']} forced only"
        )
    return "\n".join(lines)
