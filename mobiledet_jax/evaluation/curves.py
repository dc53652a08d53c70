"""PR curves, precision / recall / F1 against score threshold and the best F1 thresholds, all
from pycocotools' own matching (the ``COCOeval`` a ``CocoEvaluator`` keeps after ``compute``), so
no detection is matched twice and every number agrees with the COCO metrics.

- ``precision_curves``: COCO's interpolated precision at its 101 recall points
  (``eval["precision"] [T, R, K, A, M]`` at area ``all`` and the largest ``maxDets``, 100), per
  class at IoU 0.5 and averaged over the ten IoUs 0.5:0.95. A curve's mean over R is the class's
  AP50 (resp. AP): exactly the numbers ``CocoEvaluator`` reports.
- ``detection_matches``: each detection's TP/FP at one IoU (0.5) from ``evalImgs``, read as
  ``COCOeval.accumulate`` reads them: per image, the top-100 detections by score; detections
  ``COCOeval`` ignores (``dtIgnore``: matched to a crowd box) are dropped, the others are true
  positives iff ``dtMatches`` holds a ground-truth id; the ground-truth count is that of the
  boxes not ignored (``gtIgnore == 0``: crowd boxes excluded). Detections of all images are then
  ordered by score, stable (``mergesort``, as ``accumulate``).
- ``threshold_curves`` / ``best_f1``: counting those detections with ``score >= t``: TP(t),
  FP(t), FN(t) = num_gt - TP(t); precision = TP / (TP + FP) (NaN with no detection left),
  recall = TP / num_gt, F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean, defined as 0 when TP is
  0). "Overall" pools the detections of all classes (one threshold for every class, what a
  deployed model applies).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mobiledet_jax.evaluation.coco_metric import CocoEvaluator

NUM_THRESHOLDS = 101  # score thresholds 0, 0.01, ..., 1 of the curves and TensorBoard PR curves


@dataclasses.dataclass(frozen=True)
class ClassMatches:
    """The non-ignored detections of one class (or of all classes pooled) at one IoU."""

    scores: np.ndarray  # [D] float64, descending
    tp: np.ndarray  # [D] bool
    num_gt: int  # ground-truth boxes not ignored by COCOeval


@dataclasses.dataclass(frozen=True)
class Matches:
    """``ClassMatches`` per class index (``names`` in the same order) at ``iou_threshold``."""

    iou_threshold: float
    names: tuple[str, ...]
    per_class: tuple[ClassMatches, ...]

    def pooled(self) -> ClassMatches:
        """All classes together, in COCO's stable score order."""
        scores = np.concatenate([m.scores for m in self.per_class] + [np.zeros(0)])
        tp = np.concatenate([m.tp for m in self.per_class] + [np.zeros(0, bool)])
        order = np.argsort(-scores, kind="mergesort")
        return ClassMatches(scores[order], tp[order], sum(m.num_gt for m in self.per_class))


@dataclasses.dataclass(frozen=True)
class PrecisionCurves:
    """COCO's interpolated precision per class (class index order; NaN rows: no ground truth)."""

    recall: np.ndarray  # [R] the recall points 0, 0.01, ..., 1
    iou50: np.ndarray  # [C, R]
    iou50_95: np.ndarray  # [C, R] mean over the IoUs 0.5:0.95
    names: tuple[str, ...]

    @property
    def ap50(self) -> np.ndarray:
        return self.iou50.mean(axis=1)

    @property
    def ap(self) -> np.ndarray:
        return self.iou50_95.mean(axis=1)


def _coco_eval(evaluator: CocoEvaluator):
    if evaluator.last_eval is None:
        raise ValueError("the CocoEvaluator has not been computed yet: call compute() first")
    return evaluator.last_eval


def _index_of(values, x: float, what: str) -> int:
    hits = np.flatnonzero(np.isclose(np.asarray(values, np.float64), x))
    if not hits.size:
        raise ValueError(f"COCOeval has no {what} {x} (it has {list(values)})")
    return int(hits[0])


def _class_order(evaluator: CocoEvaluator, coco_eval) -> list[int]:
    """For each class index, its position in ``coco_eval.params.catIds`` (which are sorted)."""
    cat_ids = list(coco_eval.params.catIds)
    return [cat_ids.index(cid) for cid in evaluator.category_ids]


def _names(evaluator: CocoEvaluator) -> tuple[str, ...]:
    return tuple(evaluator.category_names[cid] for cid in evaluator.category_ids)


def precision_curves(evaluator: CocoEvaluator) -> PrecisionCurves:
    """Per-class precision at COCO's recall points, at IoU 0.5 and averaged over 0.5:0.95."""
    coco_eval = _coco_eval(evaluator)
    params = coco_eval.params
    area = list(params.areaRngLbl).index("all")
    precision = coco_eval.eval["precision"][:, :, _class_order(evaluator, coco_eval), area, -1]
    precision = np.where(precision > -1, precision, np.nan)  # -1: a class without ground truth
    t50 = _index_of(params.iouThrs, 0.5, "IoU threshold")
    return PrecisionCurves(
        recall=np.asarray(params.recThrs, np.float64),
        iou50=precision[t50].T.copy(),
        iou50_95=precision.mean(axis=0).T.copy(),
        names=_names(evaluator),
    )


