"""Training checkpoints: orbax step folders with the model, optimizer and input position.

Layout (``mobiledet_jax.workdir`` reads the ``model`` and ``meta`` items of the same folders)::

    <workdir>/checkpoints/<step>/{model, train, meta}   orbax, written asynchronously, atomically
    <workdir>/input_state/<step>/                       each process's input-iterator position
    <workdir>/best/checkpoints/<step>/{model, meta}     the best checkpoint by COCO AP (one kept)

The input position of a step is written (synchronously) before its orbax save starts, so every
complete checkpoint has one. A save interrupted by a crash leaves only orbax's temporary folder, which
is ignored (and cleaned) on the next start: resume order is "latest complete checkpoint".
"""

import logging
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from mobiledet_jax.training.state import TrainState
from mobiledet_jax.workdir import BEST_DIR, CHECKPOINT_DIR, workdir_path

INPUT_STATE_DIR = "input_state"


class TrainCheckpointer:
    def __init__(self, workdir: str, cfg: ml_collections.ConfigDict, model_config):
        self.workdir = workdir_path(workdir)
        self._model_meta = model_config.to_dict()
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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_step_after_wait(self) -> int | None:
        """The newest step whose save has finished (waits for a running async save)."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def _input_dir(self, step: int) -> epath.Path:
        return self.workdir / INPUT_STATE_DIR / str(step)

    def save(self, state: TrainState, input_iterator, force: bool = False) -> bool:
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
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
            logging.info("checkpoint for step %d started (async)", step)
        self._clean_input_states()
        return saved

    def _clean_input_states(self) -> None:
        if jax.process_index() != 0:
            return
        root = self.workdir / INPUT_STATE_DIR
        if not root.exists():
            return
        keep = set(self._manager.all_steps())
        latest = max(keep, default=-1)
        for d in root.iterdir():
            if d.name.isdigit() and int(d.name) not in keep and int(d.name) < latest:
                shutil.rmtree(str(d), ignore_errors=True)

    def restore(self, state: TrainState, input_iterator, step: int | None = None) -> TrainState:
        """The checkpoint of ``step`` (default: latest) restored into ``state``'s structure."""
        step = self._manager.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(state.variables),
                train=ocp.args.StandardRestore({"step": state.step, "opt_state": state.opt_state}),
            ),
        )
        input_dir = self._input_dir(step)
        if not input_dir.exists():
            raise FileNotFoundError(
                f"checkpoint {step} has no input position at {input_dir}; cannot resume exactly"
            )
        input_iterator.restore(str(input_dir))
        model, train = restored["model"], restored["train"]
        return state.replace(
            step=train["step"],
            params=model["params"],
            batch_stats=model["batch_stats"],
            opt_state=train["opt_state"],
            quant_stats=model.get("quant_stats", {}),  # QAT: the fake-quant ranges
        )

    def best_ap(self) -> float:
        """COCO AP of the kept best checkpoint (-1.0 when there is none)."""
        step = self._best.latest_step()
        if step is None:
            return -1.0
        meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
        self._best.close()
