"""Evaluation: the COCO metric (``coco_metric``, pycocotools), the JAX evaluator built once per run
(``evaluator``), the scoring of exported TFLite files (``tflite_eval``), and what is drawn from an
evaluation: PR / F1 curves and best-F1 thresholds (``curves``), the confusion matrix
(``confusion``), sample images (``samples``) and the figure files and TensorBoard summaries
(``visual_report``)."""

from mobiledet_jax.evaluation.coco_metric import METRIC_NAMES, CocoEvaluator, coco90_category_ids

__all__ = ["METRIC_NAMES", "CocoEvaluator", "coco90_category_ids"]
