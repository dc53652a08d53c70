"""Mosaics of training or validation images exactly as the model receives them, with their boxes.

    python -m mobiledet_jax.browse_data --config=configs/quickstart.py --output=<dir> \
        [--split=train|val] [--augmented] [--num=16] [--config.<field>=<value> ...]

writes ``<dir>/mosaic_000.png``, ... : ``--num`` images of the split after the input pipeline
(decode, with ``--augmented`` the configured augmentation of the train split, resize to the
model's input size), each with its boxes and class names; ``config.visualization.mosaic_rows x
mosaic_columns`` images per file. Library: ``visualization.browse``.
"""

from absl import flags
from ml_collections import config_flags

from mobiledet_jax import command_line, console_logs
from mobiledet_jax.visualization import browse

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.DEFINE_string("output", None, "folder of the mosaics", required=True)
    flags.DEFINE_enum("split", "train", list(browse.SPLITS), "which split to browse")
    flags.DEFINE_bool("augmented", False, "train split: apply the configured augmentation")
    flags.DEFINE_integer("num", 16, "images to draw")
    flags.mark_flag_as_required("config")
    command_line.define_print_config()


def main(argv):
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    console_logs.setup()
    files = browse.write_mosaics(
        FLAGS.config, FLAGS.output, FLAGS.split, FLAGS.augmented, FLAGS.num
    )
    for path in files:
        print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
