"""``train_and_evaluate(config, workdir)``: the training loop behind ``python -m mobiledet_jax.train``.

SPMD over global ``jax.Array`` batches on a 1-D ``data`` mesh (state replicated, synchronized BN),
orbax checkpoints (async, keep K, input position included), resume from the newest usable
checkpoint on start (``checkpointing``), save-and-exit on SIGTERM (TPU preemption) and Ctrl-C,
metrics to TensorBoard (clu) and JSON lines with one console line per log step
(``progress``, process 0), periodic COCO evaluation with an evaluator built
once and the best checkpoint kept, and guards: a NaN/Inf loss, gradient or update stops the run
naming the step before anything non-finite is saved (``monitoring.FiniteGuard``), and a recompiled
train step is an error.

``config.train.qat`` trains the fake-quantized model of ``models/qat.py`` (qwix; TFLite's int8
scheme): its ``quant_stats`` are calibrated on the first batch (or, on resume, restored), averaged
by every step, saved with the checkpoints, used by the evaluations, and converted by ``export
--format=int8``. A conv qwix would leave float is a QatError before the first step.
"""

import contextlib
import dataclasses
import logging
import time
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax
from etils import epath

from mobiledet_jax import config_checks, data, workdir_lock
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.config import ConfigError
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.evaluation.coco_metric import format_metrics
from mobiledet_jax.evaluation.evaluator import Evaluator
from mobiledet_jax.models import bn_folding, build_model, input_size
from mobiledet_jax.progress import Progress
from mobiledet_jax.sharding import make_mesh, replicated
from mobiledet_jax.training import finetune
from mobiledet_jax.training.checkpointing import TrainCheckpointer
from mobiledet_jax.training.monitoring import (
    FiniteGuard,
    MetricsLog,
    progress_text,
    write_eval_figures,
)
from mobiledet_jax.training.optimizer import make_optimizer
from mobiledet_jax.training.preemption import PreemptionWatcher
from mobiledet_jax.training.state import TrainState, create_train_state
from mobiledet_jax.training.step import make_train_step


def _check_data(config, info) -> None:
    """The model must have exactly the data's classes: a full recipe (90 COCO classes) on the
    4-class synthetic default stops here, naming the fix (every other setting was checked before
    any data was read: ``config_checks.check_train_config``)."""
    model_classes, data_classes = config.model.num_classes, info.num_classes
    if data_classes > model_classes:
        raise ConfigError(
            f"the {config.data.source} data has {data_classes} classes but "
            f"config.model.num_classes is {model_classes}; set "
            f"--config.model.num_classes={data_classes}"
        )
    if data_classes < model_classes:
        hint = (
            "point --config.data.source (and its paths) at your data, or "
            if config.data.source == "synthetic"
            else ""
        )
        raise ConfigError(
            f"config.model.num_classes is {model_classes} but the {config.data.source} data has "
            f"{data_classes} classes: {hint}set --config.model.num_classes={data_classes}"
        )


def _init_from(config, state: TrainState) -> TrainState:
    cfg = config.checkpoint
    loaded = workdir_lib.load_model(cfg.init_from, cfg.init_from_step)  # latest, best or N
    source = {k: v for k, v in loaded.variables.items() if k != "quant_stats"}  # QAT recalibrates
    merged, report = finetune.restore_matching(
        state.variables, source, required_scopes=tuple(cfg.restore_scopes)
    )
    logging.info("initialised from %s step %d: %s", cfg.init_from, loaded.step, report.summary())
    params = jax.device_put(merged["params"], jax.tree.map(lambda a: a.sharding, state.params))
    stats = jax.device_put(
        merged["batch_stats"], jax.tree.map(lambda a: a.sharding, state.batch_stats)
    )
    return state.replace(params=params, batch_stats=stats)


