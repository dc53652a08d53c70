"""Train resume you can trust, and the faults of a long run, on the real training command.

Two training runs in all (subprocesses of ``python -m mobiledet_jax.train`` on the tiny quickstart
setting of ``tests/helpers/train_harness.py``):

1. the module's run: checkpoints at steps 2 and 4, then its save of step 6 meets a full disk
   (``ENOSPC_DURING_SAVE_STEP``, tests/helpers/train_fault_runner.py): one line naming "no space"
   and the last good checkpoint, exit 4 (before: a 574-line traceback without those words);
2. a restart on a copy whose step 4 is garbled: the warning, the fall back to step 2, training
   goes on with finite losses (before: NaN at the first step of every restart), and Ctrl-C saves
   the current step and exits 130 with one line (before: a traceback, the steps since the last
   save lost).

The damage matrix of resume (garbled, truncated, emptied step, garbled input state, nothing
usable) and ``init_from`` run in-process on copies of the module's workdir: the restore that
``trainer._prepare`` calls (``TrainCheckpointer.restore``) with a train state built from random
weights, so nothing is compiled here.
"""

import logging
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import checkpoint_integrity as integrity
from mobiledet_jax import data
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.models import build_model, input_size, random_weights
from mobiledet_jax.sharding import make_mesh, replicated
from mobiledet_jax.training import trainer
from mobiledet_jax.training.checkpointing import TrainCheckpointer
from mobiledet_jax.training.optimizer import make_optimizer
from mobiledet_jax.training.state import TrainState
from tests.helpers import quickstart_model
from tests.helpers import train_harness as th
from tests.helpers.checkpoint_damage import empty, garble, truncate

pytestmark = pytest.mark.slow
STEPS = 8  # the module's run stops at its save of step 6


def _overrides(shared, steps):
    return th.tiny_overrides(shared["data"], steps, **{"checkpoint.every_steps": 2})


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    shared = {"data": root / "data", "cache": root / "jax_cache"}
    env = {**th.environment(shared["cache"]), "ENOSPC_DURING_SAVE_STEP": "6"}
    work = root / "first"
    proc = th.run(work, _overrides(shared, STEPS), env, runner=th.FAULT_RUNNER)
    return shared, work, proc


def test_a_full_disk_during_a_save_is_one_line_naming_the_last_good_checkpoint(first_run):
    _, work, proc = first_run
    assert proc.returncode == 4, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"train_fault_runner: no space left on device at {work}/input_state/6/"
        "input_process_00000_of_00001.data-00000-of-00001; "
        f"the last good checkpoint is step 4 ({work}/checkpoints/4)"
    ), last
    assert th.complete_steps(work) == [2, 4]
    for step in (2, 4):  # every saved step carries its checksums, input state included
        assert integrity.check_step(work / "checkpoints" / str(step), ("model", "train", "meta"),
                                    {"input_state": work / "input_state" / str(step)})  # fmt: skip


def _config(shared):
    """The run's config in-process: configs/quickstart.py with the harness's overrides."""
    c = quickstart_model.config()
    for arg in _overrides(shared, STEPS):
        key, value = arg[len("--config.") :].split("=", 1)
        *path, leaf = key.split(".")
        node = c
        for name in path:
            node = node[name]
        old = node[leaf]
        node[leaf] = value if old is None or isinstance(old, str) else type(old)(value)
    return c


@pytest.fixture(scope="module")
def template(first_run):
    """A train state of the run's structure (random weights: no compile) and its train iterator."""
    shared, _, _ = first_run
    config = _config(shared)
    mesh = make_mesh(config.mesh)
    model = build_model(config.model, config.detection.anchors)
    size = input_size(config.model)
    v = random_weights.random_variables(model, size, seed=0)
    rep = replicated(mesh)
    params = jax.device_put(v["params"], rep)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        params=params,
        batch_stats=jax.device_put(v["batch_stats"], rep),
        opt_state=jax.device_put(make_optimizer(config.train).init(params), rep),
    )
    iterator = data.build_train_iterator(
        config.data, config.train.batch_size, size, mesh, seed=config.seed
    )
    return config, state, iterator


