"""Training and evaluation: ``train_and_evaluate(config, workdir)`` and its command line.

    python -m mobiledet_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart \
        [--config.train.num_steps=...]

SPMD over global ``jax.Array`` batches on a 1-D ``data`` mesh (state replicated, synchronized BN), orbax
checkpoints (async, keep K, input position included), resume from the latest complete checkpoint on
start, save-and-exit on SIGTERM (TPU preemption), clu metrics (TensorBoard + console, process 0),
periodic COCO evaluation with the best checkpoint kept, and guards: a NaN/Inf loss stops the run naming
the step (the last checkpoint stays intact), and a recompiled train step is an error.

``config.train.qat`` trains the fake-quantized model of ``export/qat.py`` (qwix; TFLite's int8
scheme): its ``quant_stats`` are calibrated on the first batch (or, on resume, restored), averaged by
every step, saved with the checkpoints, used by the evaluations, and converted by ``export
--format=int8``. A conv qwix would leave float is a QatError before the first step.
"""

import json
import logging
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from clu import metric_writers, periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from ml_collections import config_flags

from mobiledet_jax import checkpoints, console_logs, data, evaluate, finetune, train_step
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.train_checkpoints import TrainCheckpointer

METRICS_FILE = "train_metrics.jsonl"


class PreemptionWatcher:
    """Turns SIGTERM into a flag that every process agrees on before acting."""

    def __init__(self, check_every: int = 10):
        self.requested = False
        self.check_every = check_every
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        flags_all = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags_all))

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)


def _check_data(config, info) -> None:
    if info.num_classes > config.model.num_classes:
        raise ValueError(
            f"the dataset has {info.num_classes} classes but config.model.num_classes is "
            f"{config.model.num_classes}; set --config.model.num_classes={info.num_classes}"
        )
    if config.train.batch_size % jax.device_count():
        raise ValueError(
            f"global batch {config.train.batch_size} does not divide over {jax.device_count()} "
            "devices"
        )


def _write_config(config, workdir: epath.Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json(indent=1, sort_keys=True))


def _init_from(config, state: train_step.TrainState) -> train_step.TrainState:
    cfg = config.checkpoint
    step = None if cfg.init_from_step < 0 else cfg.init_from_step
    source, _ = checkpoints.load_model(cfg.init_from, step)
    source = {k: v for k, v in source.items() if k != "quant_stats"}  # QAT recalibrates
    merged, report = finetune.restore_matching(
        state.variables, source, required_scopes=tuple(cfg.restore_scopes)
    )
    logging.info("initialised from %s: %s", cfg.init_from, report.summary())
    params = jax.device_put(merged["params"], jax.tree.map(lambda a: a.sharding, state.params))
    stats = jax.device_put(
        merged["batch_stats"], jax.tree.map(lambda a: a.sharding, state.batch_stats)
    )
    return state.replace(params=params, batch_stats=stats)


def _qat_model(config, model):
    """QAT (``config.train.qat``): the fake-quantized model of ``export.qat`` (qwix), or ``model``."""
    if not config.train.qat:
        return model
    from mobiledet_jax.export import qat  # qwix, only for QAT runs

    return qat.qat_model(model)  # QatError if a conv would stay float


def _calibrate(qmodel, state: train_step.TrainState, batch, mesh) -> train_step.TrainState:
    """Initial ``quant_stats`` from one training batch (min/max ranges; the train step keeps
    averaging them). Raises QatError if qwix left any conv kernel unquantized."""
    from mobiledet_jax.export import qat

    quant_stats = qat.calibrate(qmodel, state.variables, batch["image"])
    paths = jax.tree_util.tree_leaves_with_path(quant_stats)
    n = sum(getattr(path[-1], "key", None) == "count" for path, _ in paths)
    logging.info("QAT: calibrated %d activation ranges", n)
    return state.replace(quant_stats=jax.device_put(quant_stats, train_step.replicated(mesh)))


def _check_finite(metrics: dict, step: int, ckpt: TrainCheckpointer) -> None:
    """Stops the run at the first NaN/Inf loss, gradient or update, before it can be saved."""
    watched = ("loss", "grad_norm", "update_norm")
    values = jax.device_get({k: metrics[k] for k in watched})
    bad = {k: float(v) for k, v in values.items() if not np.isfinite(v)}
    if bad:
        ckpt.wait()
        what = ", ".join(f"{k} is {v}" for k, v in bad.items())
        raise FloatingPointError(
            f"{what} at step {step}; stopping. The last checkpoint (step {ckpt.latest_step()}) "
            "is intact and holds finite values: lower the learning rate or check the input data."
        )


