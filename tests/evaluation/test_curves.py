"""PR / F1 curves and best-F1 thresholds from pycocotools' own matching (``evaluation.curves``):
a hand-computed case (duplicates, a crowd box, a miss) and agreement with COCOeval's precision
array on random data, so ignored detections and ground truth are handled as COCOeval does."""

import numpy as np
import pytest

from mobiledet_jax.evaluation import curves
from mobiledet_jax.evaluation.coco_metric import PER_CLASS_PREFIX, CocoEvaluator

A = [0.0, 0.0, 0.5, 0.5]  # class 0
B = [0.0, 0.5, 0.5, 1.0]  # class 1
CROWD = [0.5, 0.5, 1.0, 1.0]  # class 0, iscrowd


def _hand_evaluator() -> CocoEvaluator:
    ev = CocoEvaluator(category_ids=(1, 2), category_names=("a", "b"))
    pad = [0.0] * 4
    ev.add_batch(
        image_sizes=[[100, 100], [100, 100]],
        gt_boxes=[[A, B, CROWD], [[0.2, 0.2, 0.6, 0.6], pad, pad]],
        gt_classes=[[0, 1, 0], [1, 0, 0]],
        gt_mask=[[True, True, True], [True, False, False]],
        gt_is_crowd=[[False, False, True], [False, False, False]],
        det_boxes=[
            [A, A, [0.6, 0.6, 0.9, 0.9], B, [0.6, 0.0, 0.9, 0.3]],
            [pad] * 5,
        ],
        det_scores=[[0.9, 0.8, 0.7, 0.6, 0.95], [0.0] * 5],
        det_classes=[[0, 0, 0, 1, 1], [0] * 5],
        num_detections=[5, 0],
    )
    ev.compute()
    return ev


def test_matches_of_a_hand_computed_case():
    matches = curves.detection_matches(_hand_evaluator(), 0.5)
    a, b = matches.per_class
    # class a: 0.9 on A (TP), 0.8 a duplicate (FP), 0.7 inside the crowd box (ignored); 1 gt
    np.testing.assert_array_equal(a.scores, [0.9, 0.8])
    np.testing.assert_array_equal(a.tp, [True, False])
    assert a.num_gt == 1
    # class b: 0.95 on nothing (FP), 0.6 on B (TP); image 2's box is a miss: 2 gt
    np.testing.assert_array_equal(b.scores, [0.95, 0.6])
    np.testing.assert_array_equal(b.tp, [False, True])
    assert b.num_gt == 2
    pooled = matches.pooled()
    np.testing.assert_array_equal(pooled.scores, [0.95, 0.9, 0.8, 0.6])
    np.testing.assert_array_equal(pooled.tp, [False, True, False, True])
    assert pooled.num_gt == 3


