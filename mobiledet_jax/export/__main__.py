"""Export a checkpoint to TFLite, with its report.

    python -m mobiledet_jax.export --workdir=<dir> [--checkpoint_step=N] \
        --target=<cpu|edgetpu|dsp|gpu> [--format=float32|float16|int8] \
        [--outputs=raw|postprocessed] --output=<file.tflite>

Target presets: cpu float32, gpu float16, edgetpu and dsp full int8 (post-training quantization on
``--representative_images`` training images; a QAT checkpoint, trained with ``config.train.qat``,
converts its fake-quant model with its trained ranges instead). Flags left unset take
``config.export`` of the workdir's saved config (else the defaults). Writes the file,
``<file>.report.{md,json}`` and, for raw outputs, ``<file>.anchors.npy``. Exit status: 0; 1 when
the edgetpu/dsp preflight finds model ops that would run on the CPU (the file is still written); 2
on a missing checkpoint or bad flags. Library: ``export.exporter``.
"""

import sys

from absl import app, flags, logging

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir
from mobiledet_jax.export import exporter

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "workdir holding checkpoints/", required=True)
flags.DEFINE_integer("checkpoint_step", None, "checkpoint step (default: the latest)")
flags.DEFINE_enum("target", None, sorted(exporter.TARGET_FORMATS), "deployment target preset (cpu)")
flags.DEFINE_enum("format", None, ["float32", "float16", "int8"], "override the preset's format")
flags.DEFINE_enum("outputs", None, list(exporter.OUTPUTS), "raw outputs or NMS op (postprocessed)")
flags.DEFINE_string("output", None, "the .tflite file to write", required=True)
flags.DEFINE_integer("representative_images", None, "int8 calibration images (training input; 64)")
flags.DEFINE_integer("parity_images", None, "evaluation images for the JAX parity check (8)")
flags.DEFINE_string("eval_split", None, "split for parity images and COCO evaluation (val)")
flags.DEFINE_integer("eval_images", None, "COCO evaluation images (-1: the whole split, 0: skip)")
flags.DEFINE_integer("latency_runs", None, "timed invokes for the latency figure (50; 0: skip)")
flags.DEFINE_bool("fast_nms", None, "class-agnostic fast NMS in the post-processing op")
flags.DEFINE_bool("float_input", None, "float formats: float32 pixel input instead of uint8")
flags.DEFINE_string("saved_model_dir", None, "keep the intermediate SavedModel here")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    saved = workdir.load_config(FLAGS.workdir) or config_lib.base_config()
    names = ("target", "format", "outputs", "representative_images", "parity_images")
    names += ("eval_split", "eval_images", "latency_runs", "fast_nms", "float_input")
    names += ("saved_model_dir",)
    opts = exporter.ExportOptions.from_config(
        saved.export, **{name: getattr(FLAGS, name) for name in names}
    )
    try:
        opts.resolved_format()
        result = exporter.export_checkpoint(
            FLAGS.workdir, FLAGS.output, opts, FLAGS.checkpoint_step
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        sys.exit(2)
    e = result["export"]
    print(f"wrote {e['file']} ({e['size_bytes'] / 1e6:.2f} MB, {e['format']}, {e['outputs']})")
    for name, stats in result["parity"]["outputs"].items():
        print(f"parity {name}: max abs diff {stats['max_abs_diff']:.3g}")
    if result["coco"] and "error" not in result["coco"]:
        c = result["coco"]
        print(f"COCO AP: tflite {c['tflite']['AP']:.4f} jax {c['jax']['AP']:.4f}")
    if result["latency"]:
        print(f"latency: {result['latency']['median_ms']:.2f} ms (1 thread)")
    pre = result["preflight"]
    if pre:
        print(pre["table"])
        if not pre["ok"]:
            sys.exit(1)


if __name__ == "__main__":
    app.run(main)