def _copy(first_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(first_run[1], work)
    return work


def _garble_input_state(work):
    (path,) = (work / "input_state" / "4").glob("*.data-*")
    content = bytearray(path.read_bytes())
    content[100:164] = bytes(b ^ 0xFF for b in content[100:164])
    path.write_bytes(bytes(content))


DAMAGE = {
    "garbled": (lambda w: garble(w / "checkpoints" / "4"), "checksum mismatch in model/"),
    "truncated": (lambda w: truncate(w / "checkpoints" / "4"), "is truncated"),
    "emptied": (lambda w: empty(w / "checkpoints" / "4"), "(empty folder)"),
    "input_state": (_garble_input_state, "checksum mismatch in input_state/input_process_"),
}


def _restore(work, template):
    config, state, iterator = template
    ckpt = TrainCheckpointer(str(work), config.checkpoint, config.model)
    try:
        return ckpt.restore(state, iterator), iterator
    finally:
        ckpt.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_to_the_previous_step(first_run, template, damage, tmp_path, caplog):
    work = _copy(first_run, tmp_path)
    hurt, reason = DAMAGE[damage]
    hurt(work)
    caplog.set_level(logging.WARNING)
    state, iterator = _restore(work, template)
    assert int(state.step) == 2 and iterator.step == 2  # model, optimizer and input position
    assert integrity.first_nonfinite(state) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (fallback,) = [w for w in warnings if w.startswith("checkpoint step 4 is unusable")]
    assert reason in fallback and fallback.endswith("falling back to step 2"), fallback
    # set aside (not deleted), so that the resumed run can save its own step 4
    assert th.complete_steps(work) == [2]
    assert (work / "unusable" / "checkpoints" / "4").is_dir()
    assert any(w.startswith("unusable checkpoint step 4 moved to") for w in warnings)


def test_no_usable_step_stops_the_resume_with_one_line(first_run, template, tmp_path):
    work = _copy(first_run, tmp_path)
    garble(work / "checkpoints" / "4")
    empty(work / "checkpoints" / "2")
    with pytest.raises(integrity.CheckpointError) as err:
        _restore(work, template)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no usable checkpoint in {work}")
    assert "step 4: checksum mismatch" in message and "step 2: empty folder" in message
    assert th.complete_steps(work) == [2, 4], "nothing is moved when nothing is usable"


def test_init_from_falls_back_too(first_run, template, tmp_path, caplog):
    work = _copy(first_run, tmp_path)
    garble(work / "checkpoints" / "4")
    config, state, _ = template
    config = config.copy_and_resolve_references()
    config.checkpoint.init_from = str(work)
    caplog.set_level(logging.INFO)
    started = trainer._init_from(config, state)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("checkpoint step 4 is unusable (checksum mismatch") for m in messages)
    assert any(m.startswith(f"initialised from {work} step 2") for m in messages)
    assert integrity.first_nonfinite(started) is None
    expected = workdir_lib.load_model(str(work), 2).variables["params"]
    np.testing.assert_array_equal(jax.tree.leaves(started.params)[0], jax.tree.leaves(expected)[0])


def test_ctrl_c_after_resuming_from_a_garbled_checkpoint(first_run, tmp_path):
    shared, _, _ = first_run
    work = _copy(first_run, tmp_path)
    garble(work / "checkpoints" / "4")
    lines = len(th.metrics(work))
    proc = th.start(work, _overrides(shared, 40), th.environment(shared["cache"]))
    th.wait_for_step(proc, work, 5, after_lines=lines)  # past the new save of step 4
    rc, out = th.stop(proc, signal.SIGINT)
    assert rc == 130, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    last = out.strip().splitlines()[-1]
    saved = re.fullmatch(r"train: interrupted: saved step (\d+)", last)
    assert saved, last
    step = int(saved.group(1))
    assert "checkpoint step 4 is unusable (checksum mismatch in model/" in out
    assert "falling back to step 2" in out and "resumed from checkpoint step 2" in out
    resumed = [m for m in th.metrics(work)[lines:] if "loss" in m]
    assert resumed[0]["step"] == 3 and all(np.isfinite(m["loss"]) for m in resumed)
    assert {4, step} <= set(th.complete_steps(work))
    for s in (4, step):  # the new step 4 and the interrupted step: complete, checked, finite
        loaded = workdir_lib.load_model(str(work), s)
        assert integrity.first_nonfinite(loaded.variables) is None
        assert (work / "checkpoints" / str(s) / integrity.MANIFEST).is_file()
