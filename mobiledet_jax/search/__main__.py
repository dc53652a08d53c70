"""Search a MobileDet for a device: the command line of ``search.searcher.run_search``.

    python -m mobiledet_jax.search --config=configs/search_tiny.py[:<table.json>] --workdir=<dir> \
        [--config.search.c0_scale=0.7] [--config.<field>=<value> ...]

Writes ``<workdir>/arch.json`` (train it with ``--config=configs/searched.py:<workdir>/arch.json``),
``search_log.jsonl``, TensorBoard scalars, ``arch.png`` and ``controller.png``; resumes from the
newest usable search checkpoint. Exit status as ``train`` (``command_line``): 0 done (or preempted
and saved), 2 a usage error, 4 a fault, 130 Ctrl-C (after saving the current step).
"""

import json
import logging

import jax
from absl import flags
from ml_collections import config_flags

from mobiledet_jax import command_line, console_logs
from mobiledet_jax.config import ConfigError
from mobiledet_jax.data.problems import DataError
from mobiledet_jax.search import searcher
from mobiledet_jax.training.preemption import Interrupted

FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "search config file", lock_config=True)
    flags.mark_flag_as_required("config")
    command_line.define_print_config()
    flags.DEFINE_string(
        "workdir", None, "search checkpoints, logs and arch.json go here", required=True
    )


def _exit_line(e: BaseException) -> tuple[str, int] | None:
    if isinstance(e, (ConfigError, DataError, FileNotFoundError)):
        return str(e), command_line.USAGE
    if isinstance(e, Interrupted):
        return str(e), command_line.INTERRUPTED
    if isinstance(e, KeyboardInterrupt):
        return "interrupted before the first search checkpoint", command_line.INTERRUPTED
    if isinstance(e, Exception):
        message = command_line.fault_message(e)
        if message is not None:
            return message, command_line.FAULT
    return None


def main(argv):
    if len(argv) > 1:
        command_line.fail(f"unexpected arguments: {argv[1:]}")
    console_logs.setup()
    logging.info("%d devices (%s)", jax.device_count(), jax.devices()[0].platform)
    try:
        result = searcher.run_search(FLAGS.config, FLAGS.workdir)
    except BaseException as e:
        ending = _exit_line(e)
        if ending is None:
            raise
        command_line.fail(*ending)
    if result and jax.process_index() == 0:
        print(
            json.dumps(
                {k: result[k] for k in ("space", "predicted_ms", "c0_ms", "indices", "step")}
            )
        )


if __name__ == "__main__":
    define_flags()
    command_line.run(main)