class _MetricsLog:
    """Console/TensorBoard through clu, plus a JSON-lines file (process 0)."""

    def __init__(self, workdir: epath.Path):
        self.writer = metric_writers.create_default_writer(
            str(workdir), just_logging=jax.process_index() > 0
        )
        self.file = workdir / METRICS_FILE if jax.process_index() == 0 else None

    def write(self, step: int, scalars: dict) -> None:
        self.writer.write_scalars(step, scalars)
        if self.file is not None:
            with self.file.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")

    def flush(self):
        self.writer.flush()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics."""
    workdir = checkpoints.workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = train_step.make_mesh(config.mesh)
    model = build_model(config.model)
    size = input_size(config.model)
    anchors = anchors_lib.anchors_jnp(*size)
    tcfg = config.train

    train_iter = data.build_train_iterator(
        config.data, tcfg.batch_size, size, mesh, seed=config.seed
    )
    _check_data(config, train_iter.info)
    _write_config(config, workdir)

    optimizer = train_step.make_optimizer(tcfg)
    state = train_step.create_train_state(model, optimizer, size, jax.random.key(config.seed), mesh)
    ckpt = TrainCheckpointer(str(workdir), config.checkpoint, config.model)
    train_model = _qat_model(config, model)
    resume = ckpt.latest_step() is not None
    if not resume and config.checkpoint.init_from:
        state = _init_from(config, state)
    if tcfg.qat:  # on resume, this only gives the restore its quant_stats structure
        state = _calibrate(train_model, state, next(train_iter), mesh)
    if resume:
        state = ckpt.restore(state, train_iter)
        logging.info("resumed from checkpoint step %d", int(state.step))

    step_fn = train_step.make_train_step(
        train_model, optimizer, anchors, config.model.num_classes, tcfg, mesh
    )
    log = _MetricsLog(workdir)
    start_step = int(jax.device_get(state.step))
    report = periodic_actions.ReportProgress(
        num_train_steps=tcfg.num_steps, writer=log.writer, every_steps=tcfg.log_every
    )
    preemption = PreemptionWatcher()
    best_ap = ckpt.best_ap()  # -1 when there is none yet: a resumed run keeps the true best
    metrics_window, input_wait, window_start = [], 0.0, time.time()
    compiled_size = None
    final_metrics = {}
    try:
        for step in range(start_step + 1, tcfg.num_steps + 1):
            t0 = time.time()
            batch = next(train_iter)
            input_wait += time.time() - t0
            state, metrics = step_fn(state, batch)
            metrics_window.append(metrics)
            if compiled_size is None:
                compiled_size = step_fn._cache_size()
            if tcfg.nan_check_every and step % tcfg.nan_check_every == 0:
                _check_finite(metrics, step, ckpt)
            report(step)
            if step % tcfg.log_every == 0 or step == tcfg.num_steps:
                if step_fn._cache_size() != compiled_size:
                    raise RuntimeError(
                        f"the train step was recompiled by step {step}: batch shapes, dtypes or "
                        "shardings changed after the first step"
                    )
                window = jax.device_get(metrics_window)
                elapsed = time.time() - window_start
                scalars = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                scalars["learning_rate"] = float(window[-1]["learning_rate"])
                scalars["images_per_sec"] = len(window) * tcfg.batch_size / elapsed
                scalars["input_wait_fraction"] = input_wait / elapsed
                log.write(step, scalars)
                metrics_window, input_wait, window_start = [], 0.0, time.time()
            last = step == tcfg.num_steps
            if step % config.checkpoint.every_steps == 0 or last:
                ckpt.save(state, train_iter, force=last)
            eval_now = config.eval.every_steps and step % config.eval.every_steps == 0
            if (eval_now or last) and config.eval.max_batches != 0:
                with report.timed("eval"):
                    final_metrics = evaluate.evaluate_variables(
                        config, state.variables, mesh, model=train_model
                    )
                log.write(step, {f"eval/{k}": v for k, v in final_metrics.items()})
                if last:  # the command prints the full table once it returns
                    logging.info(
                        "step %d eval: AP %.4f, AP50 %.4f",
                        step,
                        final_metrics["AP"],
                        final_metrics["AP50"],
                    )
                else:
                    logging.info("step %d eval: %s", step, evaluate.format_metrics(final_metrics))
                if final_metrics["AP"] > best_ap:
                    best_ap = final_metrics["AP"]
                    ckpt.save_best(state, final_metrics)
            if preemption.should_stop(step) and not last:
                ckpt.save(state, train_iter, force=True)
                ckpt.wait()
                logging.warning("preempted: saved step %d, exiting", step)
                break
        if start_step >= tcfg.num_steps and config.eval.max_batches != 0:
            logging.info("training finished earlier (step %d): evaluating it", start_step)
            final_metrics = evaluate.evaluate_variables(
                config, state.variables, mesh, model=train_model
            )
        ckpt.wait()
    finally:
        preemption.close()
        log.flush()
        ckpt.close()
    return final_metrics


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
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
    del argv
    if FLAGS.config is None:
        print("train: --config is required", file=sys.stderr)
        sys.exit(2)
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
        metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FloatingPointError as e:
        print(f"train: {e}", file=sys.stderr)
        sys.exit(3)
    if metrics and jax.process_index() == 0:
        print(evaluate.format_metrics(metrics))


if __name__ == "__main__":
    define_flags()
    app.run(main)
