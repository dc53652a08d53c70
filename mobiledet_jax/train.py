"""Train (and evaluate) a detector: the command line of ``training.trainer.train_and_evaluate``.

    python -m mobiledet_jax.train --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.train.num_steps=...] [--config.<field>=<value> ...]

Resumes when the workdir holds checkpoints. Multi-process runs (TPU pod slices) call
``jax.distributed.initialize()`` (found automatically on TPU workers, or ``--coordinator_address
--num_processes --process_id``). Exit status: 0 done (or preempted and saved), 2 usage error,
3 a NaN/Inf stop.
"""

import logging
import os

import jax
from absl import flags
from ml_collections import config_flags

from mobiledet_jax import command_line, console_logs
from mobiledet_jax.config import ConfigError
from mobiledet_jax.data.problems import DataError
from mobiledet_jax.evaluation.coco_metric import format_metrics
from mobiledet_jax.training import trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.mark_flag_as_required("config")
    command_line.define_print_config()
    flags.DEFINE_string("workdir", None, "checkpoints, metrics and config go here", required=True)
    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "yes", "no"],
        "jax.distributed.initialize(): auto = when several TPU workers or a coordinator are configured",
    )  # fmt: skip
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
    flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
    flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")


def _maybe_initialize_distributed() -> None:
    explicit = FLAGS.coordinator_address is not None
    multi_worker = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if FLAGS.distributed == "yes" or (FLAGS.distributed == "auto" and (explicit or multi_worker)):
        kwargs = {}
        if explicit:
            kwargs = dict(
                coordinator_address=FLAGS.coordinator_address,
                num_processes=FLAGS.num_processes,
                process_id=FLAGS.process_id,
            )
        jax.distributed.initialize(**kwargs)


def main(argv):
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    console_logs.setup()
    _maybe_initialize_distributed()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    logging.info(
        "process %d/%d, %d devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    try:
        metrics = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FloatingPointError as e:
        command_line.fail(str(e), command_line.NAN_STOP)
    except (ConfigError, DataError) as e:
        command_line.fail(str(e))
    if metrics and jax.process_index() == 0:
        print(format_metrics(metrics))


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