def _qat_model(config, model):
    """QAT (``config.train.qat``): the fake-quantized model of ``models.qat`` (qwix), or ``model``."""
    if not config.train.qat:
        return model
    from mobiledet_jax.models import qat  # qwix, only for QAT runs

    # QatError if a conv would stay float
    return qat.qat_model(model, scheme=config.model.int8_scheme)


def _fold_batch_norms(model, state: TrainState, mesh, optimizer=None) -> TrainState:
    """QAT with ``train.qat_fold_bn``: BatchNorm folded into the conv kernels with the current
    moving statistics (``models.qat.fold_batch_norms``); BN then stays frozen. At the start of
    QAT (``train.qat_bn_freeze_delay`` 0), or after the delay: then the optimizer's momentum of
    each kernel is scaled by the same factor, the velocity of the folded kernel."""
    from mobiledet_jax.models import qat

    factors: dict = {}
    folded = qat.fold_batch_norms(model, state.variables, factors)
    logging.info(
        "QAT: BatchNorm folded into %d conv kernels at step %d (frozen statistics from here)",
        len(factors),
        int(jax.device_get(state.step)),
    )
    put = lambda tree: jax.device_put(tree, replicated(mesh))
    state = state.replace(params=put(folded["params"]), batch_stats=put(folded["batch_stats"]))
    if optimizer is not None:
        flat = flax.traverse_util.flatten_dict(state.params, sep="/")
        scale = flax.traverse_util.unflatten_dict(
            {k: factors.get(k, np.float32(1.0)) for k in flat}, sep="/"
        )
        opt_state = optax.tree_utils.tree_map_params(
            optimizer, lambda v, s: v * s, state.opt_state, scale
        )
        state = state.replace(opt_state=put(opt_state))
    return state


def _calibrate(qmodel, state: TrainState, batch, mesh) -> TrainState:
    """Initial ``quant_stats`` from one training batch (min/max ranges; the train step keeps
    averaging them). Raises QatError if qwix left any conv kernel unquantized."""
    from mobiledet_jax.models import qat

    quant_stats = qat.calibrate(qmodel, state.variables, batch["image"])
    paths = jax.tree_util.tree_leaves_with_path(quant_stats)
    n = sum(getattr(path[-1], "key", None) == "count" for path, _ in paths)
    logging.info("QAT: calibrated %d activation ranges", n)
    return state.replace(quant_stats=jax.device_put(quant_stats, replicated(mesh)))


def _window_scalars(window: list[dict], batch_size: int, elapsed: float, input_wait: float):
    window = jax.device_get(window)
    keys = [k for k in window[0] if k != "finite"]
    scalars = {k: float(np.mean([m[k] for m in window])) for k in keys}
    scalars["learning_rate"] = float(window[-1]["learning_rate"])
    scalars["images_per_sec"] = len(window) * batch_size / elapsed
    scalars["input_wait_fraction"] = input_wait / elapsed
    return scalars


@dataclasses.dataclass
class _Run:
    """Everything a training run holds, built once by ``_prepare``."""

    config: ml_collections.ConfigDict
    workdir: epath.Path
    train_iter: Any
    state: TrainState
    ckpt: TrainCheckpointer
    step_fn: Any
    evaluator: Evaluator | None
    lock: workdir_lock.WorkdirLock | None = None  # held until train_and_evaluate returns
    # QAT before the BN freeze (train.qat_bn_freeze_delay): the step with BN correction, used
    # while the state's step is below freeze_at; then the state is folded and step_fn takes over
    pre_freeze_step_fn: Any = None
    freeze_at: int = 0
    fold: Any = None  # state -> folded state

    def step_for(self, step: int):
        """The step function that takes the state from ``step - 1`` to ``step``."""
        if self.pre_freeze_step_fn is not None and step <= self.freeze_at:
            return self.pre_freeze_step_fn
        return self.step_fn


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> _Run:
    """Checks every setting (nothing is read or written before), takes the workdir's lock (a second
    run refuses at once), refuses a workdir whose checkpoints are another setting's, then builds
    the run; ``config.json`` and ``labels.txt`` are written last, once everything else stands."""
    config_checks.check_train_config(config, jax.device_count(), workdir)
    lock = workdir_lock.hold(workdir)  # creates the workdir
    try:
        return _prepare_locked(config, workdir_lib.workdir_path(workdir), lock)
    except BaseException:
        lock.release()
        raise


