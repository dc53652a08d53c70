"""The workdir format that import, training, evaluation and export share (orbax checkpoints).

Layout::

    <workdir>/config.json                the resolved config of the training run
    <workdir>/labels.txt                 the model's class names, one per line (``labels``)
    <workdir>/checkpoints/<step>/model   {'params': ..., 'batch_stats': ...}  (orbax StandardSave)
    <workdir>/checkpoints/<step>/meta    JSON: {'model': <config.model as a dict>, 'source': ...}
    <workdir>/checkpoints/<step>/checksums.json   size and SHA-256 of every file of the step
    <workdir>/best/checkpoints/<step>/   the best checkpoint by COCO AP (training keeps one)

Training adds its own items (optimizer state, input position; ``training.checkpointing``) beside
``model`` in the same step folders; everything that only needs the network restores the ``model``
and ``meta`` items. A checkpoint is chosen by step (``parse_step``): ``"latest"`` (the default),
``"best"`` or a step number; every step is checked before use (``checkpoint_integrity``:
complete, its checksums, finite values), and for ``"latest"`` / ``"best"`` an unusable one is a
warning and the next older step is taken. ``labels.txt`` is the label record of a model whose
names no data config gives (``import_tf1`` writes the COCO-90 map there). Paths may be local or
any file system orbax supports (e.g. ``gs://``); ``<workdir>/best`` given as a workdir finds its
parent's ``config.json`` and ``labels.txt``.
"""

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mobiledet_jax import atomic_files
from mobiledet_jax import checkpoint_integrity as integrity

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # training.checkpointing writes <workdir>/best/checkpoints/<step>/
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
LATEST, BEST = "latest", "best"
MODEL_ITEMS = ("model", "meta")  # the items of a step that evaluation, export and init_from read


class LoadedModel(NamedTuple):
    """What ``load_model`` restored: numpy variables, the checkpoint's meta, and its step."""

    variables: dict[str, Any]
    meta: dict[str, Any]
    step: int


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as orbax needs it: local paths made absolute (``runs/x`` -> ``$PWD/runs/x``),
    URLs (``gs://...``) unchanged. orbax refuses relative checkpoint paths at the first save."""
    text = os.fspath(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def checkpoint_dir(workdir: str) -> epath.Path:
    return workdir_path(workdir) / CHECKPOINT_DIR


def _manager(workdir: str, create: bool) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(create=create),
    )


def save_model(
    workdir: str,
    variables: Mapping[str, Any],
    model_config: ml_collections.ConfigDict,
    step: int = 0,
    source: str = "",
) -> epath.Path:
    """Writes ``{'params', 'batch_stats'}`` and the model config as step ``step``; returns its folder."""
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    meta = {"model": model_config.to_dict(), "source": source}
    with _manager(workdir, create=True) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()
    path = checkpoint_dir(workdir) / str(step)
    if jax.process_index() == 0:
        integrity.write_manifest(path)
    logging.info("saved model checkpoint %s", path)
    return path


def parse_step(step: int | str | None) -> int | str:
    """A checkpoint choice as ``--checkpoint_step`` and ``config.checkpoint.init_from_step`` give
    it: ``"latest"`` (also None, "" and any negative number), ``"best"``, or a step number."""
    if step is None or (isinstance(step, str) and step.strip().lower() in ("", LATEST)):
        return LATEST
    if isinstance(step, str) and step.strip().lower() == BEST:
        return BEST
    try:
        value = int(step)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"checkpoint step must be a number, 'latest' or 'best', got {step!r}"
        ) from e
    return LATEST if value < 0 else value


def latest_step(workdir: str) -> int | None:
    """The newest step that holds its ``model`` and ``meta`` items (an emptied or half-deleted
    step folder is passed over; checksums are checked only by ``load_model``), or None."""
    if not checkpoint_dir(workdir).exists():
        return None
    with _manager(workdir, create=False) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                integrity.check_step(checkpoint_dir(workdir) / str(step), MODEL_ITEMS, verify=False)
                return step
            except integrity.UnusableStep:
                continue
    return None


