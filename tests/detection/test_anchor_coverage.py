"""Anchor coverage (``detection.anchor_coverage``) against a hand-computed tiny case."""

import numpy as np
import pytest

from mobiledet_jax.detection import anchor_coverage, anchors

ANCHORS = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]], np.float32)
BOXES = np.array(
    [
        [0, 0, 0.5, 0.5],  # = anchor 0: IoU 1 (and 1/4 with anchor 2); 50 px
        [0, 0, 0.1, 0.1],  # best IoU 0.01 / 0.25 = 0.04 (anchor 0): forced only; 10 px
        [0, 0, 1, 0.5],  # IoU 0.5 with anchors 0 and 2 exactly: covered, 2 positives; 70.7 px
        [0.5, 0.5, 0.9, 0.9],  # IoU 0.16 / 0.25 = 0.64 with anchor 1; 40 px
        [0.25, 0.25, 0.75, 0.75],  # best IoU 0.25 (anchor 2): forced only; 50 px
    ]
)


def test_hand_computed_case():
    cov = anchor_coverage.anchor_coverage(BOXES, ANCHORS, (100, 100), 0.5, (16, 32, 64, 128))
    np.testing.assert_allclose(cov.best_iou, [1.0, 0.04, 0.5, 0.64, 0.25], atol=1e-6)
    np.testing.assert_array_equal(cov.positives, [1, 0, 2, 1, 0])
    np.testing.assert_allclose(cov.sizes, [50, 10, np.sqrt(5000), 40, 50])
    buckets = {b["bucket"]: b for b in cov.buckets()}
    assert list(buckets) == ["<16", "16-32", "32-64", "64-128", ">=128"]
    counts = {
        k: (b["num_boxes"], b["num_covered"], b["num_forced_only"]) for k, b in buckets.items()
    }
    assert counts == {
        "<16": (1, 0, 1),
        "16-32": (0, 0, 0),
        "32-64": (3, 2, 1),
        "64-128": (1, 1, 0),
        ">=128": (0, 0, 0),
    }
    assert buckets["32-64"]["fraction_covered"] == pytest.approx(2 / 3)
    assert np.isnan(buckets["16-32"]["fraction_covered"])
    assert buckets["32-64"]["mean_positive_anchors"] == pytest.approx(2 / 3)
    overall = cov.overall()
    assert (overall["num_boxes"], overall["num_covered"], overall["num_forced_only"]) == (5, 3, 2)
    d = cov.to_dict()
    assert d["num_anchors"] == 3 and d["image_size"] == [100, 100] and len(d["buckets"]) == 5


def test_sizes_are_in_input_pixels_and_lower_edges_inclusive():
    box = np.array([[0, 0, 0.32, 0.32]])
    cov = anchor_coverage.anchor_coverage(box, ANCHORS, (100, 100), 0.5)
    assert cov.sizes[0] == pytest.approx(32) and cov.buckets()[2]["num_boxes"] == 1  # "32-64"
    cov = anchor_coverage.anchor_coverage(box, ANCHORS, (100, 400), 0.5)  # non-square input
    assert cov.sizes[0] == pytest.approx(np.sqrt(32 * 128))


def test_reference_anchors_cover_their_own_boxes():
    a = anchors.anchors_for_image(320, 320)
    assert len(a) == 2034
    picks = a[[0, 100, 1000, 2033]]
    cov = anchor_coverage.anchor_coverage(picks, a, (320, 320), 0.5)
    np.testing.assert_allclose(cov.best_iou, 1.0, atol=1e-6)
    # more boxes than one block, and no boxes at all
    many = np.tile(picks, (anchor_coverage.CHUNK // 2 + 1, 1))
    best, _ = anchor_coverage.best_anchor_iou(many, a, 0.5)
    assert best.shape == (len(many),) and np.allclose(best, 1.0, atol=1e-6)
    empty = anchor_coverage.anchor_coverage(np.zeros((0, 4)), a, (320, 320), 0.5)
    assert empty.overall()["num_boxes"] == 0


def test_edges_must_increase():
    with pytest.raises(ValueError, match="increase"):
        anchor_coverage.anchor_coverage(BOXES, ANCHORS, (100, 100), 0.5, (32, 16))
