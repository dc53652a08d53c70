"""Training checkpoints: orbax step folders with the model, optimizer and input position.

Layout (``mobiledet_jax.workdir`` reads the ``model`` and ``meta`` items of the same folders)::

    <workdir>/checkpoints/<step>/{model, train, meta}   orbax, written asynchronously, atomically
    <workdir>/checkpoints/<step>/checksums.json         size and SHA-256 of every file of the step
                                                        and of its input state (once it is complete)
    <workdir>/input_state/<step>/                       each process's input-iterator position
    <workdir>/best/checkpoints/<step>/{model, meta}     the best checkpoint by COCO AP (one kept)
    <workdir>/unusable/{checkpoints,input_state}/<step>   steps a resume set aside (to inspect)

The input position of a step is written (synchronously) before its orbax save starts, so every
complete checkpoint has one. orbax's save is asynchronous: the manifest of a step
(``checkpoint_integrity.write_manifest``) is written once orbax has finished it, when the next
save, ``wait`` or ``close`` waits for it. A save interrupted by a crash leaves only orbax's
temporary folder (and perhaps an input state without a checkpoint): both are removed, with an info
line, when the next run starts.

Resume (``restore``) takes the newest usable step: each step, newest first, must be complete, match
its manifest (input state included), restore, hold only finite values and restore the input
position; a step that fails is a one-line warning naming it and the reason, the next older step is
tried, and the failed newer steps are moved to ``<workdir>/unusable/`` so that the run can save
those step numbers again. No usable step is a ``CheckpointError`` (one line, listing each step).
"""

import logging
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from mobiledet_jax import checkpoint_integrity as integrity
from mobiledet_jax.training.state import TrainState
from mobiledet_jax.workdir import BEST_DIR, CHECKPOINT_DIR, workdir_path

INPUT_STATE_DIR = "input_state"
UNUSABLE_DIR = "unusable"
TRAIN_ITEMS = ("model", "train", "meta")
_ORBAX_TMP = ".orbax-checkpoint-tmp"


def _remove_interrupted_saves(workdir: epath.Path) -> None:
    """orbax's temporary folders of killed saves, and input states of steps never completed."""
    if jax.process_index() != 0:
        return
    for root in (workdir / CHECKPOINT_DIR, workdir / BEST_DIR / CHECKPOINT_DIR):
        for d in root.iterdir() if root.exists() else ():
            if _ORBAX_TMP in d.name:
                shutil.rmtree(str(d), ignore_errors=True)
                logging.info("removed the temporary folder of an interrupted save: %s", d)
    steps = workdir / CHECKPOINT_DIR
    complete = {d.name for d in steps.iterdir() if d.name.isdigit()} if steps.exists() else set()
    inputs = workdir / INPUT_STATE_DIR
    for d in inputs.iterdir() if inputs.exists() else ():
        if d.name not in complete:
            shutil.rmtree(str(d), ignore_errors=True)
            logging.info("removed the input state of an interrupted save: %s", d)