def _local_target(item_dir) -> Any:
    """Shapes and dtypes of a saved ``model`` item, placed on this process's first device.

    Restoring onto an explicit target lets a checkpoint written on any topology (a pod slice, 8
    devices) be read on another one (a laptop CPU for evaluation or export).
    """
    tree = ocp.StandardCheckpointer().metadata(str(item_dir))
    tree = getattr(tree, "item_metadata", tree)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def _steps_folder(workdir: str, step) -> epath.Path:
    """The checkpoints folder holding ``step``: ``<workdir>/best/checkpoints`` for ``"best"``."""
    if step == BEST:
        best = workdir_path(workdir) / BEST_DIR / CHECKPOINT_DIR
        if not best.exists() or not any(p.name.isdigit() for p in best.iterdir()):
            raise FileNotFoundError(
                f"no best checkpoint in {best}: training keeps one only when it evaluates "
                "(config.eval.every_steps > 0, or its final evaluation); pass "
                "--checkpoint_step=latest or a step number"
            )
        return best
    directory = checkpoint_dir(workdir)
    if not directory.exists():
        raise FileNotFoundError(f"no checkpoints folder at {directory}")
    return directory


def load_model(workdir: str, step: int | str | None = None) -> LoadedModel:
    """Restores ``(variables, meta, step)`` as numpy arrays. ``step``: ``"latest"`` (default; also
    None), ``"best"`` (``<workdir>/best``, the best checkpoint by COCO AP that training keeps) or
    a step number (``parse_step``).

    Every step is checked before use (``checkpoint_integrity``: complete, its checksums, finite
    values); for ``"latest"`` and ``"best"`` an unusable step is a warning and the next older step
    is taken. Raises FileNotFoundError with the folder searched when there is no such checkpoint,
    ``checkpoint_integrity.CheckpointError`` when none of the candidates is usable.
    """
    step = parse_step(step)
    directory = _steps_folder(workdir, step)
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        steps = mngr.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint steps in {directory}")
        if step not in (LATEST, BEST) and step not in steps:
            raise FileNotFoundError(f"step {step} not in {directory} (have {sorted(steps)})")

        def attempt(s: int) -> LoadedModel:
            integrity.check_step(directory / str(s), MODEL_ITEMS)
            restored = mngr.restore(
                s,
                args=ocp.args.Composite(
                    model=ocp.args.StandardRestore(_local_target(directory / str(s) / "model")),
                    meta=ocp.args.JsonRestore(),
                ),
            )
            variables = jax.tree.map(np.asarray, dict(restored["model"]))
            integrity.check_finite(variables)
            return LoadedModel(variables, dict(restored["meta"]), int(s))

        hint = "pass --checkpoint_step=latest or a step number" if step == BEST else ""
        candidates = steps if step in (LATEST, BEST) else [step]
        loaded, _ = integrity.newest_usable(candidates, attempt, str(directory), hint=hint)
    return loaded


def model_config_from_meta(meta: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The ``config.model`` a checkpoint was written with."""
    return ml_collections.ConfigDict(dict(meta["model"]))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """``<workdir>/config.json``: the resolved config (process 0 writes it, atomically)."""
    if jax.process_index() == 0:
        text = config.to_json(indent=1, sort_keys=True)
        atomic_files.write_text(workdir_path(workdir) / CONFIG_FILE, text)


def _workdir_file(workdir: str, name: str) -> epath.Path:
    """``<workdir>/<name>``; for ``<run>/best`` given as a workdir, ``<run>/<name>``."""
    path = workdir_path(workdir) / name
    parent = workdir_path(workdir).parent / name
    if not path.exists() and workdir_path(workdir).name == BEST_DIR and parent.exists():
        return parent
    return path


def load_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a training run saved in ``<workdir>/config.json`` (on top of today's defaults, so
    fields added since then keep their defaults), or None when there is none."""
    from mobiledet_jax import config as config_lib

    path = _workdir_file(workdir, CONFIG_FILE)
    if not path.exists():
        return None
    base = config_lib.base_config()
    flat = _flatten(json.loads(path.read_text()))
    step = flat.get("checkpoint.init_from_step")
    if isinstance(step, int):  # written before it took "latest" | "best" | N
        flat["checkpoint.init_from_step"] = str(parse_step(step))
    base.update_from_flattened_dict(flat)
    return base


def write_labels(workdir: str, names) -> epath.Path:
    """``<workdir>/labels.txt``: the model's class names, one per line (``labels.labels_text``)."""
    from mobiledet_jax import labels as labels_lib

    path = workdir_path(workdir) / LABELS_FILE
    if jax.process_index() == 0:
        atomic_files.write_text(path, labels_lib.labels_text(names))
    return path


def load_labels(workdir: str) -> list[str] | None:
    """The names of ``<workdir>/labels.txt``, or None when the workdir has no label record."""
    from mobiledet_jax import labels as labels_lib

    path = _workdir_file(workdir, LABELS_FILE)
    if not path.exists():
        return None
    return labels_lib.parse_labels(path.read_text())


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _tuples(v)
    return out


def _tuples(v):
    """JSON lists back to the tuples the config holds (nested too: ``lowest_layer_boxes``)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v
