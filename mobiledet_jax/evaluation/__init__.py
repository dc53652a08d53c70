"""Evaluation: the COCO metric (``coco_metric``, pycocotools), the JAX evaluator built once per run
(``evaluator``) and the scoring of exported TFLite files (``tflite_eval``)."""

from mobiledet_jax.evaluation.coco_metric import METRIC_NAMES, CocoEvaluator, coco90_category_ids

__all__ = ["METRIC_NAMES", "CocoEvaluator", "coco90_category_ids"]
