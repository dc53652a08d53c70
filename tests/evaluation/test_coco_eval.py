"""COCO evaluator: perfect detections, a hand-reasoned case and pycocotools run directly."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mobiledet_jax.evaluation import METRIC_NAMES, CocoEvaluator

# Hand-made case in COCO pixel form: image id -> (height, width, gt list, detection list);
# gt entries (category id, [x, y, w, h], iscrowd), detections (category id, [x, y, w, h], score).
CATEGORY_IDS = (7, 3, 42)  # class index 0, 1, 2 -> arbitrary dataset ids
IMAGES = {
    11: (100, 200,
         [(7, [10, 20, 50, 40], 0), (3, [100, 10, 80, 60], 0), (7, [0, 50, 200, 50], 1)],
         [(7, [12, 22, 48, 38], 0.9), (3, [100, 10, 80, 60], 0.7), (3, [20, 20, 30, 30], 0.8),
          (7, [10, 60, 50, 30], 0.6)]),
    12: (300, 150,
         [(42, [30, 30, 60, 100], 0), (7, [5, 5, 20, 20], 0)],
         [(42, [35, 40, 50, 90], 0.95)]),
    13: (50, 50, [], [(3, [0, 0, 10, 10], 0.3)]),
    14: (80, 80, [(3, [10, 10, 30, 30], 0)], []),
}  # fmt: skip


def _direct_pycocotools():
    images, gts, dts = [], [], []
    for image_id, (h, w, gt, dt) in IMAGES.items():
        images.append({"id": image_id, "height": h, "width": w})
        for cat, box, crowd in gt:
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                        "area": box[2] * box[3], "iscrowd": crowd})  # fmt: skip
        for cat, box, score in dt:
            dts.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": gts,
            "categories": [{"id": c, "name": str(c)} for c in CATEGORY_IDS],
        }
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _normalized(box, h, w):
    x, y, bw, bh = box
    return [y / h, x / w, (y + bh) / h, (x + bw) / w]


def _batch(image_ids, n=4, d=5, garbage_row=False):
    """Padded arrays for some of IMAGES (optionally plus a masked-out garbage example)."""
    rows = list(image_ids) + ([None] if garbage_row else [])
    b = len(rows)
    arrays = {
        "image_ids": np.zeros(b, np.int64),
        "image_sizes": np.ones((b, 2)),
        "gt_boxes": np.full((b, n, 4), 0.3),
        "gt_classes": np.zeros((b, n), np.int32),
        "gt_mask": np.zeros((b, n), bool),
        "gt_is_crowd": np.zeros((b, n), bool),
        "det_boxes": np.full((b, d, 4), 0.3),
        "det_scores": np.full((b, d), 0.99),
        "det_classes": np.zeros((b, d), np.int32),
        "num_detections": np.full(b, d),  # garbage unless overwritten
        "example_mask": np.array([r is not None for r in rows]),
    }
    index = {c: i for i, c in enumerate(CATEGORY_IDS)}
    for row, image_id in enumerate(rows):
        if image_id is None:
            continue
        h, w, gt, dt = IMAGES[image_id]
        arrays["image_ids"][row] = image_id
        arrays["image_sizes"][row] = (h, w)
        for j, (cat, box, crowd) in enumerate(gt):
            arrays["gt_boxes"][row, j] = _normalized(box, h, w)
            arrays["gt_classes"][row, j] = index[cat]
            arrays["gt_mask"][row, j] = True
            arrays["gt_is_crowd"][row, j] = bool(crowd)
        for j, (cat, box, score) in enumerate(dt):
            arrays["det_boxes"][row, j] = _normalized(box, h, w)
            arrays["det_classes"][row, j] = index[cat]
            arrays["det_scores"][row, j] = score
        arrays["num_detections"][row] = len(dt)
    return arrays


def test_matches_pycocotools_directly_incremental_and_masked():
    expected = _direct_pycocotools()
    ev = CocoEvaluator(category_ids=CATEGORY_IDS, category_names=["cat", "dog", "cow"])
    ev.add_batch(**_batch([11, 12], garbage_row=True))
    ev.add_batch(**_batch([13, 14]))
    assert ev.num_images == 4
    metrics = ev.compute()
    np.testing.assert_allclose([metrics[k] for k in METRIC_NAMES], expected.stats, atol=1e-9)
    # By hand (IoU thresholds 0.50:0.05:0.95, 101 recall points): class 7 finds 1 of its 2 boxes
    # (IoU 0.912: a TP at 9 of the 10 thresholds; its 0.6 detection lies in the crowd region and is
    # ignored) -> 51/101 at those; class 3 ranks FP, TP, FP over 2 boxes -> precision 0.5 up to
    # recall 0.5 at all 10; class 42 finds its one box at IoU exactly 0.75 -> 1 at 6 thresholds.
    p = 51 / 101
    assert metrics["AP"] == pytest.approx((0.9 * p + 0.5 * p + 0.6) / 3)
    assert metrics["AP50"] == pytest.approx((p + 0.5 * p + 1.0) / 3)
    assert metrics["AP75"] == pytest.approx((p + 0.5 * p + 1.0) / 3)
    # recall: class 7 0.5 at 9 thresholds, class 3 0.5 at 10, class 42 1 at 6; with one detection
    # per image class 3 keeps only its false positive (0.8) in image 11
    assert metrics["AR100"] == pytest.approx((0.45 + 0.5 + 0.6) / 3)
    assert metrics["AR1"] == pytest.approx((0.45 + 0.0 + 0.6) / 3)
    precision = expected.eval["precision"]
    for name, cat in zip(["cat", "dog", "cow"], CATEGORY_IDS, strict=True):
        k = expected.params.catIds.index(cat)
        p = precision[:, :, k, 0, -1]
        np.testing.assert_allclose(metrics[f"AP_per_class/{name}"], p[p > -1].mean(), atol=1e-9)


def test_perfect_detections_give_ap_one():
    ev = CocoEvaluator()  # COCO ids: class index i -> category id i + 1
    rng = np.random.default_rng(0)
    used = set()
    for _ in range(2):
        yx = rng.uniform(0, 0.6, (3, 4, 2))
        boxes = np.concatenate([yx, yx + rng.uniform(0.1, 0.4, (3, 4, 2))], -1)
        classes = rng.integers(0, 90, (3, 4))
        used |= set(classes.ravel().tolist())
        ev.add_batch(
            image_sizes=[[480, 640], [300, 300], [640, 427]],
            gt_boxes=boxes, gt_classes=classes, gt_mask=np.ones((3, 4), bool),
            det_boxes=boxes, det_scores=np.full((3, 4), 0.9), det_classes=classes,
            num_detections=[4, 4, 4],
        )  # fmt: skip
    metrics = ev.compute()
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AR100"] == pytest.approx(1.0)
    for c in range(90):
        ap = metrics[f"AP_per_class/{c + 1}"]
        assert ap == pytest.approx(1.0) if c in used else np.isnan(ap)


def test_hand_reasoned_two_images():
    # Image 1: a perfect detection (score 0.9). Image 2: the only detection (0.8) misses the
    # object. Ranked: TP, FP -> precision 1 up to recall 0.5, then nothing: AP = 51 / 101 on the
    # 101 recall points, at every IoU threshold; AR100 = 0.5.
    gt = np.array([[[0.1, 0.1, 0.5, 0.5]], [[0.2, 0.2, 0.6, 0.6]]])
    det = np.array([[[0.1, 0.1, 0.5, 0.5]], [[0.7, 0.7, 0.9, 0.9]]])
    ev = CocoEvaluator(category_ids=[5])
    ev.add_batch(
        image_sizes=[[100, 100], [100, 100]], gt_boxes=gt, gt_classes=np.zeros((2, 1), int),
        gt_mask=np.ones((2, 1), bool), det_boxes=det, det_scores=[[0.9], [0.8]],
        det_classes=np.zeros((2, 1), int), num_detections=[1, 1], image_ids=[3, 9],
    )  # fmt: skip
    metrics = ev.compute()
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AP50"] == pytest.approx(51 / 101)
    assert metrics["AR100"] == pytest.approx(0.5)
    assert metrics["AP_per_class/5"] == pytest.approx(51 / 101)


def test_iscrowd_is_respected():
    # One normal object (detected) and one unmatched crowd region: ignored when flagged crowd.
    args = dict(
        image_sizes=[[100, 100]],
        gt_boxes=[[[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]]],
        gt_classes=[[0, 0]],
        gt_mask=[[True, True]],
        det_boxes=[[[0.1, 0.1, 0.3, 0.3]]],
        det_scores=[[0.9]],
        det_classes=[[0]],
        num_detections=[1],
    )
    crowd = CocoEvaluator(category_ids=[1])
    crowd.add_batch(**args, gt_is_crowd=[[False, True]])
    plain = CocoEvaluator(category_ids=[1])
    plain.add_batch(**args)
    assert crowd.compute()["AP"] == pytest.approx(1.0)
    assert plain.compute()["AP"] < 0.6


def test_no_detections_and_duplicate_ids():
    ev = CocoEvaluator(category_ids=[1, 2])
    args = dict(
        image_sizes=[[50, 50]], gt_boxes=[[[0.1, 0.1, 0.3, 0.3]]], gt_classes=[[1]],
        gt_mask=[[True]], det_boxes=np.zeros((1, 3, 4)), det_scores=np.zeros((1, 3)),
        det_classes=np.zeros((1, 3), int), num_detections=[0], image_ids=[1],
    )  # fmt: skip
    ev.add_batch(**args)
    metrics = ev.compute()
    assert metrics["AP"] == 0.0 and np.isnan(metrics["AP_per_class/1"])
    with pytest.raises(ValueError, match="twice"):
        ev.add_batch(**args)
