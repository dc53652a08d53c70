"""COCO evaluation of a JAX model on an evaluation split, built once per run.

``Evaluator(config, mesh, model)`` opens the split, computes the anchors and jits the detect
function once; every ``evaluate(variables)`` after that reuses them (big_vision's evaluators do the
same "to avoid re-compiling"), so the periodic evaluations of a training run compile once.

The core, ``run_coco_evaluation(detect, eval_iterable, info)``, takes any detection function, so the
same metric code scores a JAX model and an exported TFLite file (``evaluation.tflite_eval``).
"""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mobiledet_jax import data
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import postprocess
from mobiledet_jax.evaluation.coco_metric import CocoEvaluator
from mobiledet_jax.models import build_model, input_size, preprocess
from mobiledet_jax.sharding import replicated

DetectFn = Callable[[dict[str, Any]], tuple[Any, dict[str, np.ndarray]]]


def run_coco_evaluation(
    detect: DetectFn,
    eval_iterable: Iterable[dict[str, Any]],
    info,
    max_batches: int = -1,
    log_every: int = 20,
) -> dict[str, float]:
    """Runs ``detect`` over the split and scores the detections with pycocotools.

    Args:
      detect: ``batch -> (detections, ground truth)``: detections with ``boxes [B, D, 4]``,
        ``scores``, ``classes`` (0-based), ``num_detections``; ground truth with the batch's
        ``gt_boxes``, ``gt_classes``, ``gt_mask``, ``gt_is_crowd``, ``original_size``,
        ``image_id`` and ``example_mask``, all host-readable.
      eval_iterable: batches of ``mobiledet_jax.data.build_eval_iterator``.
      info: the split's ``DatasetInfo`` (category ids and names).
      max_batches: stop after this many batches (-1: the whole split).
    """
    evaluator = CocoEvaluator(category_ids=info.category_ids, category_names=info.category_names)
    total = len(eval_iterable) if max_batches < 0 else min(max_batches, len(eval_iterable))
    start = time.time()
    for i, batch in enumerate(eval_iterable):
        if i == total:
            break
        det, gt = detect(batch)
        gt = {k: np.asarray(v) for k, v in gt.items()}
        evaluator.add_batch(
            image_sizes=gt["original_size"],
            gt_boxes=gt["gt_boxes"],
            gt_classes=gt["gt_classes"],
            gt_mask=gt["gt_mask"],
            det_boxes=np.asarray(det.boxes),
            det_scores=np.asarray(det.scores),
            det_classes=np.asarray(det.classes),
            num_detections=np.asarray(det.num_detections),
            image_ids=gt["image_id"],
            gt_is_crowd=gt["gt_is_crowd"],
            example_mask=gt["example_mask"],
        )
        if log_every and ((i + 1) % log_every == 0 or i + 1 == total):
            logging.info("evaluated %d/%d batches (%.1f s)", i + 1, total, time.time() - start)
    return evaluator.compute()


def jax_detect_fn(
    model: nn.Module,
    anchors: jax.Array,
    mesh: Mesh,
    nms: postprocess.NmsSettings,
    pixels: bool = False,
):
    """``variables, batch -> (detections, batch ground truth)``, jitted, outputs replicated.

    ``pixels``: the batch images are [0, 255] pixels (``build_eval_iterator(..., pixels=True)``,
    the input an exported file takes) and are normalized here, inside the jitted function.
    """

    def detect(variables, batch):
        images = preprocess(batch["image"]) if pixels else batch["image"]
        out = model.apply(variables, images, train=False)
        det = postprocess.postprocess(out["box_encodings"], out["class_logits"], anchors, nms)
        keep = {k: v for k, v in batch.items() if k != "image"}
        return det, keep

    return jax.jit(detect, out_shardings=replicated(mesh))


class Evaluator:
    """COCO metrics of one model on one split: iterator, anchors and jitted detect built once.

    ``model`` defaults to ``build_model(config.model)``; QAT training passes its fake-quantized
    model (the variables then include ``quant_stats``), so that its evaluation sees int8 numerics.
    ``pixels=True`` feeds [0, 255] pixels (as the TFLite comparison of export does, sharing one
    iterator between the two).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        model: nn.Module | None = None,
        split: str | None = None,
        batch_size: int | None = None,
        pixels: bool = False,
    ):
        self.config = config
        self.model = model or build_model(config.model)
        self.image_size = input_size(config.model)
        self.anchors = anchors_lib.anchors_from_config(config.detection.anchors, *self.image_size)
        self.nms = postprocess.NmsSettings.from_config(config.detection.nms)
        self.split = split or config.eval.split
        self.iterator = data.build_eval_iterator(
            config.data,
            batch_size or config.eval.batch_size,
            self.image_size,
            mesh,
            split=self.split,
            pixels=pixels,
        )
        self.detect_fn = jax_detect_fn(self.model, self.anchors, mesh, self.nms, pixels)

    @property
    def info(self):
        return self.iterator.info

    def evaluate(self, variables, max_batches: int | None = None) -> dict[str, float]:
        """COCO metrics of ``variables`` (``config.eval.max_batches`` batches by default)."""
        max_batches = self.config.eval.max_batches if max_batches is None else max_batches
        return run_coco_evaluation(
            lambda batch: self.detect_fn(variables, batch), self.iterator, self.info, max_batches
        )

    def compile_count(self) -> int:
        """How many programs the detect function has compiled (1 after any number of evaluations)."""
        return self.detect_fn._cache_size()
