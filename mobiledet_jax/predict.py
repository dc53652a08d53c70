"""Detect objects in images or a video with a workdir checkpoint or an exported .tflite file.

    python -m mobiledet_jax.predict --model=<workdir | file.tflite> \
        --source=<image | folder | glob | video> --output=<dir> [--score_threshold=0.3] \
        [--checkpoint_step=latest|best|N] [--labels=<file>] [--annotations=<instances.json>]

Writes the annotated images (boxes, class names, scores, one colour per class) under their own
names, or ``<stem>.annotated.mp4`` for a video, and ``predictions.json`` in the COCO results format
(``--annotations`` takes image and category ids from a COCO file, so that ``evaluate`` can score
it; use ``--score_threshold=0`` for mAP). Prints one line per image: detections and milliseconds.
The preprocessing is the export's (the model's input size, TF1 bilinear, RGB uint8), so a workdir
and its float32 file give the same detections. Exit status: 0; 2 on a missing model, source or
bad flag. Library: ``inference.runner.predict_source`` and ``inference.Detector``.
"""

from absl import flags

from mobiledet_jax import command_line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("model", None, "a workdir or an exported .tflite file", required=True)
    flags.DEFINE_string("source", None, "an image, a folder, a glob or a video", required=True)
    flags.DEFINE_string("output", None, "folder for the annotated images and predictions.json",
                        required=True)  # fmt: skip
    flags.DEFINE_float("score_threshold", 0.3, "keep detections with at least this score")
    flags.DEFINE_string("checkpoint_step", None, "a workdir's checkpoint: latest, best or a step")
    flags.DEFINE_string("labels", None, "class names, one per line (default: the model's)")
    flags.DEFINE_string("annotations", None, "COCO instances JSON giving image and category ids")
    flags.DEFINE_integer("num_threads", 2, "LiteRT interpreter threads (.tflite models)")
    command_line.define_json("also write the run's summary as JSON to this path (- for stdout)")


def _fail(message) -> None:
    command_line.fail(" ".join(str(message).split()))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}")
    from mobiledet_jax import console_logs
    from mobiledet_jax.inference import Detector, runner

    console_logs.setup()
    try:
        detector = Detector.load(FLAGS.model, FLAGS.checkpoint_step, FLAGS.labels,
                                 num_threads=FLAGS.num_threads)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    print(f"model: {detector.source}, input {detector.input_size[0]}x{detector.input_size[1]}, "
          f"{len(detector.names)} classes (names: {detector.names_source})")  # fmt: skip
    try:
        summary = runner.predict_source(
            detector, FLAGS.source, FLAGS.output, FLAGS.score_threshold, FLAGS.annotations
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    command_line.write_json(
        FLAGS.json,
        {
            "images": summary.images,
            "detections": summary.detections,
            "mean_ms": summary.mean_ms,
            "written": [str(w) for w in summary.written],
            "predictions_file": str(summary.predictions_file),
        },
    )
    print(
        f"{summary.images} images, {summary.detections} detections with score >= "
        f"{FLAGS.score_threshold} ({summary.mean_ms:.1f} ms per image); wrote "
        f"{len(summary.written)} annotated file(s) and {summary.predictions_file}"
    )


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
