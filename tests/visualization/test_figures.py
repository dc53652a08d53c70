"""Every figure is a valid PNG with content, for few and for many classes."""

import numpy as np
import pytest

from mobiledet_jax.detection import anchor_coverage, anchors
from mobiledet_jax.visualization import dataset_figures, figures
from tests.helpers.png_checks import assert_png_with_content


def _names(k):
    return [f"class_{i}" for i in range(k)]


@pytest.mark.parametrize("k", [3, 40])
def test_evaluation_figures(tmp_path, k):
    rng = np.random.default_rng(k)
    recall = np.linspace(0, 1, 101)
    precision = np.sort(rng.random((k, 101)), axis=1)[:, ::-1]
    precision[0] = np.nan  # a class without ground truth
    thresholds = np.linspace(0, 1, 101)
    f1 = rng.random((k, 101))
    overall = {"f1": f1.mean(0), "precision": np.linspace(0.2, 1, 101), "recall": 1 - thresholds}
    best = {"threshold": 0.4, "f1": 0.6, "precision": 0.7, "recall": 0.5}
    matrix = rng.integers(0, 20, (k + 1, k + 1))
    matrix[k, k] = 0
    ap = rng.random(k)
    ap[0] = np.nan
    drawn = {
        "pr": figures.pr_curve_figure(recall, precision, _names(k), "PR"),
        "f1": figures.f1_threshold_figure(thresholds, f1, _names(k), overall, best),
        "confusion": figures.confusion_figure(matrix, [*_names(k), "background"], "confusion"),
        "ap": figures.ap_bar_figure(_names(k), ap, np.minimum(1, ap + 0.1)),
    }
    for name, fig in drawn.items():
        pixels = assert_png_with_content(figures.save_figure(fig, tmp_path / f"{name}.png"))
        np.testing.assert_array_equal(figures.figure_to_array(fig), pixels)  # TensorBoard's image


def test_dataset_figures(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    heights, widths = rng.uniform(5, 200, n), rng.uniform(5, 200, n)
    classes = rng.integers(0, 4, n)
    a = anchors.anchors_for_image(160, 160)
    shapes = np.unique(np.stack([(a[:, 2] - a[:, 0]) * 160, (a[:, 3] - a[:, 1]) * 160], 1), axis=0)
    centers = rng.uniform(0.3, 0.7, (n, 2))
    boxes = np.concatenate([centers - [0.1, 0.1], centers + rng.uniform(0, 0.3, (n, 2))], 1)
    cov = anchor_coverage.anchor_coverage(boxes, a, (160, 160), 0.5)
    drawn = {
        "counts": dataset_figures.class_counts_figure(_names(4), [5, 0, 7, 1], [9, 0, 30, 1]),
        "sizes": dataset_figures.box_size_figure(heights, widths, classes, (160, 160), shapes, 100),
        "per_image": dataset_figures.boxes_per_image_figure(rng.integers(0, 6, 50)),
        "coverage": dataset_figures.coverage_figure(cov),
    }
    for name, fig in drawn.items():
        assert_png_with_content(figures.save_figure(fig, tmp_path / f"{name}.png"))


def test_a_blank_picture_is_caught(tmp_path):
    fig = figures.new_figure(2, 2)
    with pytest.raises(AssertionError, match="blank"):
        assert_png_with_content(figures.save_figure(fig, tmp_path / "blank.png"))
