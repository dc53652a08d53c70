"""Import a TF1 Object Detection API MobileDet checkpoint into a workdir checkpoint of ours.

    python -m mobiledet_jax.import_tf1 --model=edgetpu --checkpoint=<dir>/model.ckpt --workdir=<dir>

Maps every checkpoint variable by name and shape onto our parameters and BatchNorm statistics and
fails (exit status 2) with the full list when anything is left unmapped on either side or a shape
differs; optimizer slots and bookkeeping variables are skipped. The result is written with
``mobiledet_jax.workdir.save_model`` (step 0 by default), which training (fine-tuning), evaluation
and export read. A 90-class checkpoint (the published COCO models) gets the label record
``<workdir>/labels.txt`` with the 90-slot COCO label map (``labels.COCO90_FILE``), so export and
predict name its classes without any data; ``--labels=<file>`` (one name per line) records other
names. A workdir that already holds checkpoints is refused (exit 2) before anything is read: an
import goes into a new workdir, and training starts from it with
``--config.checkpoint.init_from=<workdir>`` (training in the imported workdir itself is refused).
Library: ``models.tf1_import``.
"""

import sys

from absl import flags, logging

from mobiledet_jax import command_line, workdir_lock
from mobiledet_jax import labels as labels_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.config import ConfigError
from mobiledet_jax.models import tf1_import

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("model", None, "cpu | dsp | edgetpu | gpu", required=True)
    flags.DEFINE_string(
        "checkpoint", None, "TF1 checkpoint prefix (e.g. .../model.ckpt)", required=True
    )
    flags.DEFINE_string("workdir", None, "where to write the imported checkpoint", required=True)
    flags.DEFINE_integer("num_classes", 90, "foreground classes of the checkpoint's head")
    flags.DEFINE_integer("step", 0, "checkpoint step number to write")
    flags.DEFINE_string(
        "labels", None, "class names, one per line (default for 90 classes: the COCO label map)"
    )


def _label_names(num_classes: int) -> list[str] | None:
    if FLAGS.labels:
        return labels_lib.read_labels(FLAGS.labels, num_classes)
    if num_classes == len(labels_lib.coco90_names()):
        return list(labels_lib.coco90_names())
    return None


def check_new_workdir(workdir: str) -> None:
    """Refuses a workdir that already holds checkpoints (a trained or imported model): importing
    there would mix two models in one folder. ConfigError, before anything is read or written."""
    for folder in (workdir, str(workdir_lib.workdir_path(workdir) / workdir_lib.BEST_DIR)):
        step = workdir_lib.latest_step(folder)
        if step is not None:
            raise ConfigError(
                f"workdir {workdir_lib.workdir_path(workdir)} already holds checkpoints (step "
                f"{step} in {workdir_lib.checkpoint_dir(folder)}): import into a new --workdir"
            )


def main(argv):
    del argv
    try:
        check_new_workdir(FLAGS.workdir)
        variables, model_config, report = tf1_import.load_tf1_checkpoint(
            FLAGS.model, FLAGS.checkpoint, FLAGS.num_classes
        )
        names = _label_names(FLAGS.num_classes)
        source = f"tf1:{FLAGS.checkpoint}"
        with workdir_lock.WorkdirLock(FLAGS.workdir):  # no training run may start meanwhile
            check_new_workdir(FLAGS.workdir)
            workdir_lib.save_model(FLAGS.workdir, variables, model_config, FLAGS.step, source)
            if names is not None:
                labels_path = workdir_lib.write_labels(FLAGS.workdir, names)
    except (tf1_import.ImportMismatchError, FileNotFoundError, ValueError) as e:
        print(f"import failed: {e}", file=sys.stderr)
        sys.exit(2)
    for name in report.ignored:
        logging.info("skipped non-model variable %s", name)
    print(
        f"imported {report.num_variables} variables ({report.num_values:,} values) from "
        f"{FLAGS.checkpoint} into {workdir_lib.checkpoint_dir(FLAGS.workdir)}/{FLAGS.step}; "
        f"skipped {len(report.ignored)} optimizer/bookkeeping variables"
    )
    if names is None:
        print(f"no label names recorded for {FLAGS.num_classes} classes: pass --labels=<file> here "
              "or to export and predict")  # fmt: skip
    else:
        which = FLAGS.labels or "the COCO-90 label map"
        print(f"labels: {which} recorded in {labels_path}")


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
