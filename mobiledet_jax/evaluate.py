"""COCO evaluation of a model on an evaluation split, as a library and a command.

    python -m mobiledet_jax.evaluate --workdir=<dir> [--checkpoint_step=N] [--config=<file.py>]
    python -m mobiledet_jax.evaluate --tflite=<file.tflite> [--workdir=<dir> | --config=<file.py>]

evaluates a workdir checkpoint (trained or imported) on the config's evaluation split and prints the
12 COCO numbers and per-class AP. The config defaults to the one the training run saved in
``<workdir>/config.json`` (``--config`` overrides it, e.g. to point an imported COCO checkpoint at TFDS
``coco/2017``); the model block always comes from the checkpoint. A QAT checkpoint (one with
``quant_stats``) is evaluated as its fake-quantized model, as training evaluates it. Results are
also written to ``<workdir>/eval_step_<N>.json``.

With ``--tflite`` the model is an exported file (``python -m mobiledet_jax.export``; raw or
post-processed outputs, any format) run in the LiteRT interpreter; the workdir, if given, only
supplies the config (data and evaluation split). The file's input size must be the config's model
size (without a config, the file's size is used) and its classes the split's. Results are written
to ``<file>.eval_<split>.json``.

The core, ``run_coco_evaluation(detect, eval_iterable)``, takes any detection function, so the same
metric code scores a JAX model and an exported TFLite file.
"""

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from mobiledet_jax import checkpoints, console_logs, data
from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.evaluation.coco import CocoEvaluator
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.train_step import make_detect_fn, make_mesh

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


def evaluate_variables(
    config: ml_collections.ConfigDict,
    variables,
    mesh=None,
    max_batches: int | None = None,
    model=None,
) -> dict[str, float]:
    """COCO metrics of model ``variables`` on ``config.eval.split`` of ``config.data``.

    ``model`` defaults to ``build_model(config.model)``; QAT training passes its fake-quantized
    model (``variables`` then include ``quant_stats``), so that its evaluation sees int8 numerics.
    """
    mesh = mesh or make_mesh(config.mesh)
    model = model or build_model(config.model)
    size = input_size(config.model)
    anchors = anchors_lib.anchors_jnp(*size)
    eval_iter = data.build_eval_iterator(
        config.data, config.eval.batch_size, size, mesh, split=config.eval.split
    )
    detect_fn = make_detect_fn(model, anchors, mesh)
    max_batches = config.eval.max_batches if max_batches is None else max_batches
    return run_coco_evaluation(
        lambda batch: detect_fn(variables, batch), eval_iter, eval_iter.info, max_batches
    )


def tflite_num_classes(model) -> int:
    """Foreground classes of a ``tflite_predict.TFLiteModel`` (its logits or scores width - 1)."""
    for d in model.interpreter.get_tensor_details():
        if d["name"] in ("class_logits", "class_scores") and len(d["shape"]) == 3:
            return int(d["shape"][-1]) - 1
    raise ValueError("the file has no class_logits/class_scores tensor")


