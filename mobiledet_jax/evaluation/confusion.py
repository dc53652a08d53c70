"""Confusion matrix of detections against ground truth at one IoU, with a background row and column.

Convention (K classes; rows are ground truth, columns are detections; index K is background):

1. Per image. The ground truth is its non-crowd boxes; the detections are those with
   ``score >= score_threshold`` (``config.eval.confusion_score_threshold``).
2. Detections are taken in descending score (stable: among equal scores, input order). Each one
   is matched to the still unmatched ground-truth box of highest IoU, if that IoU is
   ``>= iou_threshold`` (0.5), **whatever the two classes are** (equal IoUs: the lower box index).
   Greedy by score is how COCO matches too, but COCO matches within a class; here a box goes to
   the best-scored overlapping detection of any class, so a confident wrong-class detection shows
   up as a confusion instead of a false positive plus a miss.
3. A matched pair counts at ``[gt class, det class]``: the diagonal holds the true positives, the
   rest of the K x K block the class confusions.
4. An unmatched detection counts at ``[K, det class]`` (background row: a false positive), except
   one whose crowd IoU with a crowd box is ``>= iou_threshold``: it is not counted at all, as
   ``COCOeval`` ignores it.
5. An unmatched ground-truth box counts at ``[gt class, K]`` (background column: a miss).
6. ``[K, K]`` is always 0. Row sums are the ground-truth boxes per class (plus, for row K, the
   false positives); column sums the counted detections per class (plus, for column K, misses).

IoU is pycocotools' own (``pycocotools.mask.iou`` on ``[x, y, w, h]`` boxes; for a crowd box the
intersection over the detection's area), the number ``COCOeval`` matches with.
"""

from __future__ import annotations

import collections

import numpy as np
from pycocotools import mask as mask_utils

from mobiledet_jax.evaluation.coco_metric import CocoEvaluator


def _iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    if not len(dets) or not len(gts):
        return np.zeros((len(dets), len(gts)))
    return np.asarray(
        mask_utils.iou(
            np.asarray(dets, np.float64), np.asarray(gts, np.float64), list(crowd.astype(int))
        ),
        np.float64,
    ).reshape(len(dets), len(gts))


def image_confusion(
    gt_boxes,
    gt_classes,
    det_boxes,
    det_scores,
    det_classes,
    num_classes: int,
    *,
    gt_is_crowd=None,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> np.ndarray:
    """The ``[K + 1, K + 1]`` int64 confusion counts of one image (module docstring).

    Boxes are ``[x, y, w, h]`` (COCO; any common unit), classes 0-based indices ``< K``."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
    crowd = np.zeros(len(gt_boxes), bool) if gt_is_crowd is None else np.asarray(gt_is_crowd, bool)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_classes = np.asarray(det_classes, np.int64).reshape(-1)
    k = num_classes
    out = np.zeros((k + 1, k + 1), np.int64)

    keep = det_scores >= score_threshold
    order = np.flatnonzero(keep)[np.argsort(-det_scores[keep], kind="mergesort")]
    dets, det_cls = det_boxes[order], det_classes[order]
    real, crowds = np.flatnonzero(~crowd), np.flatnonzero(crowd)
    iou = _iou(dets, gt_boxes[real], np.zeros(len(real), bool))
    crowd_iou = _iou(dets, gt_boxes[crowds], np.ones(len(crowds), bool))
    taken = np.zeros(len(real), bool)
    for d in range(len(dets)):
        candidates = np.where(taken, -1.0, iou[d]) if len(real) else np.zeros(0)
        g = int(np.argmax(candidates)) if len(candidates) else -1
        if g >= 0 and candidates[g] >= iou_threshold:
            taken[g] = True
            out[gt_classes[real[g]], det_cls[d]] += 1
        elif not (len(crowds) and crowd_iou[d].max() >= iou_threshold):
            out[k, det_cls[d]] += 1
    np.add.at(out, (gt_classes[real[~taken]], k), 1)
    return out


def confusion_matrix(
    evaluator: CocoEvaluator, *, iou_threshold: float = 0.5, score_threshold: float = 0.0
) -> np.ndarray:
    """The ``[K + 1, K + 1]`` confusion counts summed over every image added to ``evaluator``
    (its stored ground truth and detections; class indices in its ``category_ids`` order)."""
    class_of = {cid: i for i, cid in enumerate(evaluator.category_ids)}
    k = len(class_of)
    gts, dets = collections.defaultdict(list), collections.defaultdict(list)
    for a in evaluator.annotations:
        gts[a["image_id"]].append(a)
    for d in evaluator.detections:
        dets[d["image_id"]].append(d)
    total = np.zeros((k + 1, k + 1), np.int64)
    for image_id in set(gts) | set(dets):
        g, d = gts.get(image_id, []), dets.get(image_id, [])
        total += image_confusion(
            [a["bbox"] for a in g],
            [class_of[a["category_id"]] for a in g],
            [x["bbox"] for x in d],
            [x["score"] for x in d],
            [class_of[x["category_id"]] for x in d],
            k,
            gt_is_crowd=[bool(a["iscrowd"]) for a in g],
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
        )
    return total
