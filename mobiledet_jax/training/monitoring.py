"""What the training loop watches: the metric log (TensorBoard, JSON lines), the console line of a
log step, and the guard that stops a run at the first non-finite step before anything non-finite
is saved.

The guard does not wait for the device every step: the train step returns a device-side
``finite`` flag with its metrics, and the flags of the steps since the last check are fetched
with the log window, before every checkpoint save and before every evaluation (the places where
the host reads the state anyway). The first bad step in the window is the one named; since no
save happens without a check, the last checkpoint always holds finite values.
``config.train.nan_check_every = N > 0`` also checks every N steps (each check syncs).

``write_eval_figures`` draws an evaluation's pictures (``evaluation.visual_report``) after it ran:
TensorBoard images and PR curves every time, the ``eval_<step>/`` folder after the final one.
Pictures never stop a run: any failure to draw or write them is a logged warning.
"""

import json
import logging

import jax
import numpy as np
from clu import metric_writers
from etils import epath

METRICS_FILE = "train_metrics.jsonl"
WATCHED = ("loss", "grad_norm", "update_norm")


class MetricsLog:
    """Every scalar to TensorBoard (clu's asynchronous writer) and to a JSON-lines file, process 0
    only. Nothing goes to the console: the trainer prints one readable line per log step
    (``mobiledet_jax.progress``) instead of clu's line per scalar group."""

    def __init__(self, workdir: epath.Path, filename: str = METRICS_FILE):
        writers = [metric_writers.SummaryWriter(str(workdir))] if jax.process_index() == 0 else []
        self.writer = metric_writers.AsyncMultiWriter(writers)
        self.file = workdir / filename if jax.process_index() == 0 else None

    def write(self, step: int, scalars: dict) -> None:
        self.writer.write_scalars(step, scalars)
        if self.file is not None:
            with self.file.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")

    def flush(self):
        self.writer.flush()


def write_eval_figures(log: MetricsLog, step: int, result, config, final_dir=None) -> None:
    """TensorBoard figures of an evaluation ``result`` (an ``EvalResult``, or None: nothing to
    draw), and with ``final_dir`` its folder of PNGs and ``metrics.json``; process 0 only, when
    ``config.eval.figures``. A failure is a warning, never an error of the training run."""
    if result is None or not config.eval.figures or jax.process_index() != 0:
        return
    try:
        from mobiledet_jax.evaluation import visual_report

        analysis = visual_report.write_tensorboard(log.writer, step, result, config)
        if final_dir is not None:
            visual_report.write_eval_report(result, final_dir, config, step, analysis)
            logging.info("step %d: evaluation figures written to %s", step, final_dir)
    except Exception:  # noqa: BLE001 - pictures must never stop training
        logging.warning("step %d: evaluation figures were not written", step, exc_info=True)


def progress_text(scalars: dict) -> str:
    """The console's figures of a log step: ``loss 1.234  lr 0.0400  35.2 img/s``."""
    return (
        f"loss {scalars['loss']:.4g}  lr {scalars['learning_rate']:.4g}  "
        f"{scalars['images_per_sec']:.3g} img/s"
    )


class FiniteGuard:
    """Collects each step's device-side metrics; ``check`` raises FloatingPointError naming the
    first step whose loss, gradient norm or update norm is not finite."""

    def __init__(self):
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, {k: metrics[k] for k in ("finite", *WATCHED)}))

    def check(self, last_good_checkpoint) -> None:
        """Fetches the pending flags (one transfer) and raises at the first bad step.

        ``last_good_checkpoint``: a callable returning the newest saved step, for the message."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = jax.device_get([m["finite"] for _, m in pending])
        for (step, m), ok in zip(pending, flags, strict=True):
            if bool(ok):
                continue
            values = jax.device_get({k: m[k] for k in WATCHED})
            bad = {k: float(v) for k, v in values.items() if not np.isfinite(v)}
            what = ", ".join(f"{k} is {v}" for k, v in bad.items())
            raise FloatingPointError(
                f"{what} at step {step}; stopping. The last checkpoint (step "
                f"{last_good_checkpoint()}) is intact and holds finite values: lower the learning "
                "rate or check the input data."
            )
