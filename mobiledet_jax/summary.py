"""Model summary: a per-layer table (params, MAdds) and a block diagram for any config.

    python -m mobiledet_jax.summary --config=configs/mobiledet_cpu.py \
        [--config.model.image_size=256] [--detail] [--png=blocks.png] [--json=summary.json]

Prints the table of ``models.architecture_summary`` (rows are disjoint: a block's row excludes its
SE row; counting conventions in that module's docstring and docs/reference/architectures.md);
``--detail`` lists every conv under its row, ``--png`` writes the backbone block diagram
(``models.block_diagram``), ``--json`` the rows and totals.
"""

import sys
from collections.abc import Sequence

from absl import flags

from mobiledet_jax import command_line
from mobiledet_jax.models import architecture_summary, block_diagram


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
    flags.DEFINE_string("png", None, "Write the block diagram to this PNG file.")
    command_line.define_json("Write the summary as JSON to this path (- for stdout).")
    flags.DEFINE_bool("detail", False, "List every conv under its row.")
    flags.mark_flags_as_required(["config"])
    command_line.define_print_config()


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    summary = architecture_summary.summarize(FLAGS.config.model)
    out = sys.stderr if FLAGS.json == "-" else sys.stdout  # --json=- keeps stdout one document
    print(architecture_summary.format_table(summary, detail=FLAGS.detail), file=out)
    if FLAGS.png:
        block_diagram.plot_blocks(summary, FLAGS.png)
        print(f"wrote {FLAGS.png}", file=out)
    command_line.write_json(FLAGS.json, architecture_summary.to_dict(summary))
    if FLAGS.json and FLAGS.json != "-":
        print(f"wrote {FLAGS.json}", file=out)


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
