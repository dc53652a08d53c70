"""The search reward's quality term: COCO AP of the supernet's detections on one reward batch.

Computed on the host with pycocotools (``evaluation.coco_metric.CocoEvaluator``), the same
evaluation the trainer reports, on the static post-processed detections of the batch: AP@[.5:.95]
(``"ap"``, 101-point, all areas) or AP@.5 (``"ap50"``). A batch without any ground truth scores 0.
Images are scored at the model's input size (boxes are normalized, so AP does not depend on it).
"""

import numpy as np

from mobiledet_jax.evaluation.coco_metric import CocoEvaluator

QUALITY_KEYS = {"ap": "AP", "ap50": "AP50"}


def batch_quality(detections, batch, image_size, num_classes: int, quality: str = "ap") -> float:
    """AP of ``detections`` (``detection.postprocess.Detections``, host or device arrays) against
    the batch's ground truth (``gt_boxes``, ``gt_classes``, ``gt_mask``)."""
    if quality not in QUALITY_KEYS:
        raise ValueError(f"quality must be one of {sorted(QUALITY_KEYS)}, got {quality!r}")
    gt_mask = np.asarray(batch["gt_mask"], bool)
    if not gt_mask.any():
        return 0.0
    n = gt_mask.shape[0]
    evaluator = CocoEvaluator(category_ids=tuple(range(1, num_classes + 1)))
    evaluator.add_batch(
        image_sizes=np.tile(np.asarray(image_size, np.float64), (n, 1)),
        gt_boxes=np.asarray(batch["gt_boxes"]),
        gt_classes=np.asarray(batch["gt_classes"]),
        gt_mask=gt_mask,
        det_boxes=np.asarray(detections.boxes),
        det_scores=np.asarray(detections.scores),
        det_classes=np.asarray(detections.classes),
        num_detections=np.asarray(detections.num_detections),
    )
    value = evaluator.compute()[QUALITY_KEYS[quality]]
    return max(float(value), 0.0)  # pycocotools' -1: no ground truth of any evaluated class
