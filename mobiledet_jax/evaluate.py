"""COCO evaluation of a checkpoint or an exported file on an evaluation split.

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
to ``<file>.eval_<split>.json``. Libraries: ``evaluation.evaluator`` and ``evaluation.tflite_eval``.
"""

import json
import sys

import jax
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from mobiledet_jax import config as config_lib
from mobiledet_jax import console_logs, workdir
from mobiledet_jax.evaluation.coco_metric import format_metrics
from mobiledet_jax.evaluation.evaluator import Evaluator
from mobiledet_jax.models import build_model
from mobiledet_jax.sharding import make_mesh

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file(
        "config", None, "experiment config (default: <workdir>/config.json)"
    )
    flags.DEFINE_string("workdir", None, "workdir holding checkpoints/ (and config.json)")
    flags.DEFINE_integer("checkpoint_step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_string("tflite", None, "evaluate this exported .tflite instead of a checkpoint")


def _fail(message: str) -> None:
    print(f"evaluate: {message}", file=sys.stderr)
    sys.exit(2)


def main_tflite() -> None:
    from mobiledet_jax.evaluation import tflite_eval  # ai-edge-litert, only for TFLite runs
    from mobiledet_jax.tflite import runtime

    path = epath.Path(FLAGS.tflite)
    if not path.is_file():
        _fail(f"no such .tflite file: {path}")
    config = FLAGS.config
    if config is None and FLAGS.workdir:
        config = workdir.load_config(FLAGS.workdir)
        if config is None:
            _fail(f"no config.json in {FLAGS.workdir}")
    if config is None:
        _, h, w, _ = runtime.TFLiteModel(str(path)).input_shape
        config = config_lib.base_config()
        config.model.image_height, config.model.image_width = h, w
        print(
            "evaluate: no --config or --workdir: the default data config, the file's input size",
            file=sys.stderr,
        )
    try:
        metrics = tflite_eval.evaluate_tflite(config, str(path))
    except ValueError as e:
        _fail(f"{path}: {e}")
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
        _fail("--workdir (a checkpoint) or --tflite (a file) is required")
    try:
        loaded = workdir.load_model(FLAGS.workdir, FLAGS.checkpoint_step)
    except FileNotFoundError as e:
        _fail(str(e))
    config = FLAGS.config or workdir.load_config(FLAGS.workdir)
    if config is None:
        config = config_lib.base_config()
        print(
            "evaluate: no --config and no <workdir>/config.json: using the default data config",
            file=sys.stderr,
        )
    config.unlock()
    config.model = workdir.model_config_from_meta(loaded.meta)
    model = build_model(config.model, config.detection.anchors)
    if loaded.variables.get(
        "quant_stats"
    ):  # a QAT checkpoint: its fake-quant model, as in training
        from mobiledet_jax.models import qat

        model = qat.qat_model(model)
        print("evaluate: QAT checkpoint: evaluating the fake-quantized (int8-equivalent) model")
    metrics = Evaluator(config, make_mesh(config.mesh), model=model).evaluate(loaded.variables)
    print(format_metrics(metrics))
    if jax.process_index() == 0:
        step = FLAGS.checkpoint_step if FLAGS.checkpoint_step is not None else "latest"
        out = epath.Path(FLAGS.workdir) / f"eval_step_{step}.json"
        out.write_text(json.dumps(metrics, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