def _prepare_locked(config, workdir: epath.Path, lock) -> _Run:
    config_checks.check_workdir(config, str(workdir))
    mesh = make_mesh(config.mesh)
    model = build_model(config.model, config.detection.anchors)
    size = input_size(config.model)
    anchors = anchors_lib.anchors_from_config(config.detection.anchors, *size)
    tcfg = config.train
    train_iter = data.build_train_iterator(
        config.data, tcfg.batch_size, size, mesh, seed=config.seed
    )
    _check_data(config, train_iter.info)

    optimizer = make_optimizer(tcfg)
    state = create_train_state(model, optimizer, size, jax.random.key(config.seed), mesh)
    ckpt = TrainCheckpointer(str(workdir), config.checkpoint, config.model)
    train_model = _qat_model(config, model)
    # Where the starting state comes from, in this order:
    # 1. a fresh initialisation (above, from config.seed);
    # 2. on a new run only, config.checkpoint.init_from overwrites the restorable variables
    #    (backbone and neck must all match; the class head may be re-created);
    # 3. QAT: quant_stats calibrated on one training batch (on resume this only gives the restore
    #    below the structure of quant_stats; the saved ranges replace it);
    # 4. resume: the latest complete checkpoint of this workdir replaces everything (state and
    #    input position), so a restarted run continues exactly where it stopped.
    resume = ckpt.latest_step() is not None
    if not resume and config.checkpoint.init_from:
        state = _init_from(config, state)
    # QAT with folded BN: folded at the start, or after train.qat_bn_freeze_delay steps (until
    # then corrected to batch statistics); a checkpoint from step >= the delay holds folded weights
    fold_bn = tcfg.qat and tcfg.qat_fold_bn
    delay = tcfg.get("qat_bn_freeze_delay", 0) if fold_bn else 0
    if fold_bn and not delay and not resume:
        state = _fold_batch_norms(model, state, mesh)
    if tcfg.qat:
        with _correcting(delay > 0):  # the convs qwix must see: the folded ones
            state = _calibrate(train_model, state, next(train_iter), mesh)
    if resume:
        state = ckpt.restore(state, train_iter)
        logging.info("resumed from checkpoint step %d", int(state.step))
    step_args = (train_model, optimizer, anchors, config.model.num_classes, tcfg, mesh,
                 config.detection, config.model.int8_scheme)  # fmt: skip
    step_fn = make_train_step(*step_args)
    pre_freeze = None
    if delay and int(jax.device_get(state.step)) < delay:
        pre_freeze = make_train_step(*step_args, bn_correction=True)
        logging.info("QAT: BatchNorm corrected to batch statistics until step %d", delay)
    evaluator = None
    if config.eval.max_batches != 0:  # built once: every evaluation reuses iterator and program
        eval_model = bn_folding.Corrected(train_model) if delay else train_model
        evaluator = Evaluator(config, mesh, model=eval_model)
    workdir_lib.write_config(config, str(workdir))  # after every check and the restore
    workdir_lib.write_labels(str(workdir), train_iter.info.category_names)
    fold = lambda st: _fold_batch_norms(model, st, mesh, optimizer)
    return _Run(config, workdir, train_iter, state, ckpt, step_fn, evaluator, lock, pre_freeze,
                delay, fold)  # fmt: skip


def _correcting(on: bool):
    return bn_folding.batch_norm_correction() if on else contextlib.nullcontext()


