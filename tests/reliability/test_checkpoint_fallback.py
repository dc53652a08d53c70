"""Checkpoints you can trust, for everything that reads the network (``workdir.load_model``:
evaluate, export, predict and ``init_from``): a garbled, truncated or emptied newest step is a
one-line warning naming it and the run takes the previous step, finite; a step that restores with
NaN is skipped the same way; no usable step is one ``CheckpointError`` line, and ``evaluate`` and
``export`` exit 4 with it instead of scoring AP 0 or reporting parity "nan".

No training: the steps are random weights written by ``workdir.save_model`` (the same orbax
folders training writes, with their checksums), copied per case.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax import checkpoint_integrity as integrity
from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.models import build_model, random_weights
from tests.helpers.checkpoint_damage import empty, garble, truncate

SIZE = 96


def _model_config():
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE, 0.25, 3
    return mc


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Steps 1 and 2 in checkpoints/, step 2 also kept as the best."""
    mc = _model_config()
    model = build_model(mc)
    path = tmp_path_factory.mktemp("fallback") / "run"
    for step, target in ((1, path), (2, path), (2, path / "best")):
        v = random_weights.random_variables(model, (SIZE, SIZE), seed=step)
        workdir_lib.save_model(str(target), v, mc, step=step, source=f"seed {step}")
    config = config_lib.base_config()
    config.model = mc
    workdir_lib.write_config(config, str(path))
    return path


@pytest.fixture
def run(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


DAMAGE = {"garbled": garble, "truncated": truncate, "emptied": empty}
REASON = {"garbled": "checksum mismatch in model/", "truncated": "is truncated", "emptied": "empty"}


def _finite(variables) -> bool:
    return integrity.first_nonfinite(variables) is None


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_step_falls_back_to_the_previous_one(run, damage, caplog):
    DAMAGE[damage](run / "checkpoints" / "2")
    caplog.set_level(logging.WARNING)
    loaded = workdir_lib.load_model(str(run))  # evaluate, export, predict
    assert (loaded.step, loaded.meta["source"]) == (1, "seed 1")
    assert _finite(loaded.variables)
    (warning,) = [w for w in _warnings(caplog) if w.startswith("checkpoint step")]
    assert warning.startswith("checkpoint step 2 is unusable (") and REASON[damage] in warning
    assert warning.endswith("): falling back to step 1") and "\n" not in warning
    # init_from reads the same way (trainer._init_from: load_model(init_from, init_from_step))
    assert (
        workdir_lib.load_model(str(run), config_lib.base_config().checkpoint.init_from_step).step
        == 1
    )
    if damage == "emptied":  # what the training command's workdir check reads
        assert workdir_lib.latest_step(str(run)) == 1


def test_a_step_restoring_non_finite_values_is_skipped(run, caplog):
    """Garbled bytes in a step written without checksums (an older run) restored silently as NaN
    weights: the finite check catches them."""
    mc = _model_config()
    v = random_weights.random_variables(build_model(mc), (SIZE, SIZE), seed=3)
    leaf = v["params"]
    while isinstance(leaf, dict):
        key = sorted(leaf)[0]
        parent, leaf = leaf, leaf[key]
    parent[key] = np.full_like(leaf, np.nan)
    workdir_lib.save_model(str(run), v, mc, step=3)
    (run / "checkpoints" / "3" / integrity.MANIFEST).unlink()
    caplog.set_level(logging.WARNING)
    loaded = workdir_lib.load_model(str(run))
    assert loaded.step == 2 and _finite(loaded.variables)
    assert any(
        w.startswith("checkpoint step 3 is unusable (non-finite values in params/")
        for w in _warnings(caplog)
    ), _warnings(caplog)


def test_a_step_without_checksums_is_accepted(run):
    """Steps written before checksums existed restore when complete and finite."""
    (run / "checkpoints" / "2" / integrity.MANIFEST).unlink()
    assert workdir_lib.load_model(str(run)).step == 2


def test_no_usable_step_is_one_error_naming_every_step(run):
    garble(run / "checkpoints" / "2")
    truncate(run / "checkpoints" / "1")
    with pytest.raises(integrity.CheckpointError) as err:
        workdir_lib.load_model(str(run))
    message = str(err.value)
    assert "\n" not in message and message.startswith("no usable checkpoint in ")
    assert "step 2: checksum mismatch" in message and "step 1: model/" in message


def test_a_chosen_step_or_best_does_not_fall_back(run):
    garble(run / "checkpoints" / "2")
    with pytest.raises(integrity.CheckpointError, match="checkpoint step 2 in .* is unusable"):
        workdir_lib.load_model(str(run), 2)
    assert workdir_lib.load_model(str(run), 1).step == 1
    garble(run / "best" / "checkpoints" / "2")
    with pytest.raises(integrity.CheckpointError, match="--checkpoint_step=latest"):
        workdir_lib.load_model(str(run), "best")


def test_manifest_lists_every_file_with_its_checksum(pristine):
    step_dir = pristine / "checkpoints" / "2"
    manifest = json.loads((step_dir / integrity.MANIFEST).read_text())
    listed = manifest["folders"]["."]
    on_disk = {
        str(p.relative_to(step_dir))
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != integrity.MANIFEST
    }
    assert set(listed) == on_disk and any(k.startswith("model/") for k in listed)
    assert integrity.check_step(step_dir, workdir_lib.MODEL_ITEMS) is True


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_evaluate_and_export_exit_4_with_one_line(run, command, tmp_path):
    """Before: evaluate exited 0 with AP 0 and export 0 with parity "nan" on garbled bytes, and
    both stopped with a traceback on an emptied step."""
    garble(run / "checkpoints" / "2")
    empty(run / "checkpoints" / "1")
    module = {"evaluate": "mobiledet_jax.evaluate", "export": "mobiledet_jax.export"}[command]
    extra = [f"--output={tmp_path / 'model.tflite'}"] if command == "export" else []
    proc = subprocess.run(
        [sys.executable, "-m", module, f"--workdir={run}", *extra],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{command}: no usable checkpoint in "), last
    assert "step 2: checksum mismatch" in last and "step 1: empty folder" in last


def test_stale_step_folders_are_removed_but_newer_ones_kept(tmp_path):
    from mobiledet_jax import checkpoint_integrity

    for step in (2, 4, 6, 8, 9):
        (tmp_path / str(step)).mkdir()
    (tmp_path / "notes").mkdir()
    # kept 4 and 8: 2 and 6 are stale; 9 is newer than every kept step (a save under way)
    checkpoint_integrity.remove_stale_step_folders(tmp_path, [4, 8])
    assert sorted(d.name for d in tmp_path.iterdir()) == ["4", "8", "9", "notes"]
