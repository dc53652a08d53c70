"""COCO evaluation of a JAX model on an evaluation split, built once per run.

``Evaluator(config, mesh, model)`` opens the split, computes the anchors and jits the detect
function once; every ``evaluate(variables)`` after that reuses them (big_vision's evaluators do the
same "to avoid re-compiling"), so the periodic evaluations of a training run compile once.

The core, ``run_coco_evaluation(detect, eval_iterable, info)``, takes any detection function, so the
same metric code scores a JAX model and an exported TFLite file (``evaluation.tflite_eval``).
``run_evaluation`` is the same run returning an ``EvalResult``: the metrics, the computed
``CocoEvaluator`` (pycocotools' ``COCOeval`` kept for curves and the confusion matrix) and the
first K images with their ground truth and detections (``evaluation.samples``), which
``evaluation.visual_report`` draws. ``Evaluator.evaluate`` keeps its last one in ``last_result``.
"""

import dataclasses
import logging
import sys
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
from mobiledet_jax.evaluation.samples import Sample, SampleCollector
from mobiledet_jax.models import build_model, input_size, preprocess
from mobiledet_jax.progress import Progress
from mobiledet_jax.sharding import make_mesh, replicated

DetectFn = Callable[[dict[str, Any]], tuple[Any, dict[str, np.ndarray]]]


@dataclasses.dataclass
class EvalResult:
    """One evaluation: its metrics, the computed ``CocoEvaluator`` (``coco.last_eval`` is the
    ``COCOeval``) and ``samples``, the split's first K images (``num_samples``)."""

    metrics: dict[str, float]
    coco: CocoEvaluator
    samples: list[Sample]
    class_names: tuple[str, ...]


def run_coco_evaluation(
    detect: DetectFn,
    eval_iterable: Iterable[dict[str, Any]],
    info,
    max_batches: int = -1,
    log_every: int = 20,
    label: str = "eval",
) -> dict[str, float]:
    """The COCO metrics of ``run_evaluation`` (same arguments, no samples)."""
    return run_evaluation(detect, eval_iterable, info, max_batches, log_every, label=label).metrics


def run_evaluation(
    detect: DetectFn,
    eval_iterable: Iterable[dict[str, Any]],
    info,
    max_batches: int = -1,
    log_every: int = 20,
    num_samples: int = 0,
    pixels: bool = False,
    label: str = "eval",
) -> EvalResult:
    """Runs ``detect`` over the split and scores the detections with pycocotools.

    Args:
      detect: ``batch -> (detections, ground truth)``: detections with ``boxes [B, D, 4]``,
        ``scores``, ``classes`` (0-based), ``num_detections``; ground truth with the batch's
        ``gt_boxes``, ``gt_classes``, ``gt_mask``, ``gt_is_crowd``, ``original_size``,
        ``image_id`` and ``example_mask``, all host-readable.
      eval_iterable: batches of ``mobiledet_jax.data.build_eval_iterator``.
      info: the split's ``DatasetInfo`` (category ids and names).
      max_batches: stop after this many batches (-1: the whole split).
      log_every: progress (``mobiledet_jax.progress``): off a terminal a line every this many
        batches and one at the end; 0: silent. ``label`` names the progress line.
      num_samples: keep the first this many images with their ground truth and detections.
      pixels: the batch images are [0, 255] pixels (else [-1, 1]); only for the samples.
    """
    evaluator = CocoEvaluator(category_ids=info.category_ids, category_names=info.category_names)
    samples = SampleCollector(num_samples, pixels)
    total = len(eval_iterable) if max_batches < 0 else min(max_batches, len(eval_iterable))
    bar = Progress(label, total, "batch", enabled=bool(log_every) and jax.process_index() == 0)
    for i, batch in enumerate(eval_iterable):
        if i == total:
            break
        det, gt = detect(batch)
        gt = {k: np.asarray(v) for k, v in gt.items()}
        if not samples.done:
            samples.add(batch["image"], det, gt)
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
        bar.update(i + 1, line=bool(log_every) and (i + 1) % log_every == 0)
    bar.close()
    metrics = evaluator.compute()
    return EvalResult(metrics, evaluator, samples.samples, tuple(info.category_names))


