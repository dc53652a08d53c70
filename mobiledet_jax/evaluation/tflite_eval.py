"""COCO evaluation of an exported .tflite file with the same metric code as the JAX model.

The evaluation split is read as [0, 255] pixels (``build_eval_iterator(..., pixels=True)``), the
input the file takes, so images are never normalized and turned back into pixels on the way.
Raw files are decoded and NMS'ed by our JAX post-processing with the anchors of the file's input
size; post-processed files by their ``TFLite_Detection_PostProcess`` op.
"""

import ml_collections

from mobiledet_jax import data
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import postprocess
from mobiledet_jax.evaluation.evaluator import EvalResult, run_evaluation
from mobiledet_jax.models import input_size
from mobiledet_jax.sharding import host_mesh
from mobiledet_jax.tflite import runtime


def evaluate_tflite(
    config: ml_collections.ConfigDict,
    tflite: str | bytes,
    max_batches: int | None = None,
    eval_iterable=None,
) -> dict[str, float]:
    """COCO metrics of an exported .tflite (raw or post-processed) on ``config.eval.split``.

    ``eval_iterable``: a pixel iterator of the split already open (export passes its own), else
    one is built. Raises ValueError when the file is not a detector export, its input size is not
    ``config.model``'s, or its classes are not the split's.
    """
    return evaluate_tflite_result(config, tflite, max_batches, eval_iterable, num_samples=0).metrics


def evaluate_tflite_result(
    config: ml_collections.ConfigDict,
    tflite: str | bytes,
    max_batches: int | None = None,
    eval_iterable=None,
    num_samples: int | None = None,
) -> EvalResult:
    """``evaluate_tflite`` with the whole ``EvalResult`` (for curves, confusion matrix and sample
    images); ``num_samples`` defaults to ``config.eval.num_sample_images`` when
    ``config.eval.figures``, else 0."""
    # one thread by default: the post-processing op breaks score ties differently on 2 or 3
    # threads, and the export report scores with 1 (config.eval.tflite_threads)
    model = runtime.TFLiteModel(tflite, num_threads=config.eval.tflite_threads)
    if model.kind == "scores":
        raise ValueError(
            "the file has class scores but no post-processing op; export it with "
            "--outputs=postprocessed or --outputs=raw"
        )
    _, h, w, _ = model.input_shape
    size = input_size(config.model)
    if (h, w) != size:
        raise ValueError(
            f"the file takes {h}x{w} images but the config's model is {size[0]}x{size[1]}; "
            f"evaluate with the config it was exported from (or --config.model.image_size={h})"
        )
    if eval_iterable is None:
        eval_iterable = data.build_eval_iterator(
            config.data,
            config.eval.batch_size,
            size,
            host_mesh(),
            split=config.eval.split,
            pixels=True,
        )
    num_classes = model.num_classes
    if num_classes != eval_iterable.info.num_classes:
        raise ValueError(
            f"the file has {num_classes} classes, split {config.eval.split!r} has "
            f"{eval_iterable.info.num_classes}: pass a matching data config (e.g. label_map=coco90)"
        )
    anchors = None
    if model.kind == "raw":
        anchors = anchors_lib.anchors_from_config(config.detection.anchors, h, w)
    nms = postprocess.NmsSettings.from_config(config.detection.nms)
    max_batches = config.eval.max_batches if max_batches is None else max_batches
    detect = runtime.tflite_detect_fn(model, anchors, nms)
    if num_samples is None:
        num_samples = config.eval.num_sample_images if config.eval.figures else 0
    return run_evaluation(
        detect, eval_iterable, eval_iterable.info, max_batches, num_samples=num_samples, pixels=True
    )
