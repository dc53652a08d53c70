"""Export a checkpoint to TFLite, with its report.

    python -m mobiledet_jax.export --workdir=<dir> [--checkpoint_step=N] \
        --target=<cpu|edgetpu|dsp|gpu> [--format=float32|float16|int8] \
        [--outputs=raw|postprocessed] --output=<file.tflite>

Target presets: cpu float32, gpu float16, edgetpu and dsp full int8 (post-training quantization on
``--representative_images`` training images; a QAT checkpoint, trained with ``config.train.qat``,
converts its fake-quant model with its trained ranges instead). Writes the file,
``<file>.report.{md,json}`` and, for raw outputs, ``<file>.anchors.npy``. Exit status: 0; 1 when
the edgetpu/dsp preflight finds model ops that would run on the CPU (the file is still written); 2
on a missing checkpoint or bad flags.
"""

import sys

from absl import app, flags, logging

from mobiledet_jax.export import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "workdir holding checkpoints/", required=True)
flags.DEFINE_integer("checkpoint_step", None, "checkpoint step (default: the latest)")
flags.DEFINE_enum("target", "cpu", sorted(pipeline.TARGET_FORMATS), "deployment target preset")
flags.DEFINE_enum("format", None, ["float32", "float16", "int8"], "override the preset's format")
flags.DEFINE_enum("outputs", "postprocessed", list(pipeline.OUTPUTS), "raw outputs or NMS op")
flags.DEFINE_string("output", None, "the .tflite file to write", required=True)
flags.DEFINE_integer("representative_images", 64, "int8 calibration images (training input)")
flags.DEFINE_integer("parity_images", 8, "evaluation images for the JAX parity check")
flags.DEFINE_string("eval_split", "val", "split for parity images and COCO evaluation")
flags.DEFINE_integer("eval_images", -1, "COCO evaluation images (-1: the whole split, 0: skip)")
flags.DEFINE_integer("latency_runs", 50, "timed invokes for the latency figure (0: skip)")
flags.DEFINE_bool("fast_nms", False, "class-agnostic fast NMS in the post-processing op")
flags.DEFINE_bool("float_input", False, "float formats: float32 pixel input instead of uint8")
flags.DEFINE_string("saved_model_dir", None, "keep the intermediate SavedModel here")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    opts = pipeline.ExportOptions(
        target=FLAGS.target,
        format=FLAGS.format,
        outputs=FLAGS.outputs,
        representative_images=FLAGS.representative_images,
        parity_images=FLAGS.parity_images,
        eval_split=FLAGS.eval_split,
        eval_images=FLAGS.eval_images,
        latency_runs=FLAGS.latency_runs,
        fast_nms=FLAGS.fast_nms,
        float_input=FLAGS.float_input,
        saved_model_dir=FLAGS.saved_model_dir,
    )
    try:
        opts.resolved_format()
        result = pipeline.export_checkpoint(
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
