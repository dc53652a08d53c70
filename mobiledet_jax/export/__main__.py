"""Export a checkpoint to TFLite, with its report and deployment bundle.

    python -m mobiledet_jax.export --workdir=<dir> [--checkpoint_step=latest|best|N] \
        --target=<cpu|edgetpu|dsp|gpu> [--format=float32|float16|int8] \
        [--outputs=raw|postprocessed] [--preset=frigate] --output=<file.tflite> \
        [--config=<file.py> [--config.<field>=<value> ...]] [--labels=<file>] \
        [--calibration_images=<folder or glob>]

Target presets: cpu float32, gpu float16, edgetpu and dsp full int8 (post-training quantization on
``--representative_images`` images: ``--calibration_images`` (raw images, frames from the
deployment camera are best), else the data config's training input; a QAT checkpoint, trained
with ``config.train.qat``, converts its fake-quant model with its trained ranges instead).
``--preset=frigate`` exports what Frigate's EdgeTPU detector takes (edgetpu, int8, post-processed,
uint8 input).

The config (data, detection, export blocks; the model always comes from the checkpoint) is
``--config`` with its ``--config.*`` overrides, else the workdir's saved ``config.json``, else the
defaults; flags left unset take its ``config.export``. Label names: ``--labels`` (one name per
line), else the workdir's ``labels.txt`` (``import_tf1`` records the COCO-90 map), else the data
config's categories. A data config whose classes are not the model's, an int8 export without any
calibration source, or a model without names is an error naming the flag that fixes it.

Writes the file, ``<file>.report.{md,json}``, for raw outputs ``<file>.anchors.npy``, for
post-processed outputs ``<file>.labels.txt`` and ``<file>.frigate.yml``. Exit status: 0; 1 when
the edgetpu/dsp preflight finds model ops that would run on the CPU (the file is still written); 2
on a missing checkpoint, bad flags or a data/label/calibration mismatch (one line on stderr).
Library: ``export.exporter``.
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from mobiledet_jax import command_line, config_checks, workdir
from mobiledet_jax import config as config_lib
from mobiledet_jax.export import exporter, inputs

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "experiment config (default: <workdir>/config.json); --config.<field>=<value>"
)
flags.DEFINE_string("workdir", None, "workdir holding checkpoints/", required=True)
flags.DEFINE_string("checkpoint_step", None, "checkpoint: latest (default), best or a step number")
flags.DEFINE_enum("target", None, sorted(exporter.TARGET_FORMATS), "deployment target preset (cpu)")
flags.DEFINE_enum("format", None, ["float32", "float16", "int8"], "override the preset's format")
flags.DEFINE_enum("outputs", None, list(exporter.OUTPUTS), "raw outputs or NMS op (postprocessed)")
flags.DEFINE_enum("preset", None, sorted(exporter.PRESETS), "what a runtime takes (frigate)")
flags.DEFINE_string("output", None, "the .tflite file to write", required=True)
flags.DEFINE_string("labels", None, "class names, one per line (default: the workdir's or data's)")
flags.DEFINE_string("calibration_images", None, "int8 calibration images: a folder or a glob")
flags.DEFINE_integer("representative_images", None, "int8 calibration images (64)")
flags.DEFINE_integer("parity_images", None, "evaluation images for the JAX parity check (8)")
flags.DEFINE_string("eval_split", None, "split for parity images and COCO evaluation (val)")
flags.DEFINE_integer("eval_images", None, "COCO evaluation images (-1: the whole split, 0: skip)")
flags.DEFINE_integer("latency_runs", None, "timed invokes for the latency figure (50; 0: skip)")
flags.DEFINE_bool("fast_nms", None, "class-agnostic fast NMS in the post-processing op")
flags.DEFINE_bool("float_input", None, "float formats: float32 pixel input instead of uint8")
flags.DEFINE_enum(
    "int8_hard_swish",
    None,
    ["mul_add", "op"],
    "int8: HARD_SWISH as MUL, ADD, MUL (mul_add, fast on XNNPACK) or one op",
)
flags.DEFINE_enum(
    "int8_global_pool",
    None,
    ["mean", "avg_pool"],
    "int8: squeeze-excite's global AVERAGE_POOL_2D as MEAN (mean, XNNPACK int8) or not",
)
flags.DEFINE_enum(
    "int8_scheme",
    None,
    ["asymmetric", "symmetric"],
    "int8 scheme (default: the model's): symmetric = zero-point-0 activations and "
    "per-tensor weights, for DSP / NNAPI delegates that require them",
)
flags.DEFINE_string("saved_model_dir", None, "keep the intermediate SavedModel here")
command_line.define_json("also write the report as JSON to this path (- for stdout)")
command_line.define_print_config()

OPTION_FLAGS = ("target", "format", "outputs", "preset", "labels", "calibration_images",
                "representative_images", "parity_images", "eval_split", "eval_images",
                "latency_runs", "fast_nms", "float_input", "saved_model_dir", "int8_hard_swish",
                "int8_global_pool", "int8_scheme")  # fmt: skip


def _fail(message) -> None:
    command_line.fail(" ".join(str(message).split()))


def _config():
    """(config, where its data block came from): --config, else the saved one, else None."""
    if FLAGS.config is not None:
        return FLAGS.config, f"--config={flags.FLAGS['config'].config_filename}"
    saved = workdir.load_config(FLAGS.workdir)
    if saved is not None:
        return saved, f"{FLAGS.workdir}/config.json"
    return None, inputs.DEFAULT_ORIGIN


def _print_summary(result) -> None:
    e = result["export"]
    print(f"wrote {e['file']} ({e['size_bytes'] / 1e6:.2f} MB, {e['format']}, {e['outputs']})")
    lab = result["labels"]
    print(f"labels: {len(lab['names'])} names from {lab['source']}")
    cal = result["calibration"]
    if cal:
        print(f"int8 calibration: {cal.get('images', 0)} images from {cal['source']}")
    for name, stats in result["parity"]["outputs"].items():
        print(f"parity {name}: max abs diff {stats['max_abs_diff']:.3g}")
    c = result["coco"]
    if c and not c.get("error"):
        print(f"COCO AP: tflite {c['tflite']['AP']:.4f} jax {c['jax']['AP']:.4f}")
        o = c["best_f1"]["overall"]
        print(f"score threshold (best F1 at IoU 0.5): {o['threshold']:.3f} (F1 {o['f1']:.3f})")
    elif c:
        print(f"COCO comparison not run: {c['error']}")
    if result["latency"]:
        print(f"latency: {result['latency']['median_ms']:.2f} ms (1 thread)")
    for path in (result.get("bundle") or {}).values():
        print(f"wrote {path}")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config, origin = _config()
    export_block = config.export if config is not None else config_lib.export_config()
    try:
        opts = exporter.ExportOptions.from_config(
            export_block, **{name: getattr(FLAGS, name) for name in OPTION_FLAGS}
        )
        opts.resolved_format()
        config_checks.check_export(opts, FLAGS.output)  # before anything is read or converted
        result = exporter.export_checkpoint(
            FLAGS.workdir,
            FLAGS.output,
            opts,
            workdir.parse_step(FLAGS.checkpoint_step),
            data_config=config.data if config is not None else None,
            detection_config=config.detection if config is not None else None,
            data_origin=origin,
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    command_line.write_json(FLAGS.json, result)
    if FLAGS.json != "-":
        _print_summary(result)
    pre = result["preflight"]
    if pre:
        if FLAGS.json != "-":
            print(pre["table"])
        if not pre["ok"]:
            sys.exit(command_line.CHECK_FAILED)


def _check_overrides(argv) -> None:
    """``--config.<field>`` needs ``--config=<file>`` (absl would exit 1, the preflight's code)."""
    if any(a.startswith("--config.") for a in argv) and not any(
        a == "--config" or a.startswith("--config=") for a in argv
    ):
        _fail(
            "--config.<field> overrides need --config=<file.py> (e.g. the configs/ file the "
            "workdir was trained with)"
        )


if __name__ == "__main__":
    _check_overrides(sys.argv[1:])
    command_line.run(main)
