"""Search checkpoints: the supernet, its optimizer, the controller (logits, Adam state, baseline)
and both input positions, so that a preempted search resumes exactly where it stopped.

Layout::

    <workdir>/search_checkpoints/<step>/{search, meta}   orbax (async), one folder per saved step
    <workdir>/search_checkpoints/<step>/checksums.json   size + SHA-256 of every file (and inputs)
    <workdir>/search_inputs/<step>/{weights,reward}/     the two input iterators' positions

The same rules as training's (``training.checkpointing``): the input positions are written before
orbax's save starts, every complete step gets a manifest (``checkpoint_integrity``), and a resume
walks from the newest step down to the first one that matches its manifest, restores, is finite
and restores both input positions; unusable newer steps are warned about and moved aside.
"""

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from mobiledet_jax import checkpoint_integrity as integrity
from mobiledet_jax.workdir import workdir_path

CHECKPOINT_DIR = "search_checkpoints"
INPUT_DIR = "search_inputs"
UNUSABLE_DIR = "unusable"
ITEMS = ("search", "meta")


class SearchCheckpointer:
    """Saves and restores the search state (a pytree) with the two input iterators."""

    def __init__(self, workdir: str, keep: int, async_save: bool, meta: dict[str, Any]):
        self.workdir = workdir_path(workdir)
        self._meta = meta
        self._manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )
        self._unsealed: list[int] = []

    def _input_dir(self, step: int) -> epath.Path:
        return self.workdir / INPUT_DIR / str(step)

    def _step_dir(self, step: int) -> epath.Path:
        return self.workdir / CHECKPOINT_DIR / str(step)

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _seal(self) -> None:
        pending, self._unsealed = self._unsealed, []
        if jax.process_index() != 0:
            return
        finished = set(self._manager.all_steps())
        for step in pending:
            if step in finished:
                integrity.write_manifest(self._step_dir(step), {INPUT_DIR: self._input_dir(step)})

    def save(self, step: int, state: Any, iterators: dict[str, Any], force: bool = False) -> bool:
        if step in self._manager.all_steps():
            return False
        self._manager.wait_until_finished()
        self._seal()
        for name, it in iterators.items():
            it.save(str(self._input_dir(step) / name))
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                search=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave({**self._meta, "step": step}),
            ),
            force=force,
        )
        if saved:
            self._unsealed.append(step)
            logging.info("search checkpoint for step %d started (async)", step)
        self._clean_inputs()
        return saved

    def _clean_inputs(self) -> None:
        integrity.remove_stale_step_folders(self.workdir / INPUT_DIR, self._manager.all_steps())

    def _restore_step(self, template: Any, iterators: dict[str, Any], step: int):
        inputs = self._input_dir(step)
        integrity.check_step(self._step_dir(step), ITEMS, {INPUT_DIR: inputs})
        restored = self._manager.restore(
            step, args=ocp.args.Composite(search=ocp.args.StandardRestore(template))
        )["search"]
        integrity.check_finite(restored)
        for name, it in iterators.items():
            if not (inputs / name).exists():
                raise integrity.UnusableStep(f"no input position at {inputs / name}")
            it.restore(str(inputs / name))
        return restored

    def restore(self, template: Any, iterators: dict[str, Any]) -> tuple[Any, int] | None:
        """The newest usable state (and its step), or None when nothing was saved yet."""
        steps = self.all_steps()
        if not steps:
            return None
        restored, skipped = integrity.newest_usable(
            steps,
            lambda s: (self._restore_step(template, iterators, s), s),
            str(self.workdir / CHECKPOINT_DIR),
            collective=True,
            hint=f"to search from scratch, move {self.workdir / CHECKPOINT_DIR} away",
        )
        if skipped and jax.process_index() == 0:
            for step, _ in skipped:
                integrity.set_aside(
                    self._step_dir(step), self.workdir / UNUSABLE_DIR / CHECKPOINT_DIR
                )
                integrity.set_aside(self._input_dir(step), self.workdir / UNUSABLE_DIR / INPUT_DIR)
        if skipped:
            self._manager.reload()
        return restored

    def close(self) -> None:
        try:
            self._manager.wait_until_finished()
            self._seal()
        finally:
            self._manager.close()
