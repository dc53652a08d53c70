"""Latency tables for the architecture search: build one on this CPU, or fit one for a device.

    python -m mobiledet_jax.latency_table --target=cpu --space=<space> --image_size=<n> \
        --output=<table.json> [--num_classes=4] [--calibration=30] [--holdout=50]

times every piece any architecture of the space can contain (LiteRT, XNNPACK, one thread, this
thread's CPU time), measures ``--calibration`` random whole networks to fit ``b0 + alpha * sum``,
and prints the accuracy on ``--holdout`` other ones (RMSE, % within +-10%, Kendall tau); both sets
are spread evenly over the latency range the space reaches (``latency_builder.
spread_architectures``), so that the fastest and slowest networks a search may return are priced
by a fit that covered them. Per-thread CPU time is steady on one machine, not between VMs: build
the table on the machine it prices, with nothing else running. An
interrupted build resumes from ``<table.json>.partial``. The per-entry CSV goes beside the JSON.

For a device this machine cannot reach (EdgeTPU, DSP, GPU, a phone's CPU):

    python -m mobiledet_jax.latency_table --space=<s> --image_size=<n> --emit_random=100 \
        --output_dir=<d>                     # int8 files + <d>/HOW_TO_MEASURE.txt
    python -m mobiledet_jax.latency_table --target=edgetpu --space=<s> --image_size=<n> \
        --fit=<d>/measured.csv --emitted_dir=<d> --output=<table.json>   # ridge fit + report

or import a per-entry table measured elsewhere (``search.cost_model.CSV_COLUMNS``), calibrated and
reported when emitted networks were timed too: ``--entries_csv=<file> [--fit=... --emitted_dir=...]``.
Exit status: 0; 2 on bad flags or inputs. Library: ``search.latency_builder``.
"""

import dataclasses
import os

from absl import flags

from mobiledet_jax import command_line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    from mobiledet_jax.search import latency_builder as lb

    flags.DEFINE_string("target", "cpu", "cpu, edgetpu, dsp or gpu (only cpu is timed here)")
    flags.DEFINE_string("space", None, "search space name (search.space.SPACES)")
    flags.DEFINE_integer("image_size", 320, "square model input size")
    flags.DEFINE_string("output", None, "the table JSON to write")
    flags.DEFINE_integer("num_classes", lb.DEFAULT_NUM_CLASSES, "foreground classes of the head")
    flags.DEFINE_integer("calibration", lb.DEFAULT_CALIBRATION, "networks fitting b0 and alpha")
    flags.DEFINE_integer("holdout", lb.DEFAULT_HOLDOUT, "other networks for the accuracy report")
    flags.DEFINE_integer("warmup", lb.DEFAULT_WARMUP, "untimed invokes per file")
    flags.DEFINE_integer("rounds", lb.DEFAULT_ROUNDS, "timed rounds per file (median of medians)")
    flags.DEFINE_integer("invokes", lb.DEFAULT_INVOKES, "timed invokes per round")
    flags.DEFINE_integer("seed", 0, "random weights, inputs and architectures")
    flags.DEFINE_integer("emit_random", 0, "write this many random architectures as .tflite")
    flags.DEFINE_string("output_dir", None, "folder for --emit_random")
    flags.DEFINE_enum("format", "int8", ["float32", "float16", "int8"], "--emit_random files")
    flags.DEFINE_string("fit", None, "measured.csv (file, latency_ms) of emitted files")
    flags.DEFINE_string("emitted_dir", None, "the --emit_random folder --fit refers to")
    flags.DEFINE_float("ridge", lb.DEFAULT_RIDGE, "--fit: ridge weight (ms^2 per entry)")
    flags.DEFINE_bool("nonneg", False, "--fit: per-entry weights >= 0")
    flags.DEFINE_integer("folds", lb.DEFAULT_FOLDS, "--fit: cross-validation folds of the report")
    flags.DEFINE_string("prior", None, "--fit: a table JSON to shrink toward (scaled)")
    flags.DEFINE_string("entries_csv", None, "import a per-entry table in the CSV schema")
    command_line.define_json("also write the table's accuracy report as JSON (- for stdout)")


def _device_workflow(target: str) -> str:
    return (
        f"--target={target}: this machine times only the cpu target; for {target}: "
        "--emit_random=N --output_dir=D, time D/*.tflite on the device (D/HOW_TO_MEASURE.txt), "
        "then --fit=D/measured.csv --emitted_dir=D --output=table.json; or import a per-entry "
        "table with --entries_csv"
    )


def _run():
    from mobiledet_jax.search import cost_model, latency_builder, space

    F = FLAGS
    if F.target not in space.TARGETS:
        raise ValueError(f"--target must be one of {space.TARGETS}, got {F.target!r}")
    sp = space.get_space(F.space) if F.space else None
    if F.emit_random:
        if sp is None or not F.output_dir:
            raise ValueError("--emit_random needs --space and --output_dir")
        files = latency_builder.emit_random(
            sp, F.emit_random, F.output_dir, F.image_size, F.num_classes, F.format, F.seed, F.target
        )
        print(f"wrote {len(files)} {F.format} files to {F.output_dir}; time them on the device "
              f"as {os.path.join(F.output_dir, latency_builder.HOW_TO)} says")  # fmt: skip
        return None
    if not F.output:
        raise ValueError("--output (the table JSON) is required")
    if F.fit and not F.emitted_dir:
        raise ValueError("--fit needs --emitted_dir (the --emit_random folder)")
    if F.entries_csv:
        table = latency_builder.import_entries(
            F.entries_csv, F.num_classes, F.emitted_dir, F.fit, F.folds, F.seed
        )
    elif F.fit:
        if sp is None:
            raise ValueError("--fit needs --space")
        prior = cost_model.CostModel.load(F.prior) if F.prior else None
        table = latency_builder.fit_table(
            sp, F.emitted_dir, F.fit, F.ridge, F.folds, F.nonneg, prior, F.seed
        )
    elif F.target != "cpu":
        raise ValueError(_device_workflow(F.target))
    elif sp is None:
        raise ValueError("--space is required to build a table")
    else:
        return latency_builder.build_calibrated_table(
            sp, F.image_size, F.output, F.num_classes, F.calibration, F.holdout,
            F.warmup, F.rounds, F.invokes, F.seed,
        )  # fmt: skip
    if FLAGS["target"].present and table.target != F.target:
        if F.entries_csv:
            raise ValueError(f"{F.entries_csv} is a {table.target} table, not {F.target}")
        table = dataclasses.replace(table, target=F.target)
    table.save(F.output)
    return table


def main(argv):
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    from mobiledet_jax.search import cost_model

    try:
        table = _run()
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise command_line.UsageError(" ".join(str(e).split())) from e
    if table is None:
        return
    print(f"wrote {FLAGS.output}: {len(table.entries)} entries, {table.target}, "
          f"{table.image_size} px, b0 {table.b0:.4f} ms, alpha {table.alpha:.4f}")  # fmt: skip
    if table.report:
        print(f"accuracy: {cost_model.format_report(table.report)}")
    else:
        command_line.notice("no accuracy report (the search refuses this table): add --fit "
                            "and --emitted_dir with timed emitted networks")  # fmt: skip
    command_line.write_json(FLAGS.json, table.report)


if __name__ == "__main__":
    # JAX only traces the pieces here: never probe for an accelerator (a TPU host's libtpu); set
    # before define_flags imports JAX
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    define_flags()
    command_line.run(main)