def detection_matches(evaluator: CocoEvaluator, iou_threshold: float = 0.5) -> Matches:
    """Each class's non-ignored detections with their TP flags at ``iou_threshold``, area
    ``all``, ``maxDets`` 100, as ``COCOeval.accumulate`` counts them (module docstring)."""
    coco_eval = _coco_eval(evaluator)
    params = coco_eval.params
    t = _index_of(params.iouThrs, iou_threshold, "IoU threshold")
    area = list(params.areaRngLbl).index("all")
    max_det = params.maxDets[-1]
    num_images, num_areas = len(params.imgIds), len(params.areaRng)
    per_class = []
    for k in _class_order(evaluator, coco_eval):
        start = k * num_areas * num_images + area * num_images
        images = [e for e in coco_eval.evalImgs[start : start + num_images] if e is not None]
        if not images:
            per_class.append(ClassMatches(np.zeros(0), np.zeros(0, bool), 0))
            continue
        scores = np.concatenate([e["dtScores"][:max_det] for e in images]).astype(np.float64)
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([e["dtMatches"][t, :max_det] for e in images])[order]
        ignored = np.concatenate([e["dtIgnore"][t, :max_det] for e in images])[order]
        gt_ignored = np.concatenate([np.asarray(e["gtIgnore"]).reshape(-1) for e in images])
        keep = ~ignored.astype(bool)
        per_class.append(
            ClassMatches(scores[order][keep], (matched != 0)[keep], int((gt_ignored == 0).sum()))
        )
    return Matches(float(iou_threshold), _names(evaluator), tuple(per_class))


def threshold_curves(matches: ClassMatches, thresholds: np.ndarray | None = None) -> dict:
    """TP, FP, FN counts and precision, recall, F1 at each score threshold (default: the
    ``NUM_THRESHOLDS`` evenly spaced in [0, 1]); a detection counts at ``t`` iff ``score >= t``."""
    if thresholds is None:
        thresholds = np.linspace(0.0, 1.0, NUM_THRESHOLDS)
    thresholds = np.asarray(thresholds, np.float64)
    kept = np.searchsorted(-matches.scores, -thresholds, side="right")  # scores >= t
    cum_tp = np.concatenate([[0], np.cumsum(matches.tp)])
    tp = cum_tp[kept].astype(np.float64)
    fp = kept - tp
    fn = matches.num_gt - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(kept > 0, tp / np.maximum(kept, 1), np.nan)
        recall = tp / matches.num_gt if matches.num_gt else np.full_like(tp, np.nan)
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)
    return dict(
        thresholds=thresholds, tp=tp, fp=fp, fn=fn, precision=precision, recall=recall, f1=f1
    )


def best_f1(matches: ClassMatches) -> dict:
    """The score threshold of the highest F1, evaluated exactly at every detection score (not on
    a grid): ``{"threshold", "f1", "precision", "recall"}``. Ties go to the highest threshold
    (fewest detections). Without any true positive every threshold gives F1 = 0: then
    threshold 1.0 (keep nothing) and zeros."""
    scores, tp = matches.scores, matches.tp
    if not tp.any():
        return {"threshold": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    cum_tp = np.cumsum(tp)
    kept = np.arange(1, len(scores) + 1)
    ends = np.flatnonzero(np.r_[scores[1:] < scores[:-1], True])  # last index of equal scores
    f1 = 2 * cum_tp[ends] / (kept[ends] + matches.num_gt)
    j = ends[int(np.argmax(f1))]
    return {
        "threshold": float(scores[j]),
        "f1": float(2 * cum_tp[j] / (kept[j] + matches.num_gt)),
        "precision": float(cum_tp[j] / kept[j]),
        "recall": float(cum_tp[j] / matches.num_gt),
    }


def best_f1_thresholds(source: CocoEvaluator | Matches) -> dict:
    """Best-F1 score thresholds at IoU 0.5, over all classes pooled and per class:
    ``{"overall": {"threshold", "f1", "precision", "recall"}, "per_class": {name: {...}}}``.

    ``source``: a computed ``CocoEvaluator`` or its ``detection_matches``. Classes without
    ground truth (recall undefined) are left out of ``per_class``."""
    matches = source if isinstance(source, Matches) else detection_matches(source, 0.5)
    per_class = {
        name: best_f1(m)
        for name, m in zip(matches.names, matches.per_class, strict=True)
        if m.num_gt > 0
    }
    return {"overall": best_f1(matches.pooled()), "per_class": per_class}


def format_best_f1(best: dict, max_classes: int = 20) -> str:
    """``best_f1_thresholds`` as the lines the commands print."""
    o = best["overall"]
    lines = [
        f"best F1 (IoU 0.5, all classes): {o['f1']:.4f} at score >= {o['threshold']:.4f} "
        f"(precision {o['precision']:.4f}, recall {o['recall']:.4f})"
    ]
    items = list(best["per_class"].items())
    for name, b in items[:max_classes]:
        lines.append(
            f"  {name:<24s} F1 {b['f1']:.4f} at {b['threshold']:.4f} "
            f"(P {b['precision']:.4f}, R {b['recall']:.4f})"
        )
    if len(items) > max_classes:
        lines.append(f"  ... {len(items) - max_classes} more classes in metrics.json")
    return "\n".join(lines)
