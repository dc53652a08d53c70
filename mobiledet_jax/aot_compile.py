"""Ahead-of-time compile of the train step for a Cloud TPU slice, on a machine without TPUs.

    python -m mobiledet_jax.aot_compile --config=configs/mobiledet_edgetpu.py --topology=v4-32 \
        [--config.train.batch_size=512] [--top_ops=15] [--json=/tmp/aot.json]

Needs libtpu, and no TPU: ``pip install -r requirements-tpu-aot.txt`` (the libtpu that
``jax[tpu]`` pins for the installed jax). Compiles the train step the trainer jits for the slice's
compile-only devices and prints, per device, memory (arguments, outputs, temporaries, code; their
total against the HBM), FLOPs and bytes per step, the roofline estimate of the step on the
slice's chips (images/s, the paper's two schedules in hours and chip-hours; estimates from the
compiled program, not measurements) and, with ``--top_ops=N``, the N ops and modules that move the
most bytes and do the most FLOPs, from the compiled HLO. The global batch is ``config.train.batch_size`` (the
schedule's: 512 long, 1024 short); each device gets ``batch / devices``. Topologies are
``<family>-<N>`` as in ``mobiledet_jax/tpu_slices.py``: v2/v3/v4/v5p count TensorCores (v4-32 = 16
chips), v5e/v6e count chips (v5e-256 = 256 chips); v2/v3 expose one JAX device per core, the others
one per chip. Exit status: 0 fits, 1 does not fit the HBM, 2 bad arguments, libtpu missing or
another compile error. Library: ``training.aot``.

A search config (``configs/search_<target>.py``, one with a ``search`` block) compiles the search's
own programs instead, the supernet's train step and its reward pass (``search.compile_check``):

    python -m mobiledet_jax.aot_compile --config=configs/search_edgetpu.py --topology=v4-32
"""

import sys

import jax
from absl import flags
from ml_collections import config_flags

from mobiledet_jax import command_line
from mobiledet_jax.search import compile_check
from mobiledet_jax.training import aot

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.mark_flag_as_required("config")
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v4-32, v5e-256, v5p-8", required=True)
    flags.DEFINE_integer(
        "top_ops", 0, "also list the N largest ops by bytes and by FLOPs, and modules by bytes"
    )
    command_line.define_json("also write the report as JSON to this path (- for stdout)")
    command_line.define_print_config()


def main(argv) -> None:
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    jax.config.update("jax_platforms", "cpu")  # the host needs only the CPU; TPUs are abstract
    lib = compile_check if "search" in FLAGS.config else aot
    try:
        r = lib.run(FLAGS.config, FLAGS.topology, FLAGS.top_ops)
    except MemoryError as e:
        last = str(e)[-3000:].replace("\n", " ")
        command_line.fail(f"DOES NOT FIT {FLAGS.topology}: {last}", command_line.CHECK_FAILED)
    except (ValueError, RuntimeError) as e:
        command_line.fail(str(e).splitlines()[0] if str(e) else repr(e))
    out = sys.stderr if FLAGS.json == "-" else sys.stdout  # --json=- keeps stdout one document
    print(lib.format_report(r), file=out)
    command_line.write_json(FLAGS.json, r)
    if not r["fits"]:
        command_line.fail(
            f"DOES NOT FIT: {r['memory_gib']:.2f} GiB per device > "
            f"{r['hbm_gib']:g} GiB HBM on {r['topology']}",
            command_line.CHECK_FAILED,
        )
    print(f"fits {r['topology']}", file=out)


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
