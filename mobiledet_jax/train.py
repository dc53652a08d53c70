"""Train (and evaluate) a detector: the command line of ``training.trainer.train_and_evaluate``.

    python -m mobiledet_jax.train --config=configs/quickstart.py --workdir=runs/quickstart \
        [--config.train.num_steps=...] [--config.<field>=<value> ...]

Resumes when the workdir holds checkpoints (from the newest usable one). Multi-process runs (TPU
pod slices) call ``jax.distributed.initialize()`` (found automatically on TPU workers, or
``--coordinator_address --num_processes --process_id``). Exit status (``command_line``): 0 done
(or preempted by SIGTERM and saved), 2 usage error, 3 a NaN/Inf stop, 4 a fault (disk full,
permission denied, a lost coordinator, no usable checkpoint: one line naming the cause and the
last good checkpoint), 130 Ctrl-C (the first saves the current step: ``interrupted: saved step N``).

A coordinator lost mid-run ends every other process inside XLA (jaxlib 0.10 logs a fatal error and
aborts; its fatal-error callback cannot be replaced from Python): only the errors that reach Python
(``command_line.fault_message``) become the one line.
"""

import logging
import os

import jax
from absl import flags
from ml_collections import config_flags

from mobiledet_jax import checkpoint_integrity, command_line, console_logs
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.config import ConfigError
from mobiledet_jax.data.problems import DataError
from mobiledet_jax.evaluation.coco_metric import format_metrics
from mobiledet_jax.training import trainer
from mobiledet_jax.training.checkpointing import TRAIN_ITEMS
from mobiledet_jax.training.preemption import Interrupted

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


def last_good_checkpoint(workdir: str) -> str:
    """``the last good checkpoint is step N (<folder>)``: the newest complete step whose checksums
    match (no restore), for the one-line messages of a failed run."""
    directory = workdir_lib.checkpoint_dir(workdir)
    step = checkpoint_integrity.last_good_step(directory, TRAIN_ITEMS)
    if step is None:
        return f"no usable checkpoint in {directory}"
    return f"the last good checkpoint is step {step} ({directory / str(step)})"


def exit_line(e: BaseException, workdir: str) -> tuple[str, int] | None:
    """The one line and exit status of an error that ended a run in ``workdir``, or None for an
    error that is not the user's nor the machine's (a bug: its traceback is shown)."""
    if isinstance(e, FloatingPointError):
        return str(e), command_line.NAN_STOP
    if isinstance(e, (ConfigError, DataError)):
        return str(e), command_line.USAGE
    if isinstance(e, Interrupted):  # Ctrl-C, after saving the current step
        return str(e), command_line.INTERRUPTED
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C before the loop, or twice
        return f"interrupted; {last_good_checkpoint(workdir)}", command_line.INTERRUPTED
    if not isinstance(e, Exception):
        return None
    message = command_line.fault_message(e)
    if message is None:
        return None
    if not isinstance(e, checkpoint_integrity.CheckpointError):
        message = f"{message}; {last_good_checkpoint(workdir)}"
    return message, command_line.FAULT


def _train() -> dict:
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
    return trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main(argv):
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    console_logs.setup()
    try:
        metrics = _train()
    except BaseException as e:
        ending = exit_line(e, FLAGS.workdir)
        if ending is None:
            raise
        command_line.fail(*ending)
    if metrics and jax.process_index() == 0:
        print(format_metrics(metrics))


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