def test_best_f1_thresholds_of_the_hand_case():
    best = curves.best_f1_thresholds(_hand_evaluator())
    # pooled: keep 1 -> F1 0; 2 -> 2/5; 3 -> 2/6; 4 -> 4/7 (precision 1/2, recall 2/3)
    assert best["overall"] == pytest.approx(
        {"threshold": 0.6, "f1": 4 / 7, "precision": 0.5, "recall": 2 / 3}
    )
    assert best["per_class"]["a"] == pytest.approx(
        {"threshold": 0.9, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    )
    assert best["per_class"]["b"] == pytest.approx(
        {"threshold": 0.6, "f1": 0.5, "precision": 0.5, "recall": 0.5}
    )


def test_threshold_curves_count_scores_at_or_above_the_threshold():
    pooled = curves.detection_matches(_hand_evaluator()).pooled()
    t = curves.threshold_curves(pooled, [0.0, 0.85, 0.9, 0.96])
    # scores 0.95 (FP), 0.9 (TP), 0.8 (FP), 0.6 (TP); 3 ground-truth boxes; 0.9 >= 0.9 counts
    np.testing.assert_array_equal(t["tp"], [2, 1, 1, 0])
    np.testing.assert_array_equal(t["fp"], [2, 1, 1, 0])
    np.testing.assert_array_equal(t["fn"], [1, 2, 2, 3])
    np.testing.assert_allclose(t["precision"][:3], [0.5, 0.5, 0.5])
    assert np.isnan(t["precision"][3])  # nothing detected
    np.testing.assert_allclose(t["recall"], [2 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(t["f1"], [4 / 7, 2 / 5, 2 / 5, 0])
    assert len(curves.threshold_curves(pooled)["f1"]) == curves.NUM_THRESHOLDS


def test_best_f1_ties_and_the_no_true_positive_case():
    tie = curves.ClassMatches(np.array([0.8, 0.8]), np.array([True, False]), 1)
    # equal scores are kept or dropped together: F1 = 2 / (2 + 1), precision 1/2
    assert curves.best_f1(tie) == pytest.approx(
        {"threshold": 0.8, "f1": 2 / 3, "precision": 0.5, "recall": 1.0}
    )
    # F1 1/2 keeping 1 detection and keeping all 5 (3 ground-truth boxes): the higher threshold
    scores, tp = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 0, 0, 1], bool)
    assert curves.best_f1(curves.ClassMatches(scores, tp, 3)) == pytest.approx(
        {"threshold": 0.9, "f1": 0.5, "precision": 1.0, "recall": 1 / 3}
    )
    none = curves.ClassMatches(np.array([0.7]), np.array([False]), 3)
    assert curves.best_f1(none) == {"threshold": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}


def _coco_interpolated(m: curves.ClassMatches, recall_points: np.ndarray) -> np.ndarray:
    """COCOeval.accumulate's interpolated precision, recomputed from our matches."""
    tp = np.cumsum(m.tp).astype(float)
    fp = np.cumsum(~m.tp).astype(float)
    rc = tp / m.num_gt
    pr = tp / (fp + tp + np.spacing(1))
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    q = np.zeros(len(recall_points))
    inds = np.searchsorted(rc, recall_points, side="left")
    for ri, pi in enumerate(inds):
        if pi < len(pr):
            q[ri] = pr[pi]
    return q


def _random_evaluator(seed: int) -> CocoEvaluator:
    rng = np.random.default_rng(seed)
    ev = CocoEvaluator(category_ids=(3, 1, 7), category_names=("x", "y", "z"))  # unsorted ids
    batch, n, d = 6, 8, 30
    for _ in range(3):
        centers = rng.uniform(0.2, 0.8, (batch, n, 2))
        sizes = rng.uniform(0.05, 0.4, (batch, n, 2))
        gt = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1)
        jitter = rng.normal(0, 0.04, (batch, d, 4))
        det = np.clip(gt[:, rng.integers(0, n, d)] + jitter, 0, 1)
        det = np.concatenate([np.minimum(det[..., :2], det[..., 2:]), np.maximum(det[..., :2], det[..., 2:])], -1)  # fmt: skip
        ev.add_batch(
            image_sizes=np.full((batch, 2), 200),
            gt_boxes=gt,
            gt_classes=rng.integers(0, 3, (batch, n)),
            gt_mask=rng.random((batch, n)) < 0.8,
            gt_is_crowd=rng.random((batch, n)) < 0.15,
            det_boxes=det,
            det_scores=rng.random((batch, d)).round(2),  # ties included
            det_classes=rng.integers(0, 3, (batch, d)),
            num_detections=rng.integers(0, d + 1, batch),
        )
    ev.compute()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_curves_agree_with_cocoeval(seed):
    ev = _random_evaluator(seed)
    metrics = ev.compute()
    pc = curves.precision_curves(ev)
    matches = curves.detection_matches(ev, 0.5)
    assert pc.names == matches.names == ("x", "y", "z")
    for c, m in enumerate(matches.per_class):
        # COCO's own interpolation of our TP/FP list is COCOeval's precision at IoU 0.5
        np.testing.assert_allclose(_coco_interpolated(m, pc.recall), pc.iou50[c], atol=1e-12)
        assert pc.ap[c] == pytest.approx(metrics[PER_CLASS_PREFIX + pc.names[c]], abs=1e-12)
    assert np.nanmean(pc.ap50) == pytest.approx(metrics["AP50"], abs=1e-12)
    assert np.nanmean(pc.ap) == pytest.approx(metrics["AP"], abs=1e-12)


def test_curves_need_a_computed_evaluator():
    with pytest.raises(ValueError, match="compute"):
        curves.precision_curves(CocoEvaluator(category_ids=(1,)))
