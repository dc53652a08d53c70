"""COCO box metrics with pycocotools (``COCOeval``), fed incrementally from batches.

Inputs are the model's conventions: normalized ``[ymin, xmin, ymax, xmax]`` boxes, contiguous
0-based class indices, padded arrays with masks. Boxes are scaled by each image's **original**
``(height, width)`` to COCO's absolute ``[x, y, width, height]``. Class index ``i`` maps to
``category_ids[i]``; the default is the TF OD API 90-class COCO label map, where index ``i`` is
COCO category id ``i + 1`` (ids without a COCO category simply never occur in the ground truth).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
PER_CLASS_PREFIX = "AP_per_class/"


def coco90_category_ids(num_classes: int = 90) -> tuple[int, ...]:
    """COCO label-map ids for contiguous class indices: index ``i`` -> id ``i + 1``."""
    return tuple(range(1, num_classes + 1))


def _to_coco_xywh(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Normalized ``[N, 4]`` ``[ymin, xmin, ymax, xmax]`` -> absolute ``[N, 4]`` ``[x, y, w, h]``."""
    ymin, xmin, ymax, xmax = (boxes[:, i].astype(np.float64) for i in range(4))
    return np.stack(
        [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=1
    )


class CocoEvaluator:
    """Accumulates ground truth and detections, then runs ``COCOeval`` (bbox).

    Usage: ``ev = CocoEvaluator(); ev.add_batch(...)`` per eval batch; ``metrics = ev.compute()``.
    ``compute`` returns the 12 standard numbers under ``METRIC_NAMES`` plus per-class AP (IoU
    0.50:0.95, all areas, 100 detections) under ``"AP_per_class/<name>"``; NaN for a class without
    ground truth. Crowd boxes (``gt_is_crowd``) are handled by pycocotools: detections matching
    them are ignored, they never count as misses. After ``compute``, ``last_eval`` keeps the
    ``COCOeval`` object (its ``eval["precision"]`` ``[T, R, K, A, M]`` and ``evalImgs``), which
    ``evaluation.curves`` turns into PR and F1 curves without scoring anything twice.
    """

    def __init__(
        self,
        category_ids: Sequence[int] | None = None,
        category_names: Sequence[str] | Mapping[int, str] | None = None,
        verbose: bool = False,
    ):
        """
        Args:
          category_ids: dataset category id of each contiguous class index; default COCO-90.
          category_names: names by class index (sequence) or by category id (mapping); used for
            the per-class keys, which default to the category id.
          verbose: let pycocotools print its progress and summary table.
        """
        ids = tuple(int(i) for i in (category_ids or coco90_category_ids()))
        if len(set(ids)) != len(ids):
            raise ValueError("category_ids must be unique")
        self.category_ids = ids
        self._class_to_id = np.asarray(ids, np.int64)
        if category_names is None:
            names = {cid: str(cid) for cid in ids}
        elif isinstance(category_names, Mapping):
            names = {cid: str(category_names.get(cid, cid)) for cid in ids}
        else:
            if len(category_names) != len(ids):
                raise ValueError("category_names must have one name per class index")
            names = dict(zip(ids, map(str, category_names), strict=True))
        self.category_names = names
        self.verbose = verbose
        self.last_eval: COCOeval | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._images: list[dict] = []
        self._image_ids: set[int] = set()
        self._gt: list[dict] = []
        self._dt: list[dict] = []
        self._next_auto_id = 1

    @property
    def num_images(self) -> int:
        return len(self._images)

    @property
    def annotations(self) -> list[dict]:
        """The ground truth added so far, as COCO annotation dicts (absolute ``bbox`` xywh,
        ``category_id``, ``iscrowd``); read-only by convention (``evaluation.confusion``)."""
        return self._gt

    @property
    def detections(self) -> list[dict]:
        """The detections added so far, as COCO result dicts (``bbox``, ``score``,
        ``category_id``)."""
        return self._dt

    def add_batch(
        self,
        *,
        image_sizes,
        gt_boxes,
        gt_classes,
        gt_mask,
        det_boxes,
        det_scores,
        det_classes,
        num_detections,
        image_ids=None,
        gt_is_crowd=None,
        gt_area=None,
        example_mask=None,
    ) -> None:
        """Add one batch (numpy or jax arrays; ``B`` images, ``N`` padded gt, ``D`` detections).

        Args:
          image_sizes: ``[B, 2]`` original ``(height, width)`` in pixels.
          gt_boxes: ``[B, N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
          gt_classes: ``[B, N]`` int, 0-based class index.
          gt_mask: ``[B, N]`` bool, real ground-truth boxes.
          det_boxes: ``[B, D, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
          det_scores: ``[B, D]``.
          det_classes: ``[B, D]`` int, 0-based class index.
          num_detections: ``[B]``; only the first ``num_detections[b]`` detections are used.
          image_ids: ``[B]`` int, unique over the evaluation; default 1, 2, 3, ... in order.
          gt_is_crowd: ``[B, N]`` bool, COCO ``iscrowd``; default all False.
          gt_area: ``[B, N]`` COCO ``area`` (e.g. the segment area); default the box area.
          example_mask: ``[B]`` bool; False rows (batch padding) are skipped entirely.
        """
        sizes = np.asarray(image_sizes, np.float64)
        gt_boxes, gt_classes = np.asarray(gt_boxes), np.asarray(gt_classes)
        gt_mask = np.asarray(gt_mask, bool)
        det_boxes, det_scores = np.asarray(det_boxes), np.asarray(det_scores)
        det_classes, num_det = np.asarray(det_classes), np.asarray(num_detections)
        batch = sizes.shape[0]
        crowd = np.zeros(gt_mask.shape, bool) if gt_is_crowd is None else np.asarray(gt_is_crowd)
        keep = np.ones(batch, bool) if example_mask is None else np.asarray(example_mask, bool)
        if image_ids is None:
            ids = np.zeros(batch, np.int64)
            ids[keep] = np.arange(self._next_auto_id, self._next_auto_id + keep.sum())
        else:
            ids = np.asarray(image_ids, np.int64)
        for b in np.flatnonzero(keep):
            image_id = int(ids[b])
            if image_id in self._image_ids:
                raise ValueError(f"image id {image_id} added twice")
            self._image_ids.add(image_id)
            self._next_auto_id = max(self._next_auto_id, image_id + 1)
            height, width = float(sizes[b, 0]), float(sizes[b, 1])
            self._images.append({"id": image_id, "height": height, "width": width})

            real = np.flatnonzero(gt_mask[b])
            xywh = _to_coco_xywh(gt_boxes[b, real], height, width)
            areas = xywh[:, 2] * xywh[:, 3] if gt_area is None else np.asarray(gt_area)[b, real]
            cats = self._class_to_id[gt_classes[b, real].astype(np.int64)]
            for box, cat, area, is_crowd in zip(xywh, cats, areas, crowd[b, real], strict=True):
                self._gt.append(
                    {
                        "id": len(self._gt) + 1,  # pycocotools needs ids >= 1
                        "image_id": image_id,
                        "category_id": int(cat),
                        "bbox": [float(v) for v in box],
                        "area": float(area),
                        "iscrowd": int(bool(is_crowd)),
                    }
                )

            n = int(num_det[b])
            xywh = _to_coco_xywh(det_boxes[b, :n], height, width)
            cats = self._class_to_id[det_classes[b, :n].astype(np.int64)]
            for box, cat, score in zip(xywh, cats, det_scores[b, :n], strict=True):
                self._dt.append(
                    {
                        "image_id": image_id,
                        "category_id": int(cat),
                        "bbox": [float(v) for v in box],
                        "score": float(score),
                    }
                )

    def _coco_gt(self) -> COCO:
        coco = COCO()
        coco.dataset = {
            "images": list(self._images),
            "annotations": list(self._gt),
            "categories": [{"id": c, "name": self.category_names[c]} for c in self.category_ids],
        }
        coco.createIndex()
        return coco

    def compute(self) -> dict[str, float]:
        """Run COCOeval on everything added; returns ``{metric name: value}`` (floats)."""
        if not self._images:
            raise ValueError("no images were added")
        out = io.StringIO()
        redirect = contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(out)
        with redirect:
            coco_gt = self._coco_gt()
            if self._dt:
                coco_dt = coco_gt.loadRes([dict(d) for d in self._dt])
            else:  # loadRes cannot take an empty list
                coco_dt = COCO()
                coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
                coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
            evaluator.params.imgIds = sorted(self._image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        self.last_eval = evaluator
        metrics = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}
        # precision: [iou thresholds, recall points, categories, area ranges, max dets]
        precision = evaluator.eval["precision"]
        for k, cat in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            ap = float(np.mean(p)) if p.size else float("nan")
            metrics[PER_CLASS_PREFIX + self.category_names[cat]] = ap
        return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """The 12 COCO numbers, then per-class AP, one per line (what the commands print)."""
    lines = [f"{k:>8s} {v:.4f}" for k, v in metrics.items() if "/" not in k]
    per_class = {k: v for k, v in metrics.items() if "/" in k}
    if per_class:
        lines.append("per-class AP:")
        lines += [f"  {k.split('/', 1)[1]:<24s} {v:.4f}" for k, v in per_class.items()]
    return "\n".join(lines)