class TrainCheckpointer:
    def __init__(self, workdir: str, cfg: ml_collections.ConfigDict, model_config):
        self.workdir = workdir_path(workdir)
        self._model_meta = model_config.to_dict()
        _remove_interrupted_saves(self.workdir)
        self._manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep,
                create=True,
                enable_async_checkpointing=cfg.async_save,
            ),
        )
        self._best = ocp.CheckpointManager(
            self.workdir / BEST_DIR / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        )
        self._unsealed: list[int] = []  # saved steps whose manifest is not written yet

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_step_after_wait(self) -> int | None:
        """The newest step whose save has finished (waits for a running async save)."""
        self.wait()
        return self._manager.latest_step()

    def _input_dir(self, step: int) -> epath.Path:
        return self.workdir / INPUT_STATE_DIR / str(step)

    def _step_dir(self, step: int) -> epath.Path:
        return self.workdir / CHECKPOINT_DIR / str(step)

    def _seal(self) -> None:
        """The manifests of the finished saves (call after orbax's wait)."""
        pending, self._unsealed = self._unsealed, []
        if jax.process_index() != 0:
            return
        finished = set(self._manager.all_steps())
        for step in pending:
            if step in finished:
                extra = {INPUT_STATE_DIR: self._input_dir(step)}
                integrity.write_manifest(self._step_dir(step), extra)

    def save(self, state: TrainState, input_iterator, force: bool = False) -> bool:
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        self._manager.wait_until_finished()  # orbax's save waits for the previous one anyway
        self._seal()
        input_iterator.save(str(self._input_dir(step)))
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(state.variables),
                train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
                meta=ocp.args.JsonSave({"model": self._model_meta, "source": "train"}),
            ),
            force=force,
        )
        if saved:
            self._unsealed.append(step)
            logging.info("checkpoint for step %d started (async)", step)
        self._clean_input_states()
        return saved

    def _clean_input_states(self) -> None:
        integrity.remove_stale_step_folders(
            self.workdir / INPUT_STATE_DIR, self._manager.all_steps()
        )

    def _restore_step(self, state: TrainState, input_iterator, step: int) -> TrainState:
        input_dir = self._input_dir(step)
        integrity.check_step(self._step_dir(step), TRAIN_ITEMS, {INPUT_STATE_DIR: input_dir})
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(state.variables),
                train=ocp.args.StandardRestore({"step": state.step, "opt_state": state.opt_state}),
            ),
        )
        model, train = restored["model"], restored["train"]
        integrity.check_finite(model)
        integrity.check_finite(train["opt_state"], "opt_state/")
        if not input_dir.exists():
            raise integrity.UnusableStep(f"no input position at {input_dir}")
        input_iterator.restore(str(input_dir))
        return state.replace(
            step=train["step"],
            params=model["params"],
            batch_stats=model["batch_stats"],
            opt_state=train["opt_state"],
            quant_stats=model.get("quant_stats", {}),  # QAT: the fake-quant ranges
        )

    def restore(self, state: TrainState, input_iterator, step: int | None = None) -> TrainState:
        """The newest usable checkpoint (or exactly ``step``) restored into ``state``'s structure,
        with the input position. Newer unusable steps are warned about and set aside."""
        steps = self._manager.all_steps() if step is None else [step]
        restored, skipped = integrity.newest_usable(
            steps,
            lambda s: self._restore_step(state, input_iterator, s),
            str(self.workdir / CHECKPOINT_DIR),
            collective=True,
            hint=f"to train from scratch, move {self.workdir / CHECKPOINT_DIR} away",
        )
        if skipped:
            self._set_aside([s for s, _ in skipped])
        return restored

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unusable steps to ``<workdir>/unusable/`` (their numbers are saved again)."""
        if jax.process_index() == 0:
            for step in steps:
                moved = integrity.set_aside(
                    self._step_dir(step), self.workdir / UNUSABLE_DIR / CHECKPOINT_DIR
                )
                integrity.set_aside(
                    self._input_dir(step), self.workdir / UNUSABLE_DIR / INPUT_STATE_DIR
                )
                logging.warning("unusable checkpoint step %d moved to %s", step, moved)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("mobiledet_jax: unusable steps set aside")
        self._manager.reload()

    def best_ap(self) -> float:
        """COCO AP of the kept best checkpoint (-1.0 when there is none or it is unreadable)."""
        step = self._best.latest_step()
        if step is None:
            return -1.0
        try:
            meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - the next evaluation replaces it
            logging.warning("best checkpoint step %d is unreadable (%s): replacing it", step, e)
            return -1.0
        return float(meta["meta"].get("metrics", {}).get("AP", -1.0))

    def save_best(self, state: TrainState, metrics: dict[str, float]) -> None:
        step = int(jax.device_get(state.step))
        meta = {"model": self._model_meta, "source": "train:best", "metrics": metrics}
        self._best.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(state.variables), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._best.wait_until_finished()
        if jax.process_index() == 0:
            integrity.write_manifest(self.workdir / BEST_DIR / CHECKPOINT_DIR / str(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        try:
            self._manager.wait_until_finished()
            self._seal()
        except OSError as e:  # a full disk: the step stays usable without its manifest
            logging.warning("checksums of the last checkpoint not written: %s", e)
        finally:
            self._manager.close()
            self._best.close()