def evaluate_tflite(
    config: ml_collections.ConfigDict, tflite: str | bytes, max_batches: int | None = None
) -> dict[str, float]:
    """COCO metrics of an exported .tflite (raw or post-processed) on ``config.eval.split``.

    Images go in as the file expects them (pixels; quantized for uint8 inputs); raw files are
    decoded and NMS'ed by our JAX post-processing with the anchors of the file's input size,
    post-processed files by their ``TFLite_Detection_PostProcess`` op. Raises ValueError when the
    file is not a detector export, its input size is not ``config.model``'s, or its classes are not
    the split's.
    """
    from mobiledet_jax.export import tflite_predict  # ai-edge-litert, only for TFLite runs

    model = tflite_predict.TFLiteModel(tflite, num_threads=min(4, os.cpu_count() or 1))
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
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))  # the host runs the file
    eval_iter = data.build_eval_iterator(
        config.data, config.eval.batch_size, size, mesh, split=config.eval.split
    )
    num_classes = tflite_num_classes(model)
    if num_classes != eval_iter.info.num_classes:
        raise ValueError(
            f"the file has {num_classes} classes, split {config.eval.split!r} has "
            f"{eval_iter.info.num_classes}: pass a matching data config (e.g. label_map=coco90)"
        )
    anchors = anchors_lib.anchors_jnp(h, w) if model.kind == "raw" else None
    max_batches = config.eval.max_batches if max_batches is None else max_batches
    detect = tflite_predict.make_detect_fn(model, anchors)
    return run_coco_evaluation(detect, eval_iter, eval_iter.info, max_batches)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a training run saved in ``<workdir>/config.json``, if any."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return None
    base = config_lib.base_config()
    saved = json.loads(path.read_text())
    base.update_from_flattened_dict(_flatten(saved))
    return base


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    lines = [f"{k:>8s} {v:.4f}" for k, v in metrics.items() if "/" not in k]
    per_class = {k: v for k, v in metrics.items() if "/" in k}
    if per_class:
        lines.append("per-class AP:")
        lines += [f"  {k.split('/', 1)[1]:<24s} {v:.4f}" for k, v in per_class.items()]
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file(
        "config", None, "experiment config (default: <workdir>/config.json)"
    )
    flags.DEFINE_string("workdir", None, "workdir holding checkpoints/ (and config.json)")
    flags.DEFINE_integer("checkpoint_step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_string("tflite", None, "evaluate this exported .tflite instead of a checkpoint")


def main_tflite() -> None:
    path = epath.Path(FLAGS.tflite)
    if not path.is_file():
        print(f"evaluate: no such .tflite file: {path}", file=sys.stderr)
        sys.exit(2)
    config = FLAGS.config
    if config is None and FLAGS.workdir:
        config = load_workdir_config(FLAGS.workdir)
        if config is None:
            print(f"evaluate: no config.json in {FLAGS.workdir}", file=sys.stderr)
            sys.exit(2)
    if config is None:
        from mobiledet_jax.export import tflite_predict

        _, h, w, _ = tflite_predict.TFLiteModel(str(path)).input_shape
        config = config_lib.base_config()
        config.model.image_height, config.model.image_width = h, w
        print("evaluate: no --config or --workdir: the default data config, the file's input size")
    try:
        metrics = evaluate_tflite(config, str(path))
    except ValueError as e:
        print(f"evaluate: {path}: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_metrics(metrics))
    out = path.parent / f"{path.name}.eval_{config.eval.split}.json"
    out.write_text(json.dumps(metrics, indent=1))
    print(f"wrote {out}")


def main(argv):
    del argv
    console_logs.setup()
    if FLAGS.tflite:
        return main_tflite()
    if not FLAGS.workdir:
        print(
            "evaluate: --workdir (a checkpoint) or --tflite (a file) is required", file=sys.stderr
        )
        sys.exit(2)
    try:
        variables, meta = checkpoints.load_model(FLAGS.workdir, FLAGS.checkpoint_step)
    except FileNotFoundError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        sys.exit(2)
    config = FLAGS.config or load_workdir_config(FLAGS.workdir)
    if config is None:
        config = config_lib.base_config()
        print("evaluate: no --config and no <workdir>/config.json: using the default data config")
    config.unlock()
    config.model = checkpoints.model_config_from_meta(meta)
    model = None
    if variables.get("quant_stats"):  # a QAT checkpoint: its fake-quant model, as in training
        from mobiledet_jax.export import qat

        model = qat.qat_model(build_model(config.model))
        print("evaluate: QAT checkpoint: evaluating the fake-quantized (int8-equivalent) model")
    metrics = evaluate_variables(config, variables, model=model)
    print(format_metrics(metrics))
    step = FLAGS.checkpoint_step if FLAGS.checkpoint_step is not None else "latest"
    if jax.process_index() == 0:
        out = epath.Path(FLAGS.workdir) / f"eval_step_{step}.json"
        out.write_text(json.dumps(metrics, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