def _evaluate(run: _Run, step: int, last: bool, log: MetricsLog, best_ap: float):
    """One evaluation of the current state: logged, and kept as ``best/`` when it is the best."""
    metrics = run.evaluator.evaluate(run.state.variables)
    log.write(step, {f"eval/{k}": v for k, v in metrics.items()})
    final_dir = run.workdir / f"eval_{step}" if last else None  # pictures: TensorBoard, + folder
    write_eval_figures(log, step, run.evaluator.take_result(), run.config, final_dir)
    if last:  # the command prints the full table once it returns
        logging.info("step %d eval: AP %.4f, AP50 %.4f", step, metrics["AP"], metrics["AP50"])
    else:
        logging.info("step %d eval: %s", step, format_metrics(metrics))
    if metrics["AP"] > best_ap:
        best_ap = metrics["AP"]
        run.ckpt.save_best(run.state, metrics)
    return metrics, best_ap


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns final metrics."""
    run = _prepare(config, workdir)
    tcfg, ckpt = config.train, run.ckpt
    log, guard = MetricsLog(run.workdir), FiniteGuard()
    start_step = int(jax.device_get(run.state.step))
    bar = Progress(  # the first step (compile) stays out of the ETA
        "train", tcfg.num_steps, "step", start=start_step, eta_from=start_step + 1,
        enabled=jax.process_index() == 0,
    )  # fmt: skip
    preemption = PreemptionWatcher()
    best_ap = ckpt.best_ap()  # -1 when there is none yet: a resumed run keeps the true best
    metrics_window, input_wait, window_start = [], 0.0, time.time()
    compiled_size = None
    final_metrics = {}
    check_finite = lambda: guard.check(ckpt.latest_step_after_wait)
    try:
        for step in range(start_step + 1, tcfg.num_steps + 1):
            t0 = time.time()
            batch = next(run.train_iter)
            input_wait += time.time() - t0
            step_fn = run.step_for(step)
            run.state, metrics = step_fn(run.state, batch)
            metrics_window.append(metrics)
            guard.add(step, metrics)
            compiled_size = compiled_size or step_fn._cache_size()
            if run.pre_freeze_step_fn is not None and step == run.freeze_at:
                run.state = run.fold(run.state)  # before this step's checkpoint: folded from here
                compiled_size = None  # the frozen step compiles next
            if tcfg.nan_check_every and step % tcfg.nan_check_every == 0:
                check_finite()
            last = step == tcfg.num_steps
            if step % tcfg.log_every == 0 or last:
                check_finite()
                if compiled_size is not None and step_fn._cache_size() != compiled_size:
                    raise RuntimeError(
                        f"the train step was recompiled by step {step}: batch shapes, dtypes or "
                        "shardings changed after the first step"
                    )
                elapsed = time.time() - window_start
                scalars = _window_scalars(metrics_window, tcfg.batch_size, elapsed, input_wait)
                log.write(step, scalars)
                bar.update(step, progress_text(scalars), line=True)
                metrics_window, input_wait, window_start = [], 0.0, time.time()
            else:
                bar.update(step)
            if step % config.checkpoint.every_steps == 0 or last:
                check_finite()  # nothing non-finite is ever saved
                ckpt.save(run.state, run.train_iter, force=last)
            eval_now = config.eval.every_steps and step % config.eval.every_steps == 0
            if (eval_now or last) and run.evaluator is not None:
                check_finite()
                final_metrics, best_ap = _evaluate(run, step, last, log, best_ap)
            if preemption.should_stop(step) and not last:
                check_finite()
                ckpt.save(run.state, run.train_iter, force=True)
                ckpt.wait()
                preemption.stopped(step)  # Ctrl-C: raises Interrupted (the command exits 130)
                logging.warning("preempted: saved step %d, exiting", step)
                break
        if start_step >= tcfg.num_steps and run.evaluator is not None:
            logging.info("training finished earlier (step %d): evaluating it", start_step)
            final_metrics = run.evaluator.evaluate(run.state.variables)
        ckpt.wait()
    finally:
        bar.close()
        preemption.close()
        log.flush()
        ckpt.close()
        run.lock.release()
    return final_metrics