def jax_detect_fn(
    model: nn.Module,
    anchors: jax.Array,
    mesh: Mesh,
    nms: postprocess.NmsSettings,
    pixels: bool = False,
    normalize=preprocess,
):
    """``variables, batch -> (detections, batch ground truth)``, jitted, outputs replicated.

    ``pixels``: the batch images are [0, 255] pixels (``build_eval_iterator(..., pixels=True)``,
    the input an exported file takes) and are normalized here, inside the jitted function, by
    ``normalize`` (``models.qat.file_input`` for the fake-quant model an int8 file is checked on).
    """

    def detect(variables, batch):
        images = normalize(batch["image"]) if pixels else batch["image"]
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
    iterator between the two). ``last_result`` is the ``EvalResult`` of the last ``evaluate``
    (with ``config.eval.num_sample_images`` samples when ``config.eval.figures``); ``take_result``
    hands it over and forgets it, so a training run does not keep a COCOeval alive.
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
        self.pixels = pixels
        self.num_samples = config.eval.num_sample_images if config.eval.figures else 0
        self.last_result: EvalResult | None = None

    @property
    def info(self):
        return self.iterator.info

    def evaluate(self, variables, max_batches: int | None = None) -> dict[str, float]:
        """COCO metrics of ``variables`` (``config.eval.max_batches`` batches by default)."""
        max_batches = self.config.eval.max_batches if max_batches is None else max_batches
        self.last_result = run_evaluation(
            lambda batch: self.detect_fn(variables, batch),
            self.iterator,
            self.info,
            max_batches,
            num_samples=self.num_samples,
            pixels=self.pixels,
        )
        return self.last_result.metrics

    def take_result(self) -> EvalResult | None:
        """The last ``EvalResult`` (None if there was none), forgotten here."""
        result, self.last_result = self.last_result, None
        return result

    def compile_count(self) -> int:
        """How many programs the detect function has compiled (1 after any number of evaluations)."""
        return self.detect_fn._cache_size()


def checkpoint_config(
    loaded, config: ml_collections.ConfigDict | None, workdir: str
) -> ml_collections.ConfigDict:
    """The config to evaluate a loaded checkpoint with: ``config`` (e.g. ``--config``), else the
    workdir's saved one, else the defaults (with a notice on stderr); the model block always comes
    from the checkpoint itself."""
    from mobiledet_jax import config as config_lib
    from mobiledet_jax import workdir as workdir_lib

    config = config or workdir_lib.load_config(workdir)
    if config is None:
        config = config_lib.base_config()
        print(
            "evaluate: no --config and no <workdir>/config.json: using the default data config",
            file=sys.stderr,
        )
    config.unlock()
    config.model = workdir_lib.model_config_from_meta(loaded.meta)
    return config


def evaluate_checkpoint(
    workdir: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> tuple[dict[str, float], int]:
    """COCO metrics of ``<workdir>/checkpoints/<step>`` (default: the latest) and the step scored.

    A QAT checkpoint (one with ``quant_stats``) is evaluated as its fake-quantized model, as
    training evaluates it. Raises FileNotFoundError when there is no such checkpoint."""
    result, step, _ = evaluate_checkpoint_result(workdir, step, config)
    return result.metrics, step


def evaluate_checkpoint_result(
    workdir: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> tuple[EvalResult, int, ml_collections.ConfigDict]:
    """``evaluate_checkpoint`` with the whole ``EvalResult`` and the config it was scored with."""
    from mobiledet_jax import workdir as workdir_lib

    loaded = workdir_lib.load_model(workdir, step)
    config = checkpoint_config(loaded, config, workdir)
    model = build_model(config.model, config.detection.anchors)
    if loaded.variables.get("quant_stats"):
        from mobiledet_jax.models import qat

        model = qat.qat_model(model, scheme=config.model.get("int8_scheme", "asymmetric"))
        logging.info("QAT checkpoint: evaluating the fake-quantized (int8-equivalent) model")
    evaluator = Evaluator(config, make_mesh(config.mesh), model=model)
    evaluator.evaluate(loaded.variables)
    return evaluator.take_result(), loaded.step, config
