"""COCO evaluation of a checkpoint or an exported file on an evaluation split.

    python -m mobiledet_jax.evaluate --workdir=<dir> [--checkpoint_step=N] [--config=<file.py>]
    python -m mobiledet_jax.evaluate --tflite=<file.tflite> [--workdir=<dir> | --config=<file.py>]

evaluates a workdir checkpoint (trained or imported) on the config's evaluation split and prints the
12 COCO numbers and per-class AP. The config defaults to the one the training run saved in
``<workdir>/config.json`` (``--config`` overrides it, e.g. to point an imported COCO checkpoint at TFDS
``coco/2017``); the model block always comes from the checkpoint. A QAT checkpoint (one with
``quant_stats``) is evaluated as its fake-quantized model, as training evaluates it. Results are
also written to ``<workdir>/eval_step_<N>.json``, and the pictures of the evaluation
(``evaluation.visual_report``: PR curves per class at IoU 0.5 and 0.5:0.95, F1 against score
threshold, the confusion matrix, AP per class, K sample images with ground truth beside detections,
``metrics.json``) to ``<workdir>/eval_<step>/`` (``--output`` to choose, ``--nofigures`` to skip;
with ``--output`` the result JSON goes there too, so a read-only workdir still evaluates).
The best-F1 score thresholds (IoU 0.5, all classes and per class) are printed after the metrics.

With ``--tflite`` the model is an exported file (``python -m mobiledet_jax.export``; raw or
post-processed outputs, any format) run in the LiteRT interpreter; the workdir, if given, only
supplies the config (data and evaluation split). The file's input size must be the config's model
size (without a config, the file's size is used) and its classes the split's. Results are written
to ``<file>.eval_<split>.json`` and the pictures to ``--output`` (default ``<file>.eval_<split>/``).
Libraries: ``evaluation.evaluator``, ``evaluation.tflite_eval`` and ``evaluation.visual_report``.
"""

import sys

import jax
from absl import flags
from etils import epath
from ml_collections import config_flags

from mobiledet_jax import atomic_files, command_line, config_checks, console_logs, workdir
from mobiledet_jax import config as config_lib
from mobiledet_jax.evaluation import curves, evaluator
from mobiledet_jax.evaluation.coco_metric import format_metrics

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file(
        "config", None, "experiment config (default: <workdir>/config.json)"
    )
    flags.DEFINE_string("workdir", None, "workdir holding checkpoints/ (and config.json)")
    flags.DEFINE_string("checkpoint_step", None, "checkpoint: latest (default), best or a step")
    flags.DEFINE_string("tflite", None, "evaluate this exported .tflite instead of a checkpoint")
    flags.DEFINE_string(
        "output",
        None,
        "folder of the figures (default <workdir>/eval_<step>/, <file>.eval_<split>/)",
    )
    flags.DEFINE_bool("figures", True, "write the figures, sample images and metrics.json")
    command_line.define_json("also write the metrics as JSON to this path (- for stdout)")
    command_line.define_print_config()


def _fail(message: str) -> None:
    command_line.fail(message)


def _results_folder(default) -> epath.Path:
    """Where the result JSON goes: ``--output`` when given (a read-only workdir still evaluates),
    else beside the checkpoint or file."""
    return epath.Path(FLAGS.output) if FLAGS.output else default


def _check(config, default_folder, device_count: int | None) -> None:
    """The evaluation settings and a writable place for the results, before anything is read."""
    try:
        if config is not None:
            config_checks.check_eval_config(config, device_count)
        if FLAGS.output:
            config_checks.check_writable(FLAGS.output, "--output")
        else:
            config_checks.check_writable(default_folder, "the results folder")
    except config_lib.ConfigError as e:
        hint = "" if FLAGS.output else "; pass --output=<folder> for the results and figures"
        _fail(f"{e}{hint}")


def _report(result, config, out_dir, step=None) -> None:
    """Prints the metrics and best-F1 thresholds; writes the figures into ``out_dir``."""
    best_f1 = curves.best_f1_thresholds(result.coco)
    command_line.write_json(FLAGS.json, {"metrics": result.metrics, "best_f1": best_f1})
    out = sys.stderr if FLAGS.json == "-" else sys.stdout  # --json=- keeps stdout one document
    print(format_metrics(result.metrics), file=out)
    print(curves.format_best_f1(best_f1), file=out)
    if FLAGS.figures and jax.process_index() == 0:
        from mobiledet_jax.evaluation import visual_report  # matplotlib, only when drawing

        written = visual_report.write_eval_report(result, out_dir, config, step)
        print(f"wrote {len(written)} files to {out_dir}", file=out)


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
    _check(config, path.parent, None)  # the file runs on the host: no batch sharding
    num_samples = config.eval.num_sample_images if FLAGS.figures else 0
    try:
        result = tflite_eval.evaluate_tflite_result(config, str(path), num_samples=num_samples)
    except ValueError as e:
        _fail(f"{path}: {e}")
    stem = path.parent / f"{path.name}.eval_{config.eval.split}"
    _report(result, config, FLAGS.output or stem)
    out = _results_folder(path.parent) / f"{stem.name}.json"
    atomic_files.write_json(out, result.metrics, indent=1)
    print(f"wrote {out}", file=sys.stderr if FLAGS.json == "-" else sys.stdout)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}")
    console_logs.setup()
    if FLAGS.tflite:
        return main_tflite()
    if not FLAGS.workdir:
        _fail("--workdir (a checkpoint) or --tflite (a file) is required")
    config = FLAGS.config if FLAGS.config is not None else workdir.load_config(FLAGS.workdir)
    _check(config, epath.Path(FLAGS.workdir), jax.device_count())
    try:
        result, scored_step, config = evaluator.evaluate_checkpoint_result(
            FLAGS.workdir, workdir.parse_step(FLAGS.checkpoint_step), FLAGS.config
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    figures_dir = FLAGS.output or epath.Path(FLAGS.workdir) / f"eval_{scored_step}"
    _report(result, config, figures_dir, scored_step)
    if jax.process_index() == 0:
        step = FLAGS.checkpoint_step if FLAGS.checkpoint_step is not None else "latest"
        out = _results_folder(epath.Path(FLAGS.workdir)) / f"eval_step_{step}.json"
        atomic_files.write_json(out, result.metrics, indent=1)
        print(f"wrote {out}", file=sys.stderr if FLAGS.json == "-" else sys.stdout)


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
