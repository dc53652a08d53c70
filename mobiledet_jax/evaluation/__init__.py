"""Evaluation metrics (host side, numpy): COCO box AP/AR through pycocotools."""

from mobiledet_jax.evaluation.coco import METRIC_NAMES, CocoEvaluator, coco90_category_ids

__all__ = ["METRIC_NAMES", "CocoEvaluator", "coco90_category_ids"]
