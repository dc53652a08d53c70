"""Fault tolerance of the training command: SIGTERM (preemption), SIGKILL mid-run and SIGKILL during
a checkpoint save, each followed by a restart, end with the same per-step losses, parameters and
final COCO metrics as an uninterrupted run; a run whose loss turns NaN stops, naming the step, with
an intact checkpoint.

The runs are the real command line (tests/helpers/train_harness.py) on a tiny quickstart setting.
"""

import re

import numpy as np
import pytest

from tests.helpers import train_harness as th

STEPS = 12


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"data": root / "data", "cache": root / "jax_cache"}


def _overrides(shared, **extra):
    # Evaluate once at the end, on one batch: the final metrics are compared too.
    return th.tiny_overrides(shared["data"], STEPS, **{"eval.max_batches": 1, **extra})


def _load(path):
    from mobiledet_jax import workdir

    return workdir.load_model(str(path)).variables


def _assert_same_curve(reference: dict, resumed: dict):
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, values in resumed.items():
        # A step run twice (after a resume from an older checkpoint) saw the same batch.
        np.testing.assert_allclose(values, reference[step][0] * np.ones(len(values)), rtol=1e-5)


@pytest.mark.slow
def test_preemption_and_crashes_resume_exactly(shared, tmp_path):
    env = th.environment(shared["cache"])
    ref_dir = tmp_path / "uninterrupted"
    ref = th.run(ref_dir, _overrides(shared), env)
    assert ref.returncode == 0, ref.stderr[-4000:]
    reference = th.losses_by_step(ref_dir)
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert th.complete_steps(ref_dir) == [4, 8, 12]
    assert "AP50" in ref.stdout
    # the final COCO table is printed once, on stdout; the log has a one-line summary of it
    assert ref.stdout.count("per-class AP") == 1 and "per-class AP" not in ref.stderr
    assert "step 12 eval: AP " in ref.stderr
    # the console (a pipe here, not a terminal): one readable line per log step, no bar, none of
    # clu's per-scalar lines nor orbax's / TensorFlow's INFO lines
    lines = [ln for ln in ref.stderr.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines if "loss " in ln] == [
        f"{s}/{STEPS}" for s in range(1, 13)
    ]
    assert all(" lr " in ln and " img/s" in ln for ln in lines if "loss " in ln)
    assert "ETA " in lines[-2] and lines[-1].startswith(f"train: step {STEPS}/{STEPS} in ")
    assert "\r" not in ref.stderr and "logging_writer" not in ref.stderr
    assert "Sharding callback" not in ref.stderr

    work = tmp_path / "interrupted"
    # 1. SIGTERM (a TPU preemption notice): save the current step and exit cleanly.
    proc = th.start(work, _overrides(shared), env)
    th.wait_for_step(proc, work, 3, after_lines=0)
    rc, out = th.stop(proc, th.SIGTERM)
    assert rc == 0, out[-4000:]
    assert "preempted: saved step" in out
    preempted_at = th.complete_steps(work)[-1]
    assert preempted_at >= 3

    # 2. Restart, then SIGKILL mid-run: nothing is saved on the way out.
    lines = len(th.metrics(work))
    proc = th.start(work, _overrides(shared), env)
    th.wait_for_step(proc, work, max(preempted_at + 2, 6), after_lines=lines)
    first_logged = min(m["step"] for m in th.metrics(work)[lines:])
    assert first_logged == preempted_at + 1
    rc, out = th.stop(proc, th.SIGKILL)
    assert rc == -9

    # 3. Restart and die by SIGKILL while the checkpoint of step 8 is being written.
    before = th.complete_steps(work)[-1]
    assert before < 8
    lines = len(th.metrics(work))
    env_kill = {**env, "KILL_DURING_SAVE_STEP": "8"}
    crashed = th.run(work, _overrides(shared), env_kill, runner=th.FAULT_RUNNER)
    assert crashed.returncode == -9, crashed.stderr[-4000:]
    assert min(m["step"] for m in th.metrics(work)[lines:]) == before + 1
    assert 8 not in th.complete_steps(work), "a half-written checkpoint counted as complete"

    # 4. Restart to the end: resumes from the last complete checkpoint, ignoring the partial one.
    last_complete = th.complete_steps(work)[-1]
    lines = len(th.metrics(work))
    final = th.run(work, _overrides(shared), env)
    assert final.returncode == 0, final.stderr[-4000:]
    assert min(m["step"] for m in th.metrics(work)[lines:]) == last_complete + 1
    assert f"resumed from checkpoint step {last_complete}" in final.stderr

    _assert_same_curve(reference, th.losses_by_step(work))
    np.testing.assert_allclose(_flat(_load(work)), _flat(_load(ref_dir)), rtol=1e-5, atol=1e-6)
    assert _eval_lines(final.stdout) == _eval_lines(ref.stdout)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in _leaves(tree)])


def _eval_lines(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.strip().startswith(("AP", "AR"))]


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_a_finite_checkpoint(shared, tmp_path):
    env = th.environment(shared["cache"])
    work = tmp_path / "nan"
    # Given as a relative path (the README's `--workdir=runs/quickstart` style): orbax needs
    # absolute checkpoint paths, so the run must make it absolute before the first save.
    # Step 1 trains at 1e-3; from step 2 the warmup ramps the learning rate to ~1e29.
    overrides = th.tiny_overrides(
        shared["data"],
        STEPS,
        **{
            "train.warmup_lr": 1e-3,
            "train.base_lr": 1e30,
            "train.warmup_steps": 4,
            "checkpoint.every_steps": 1,
        },
    )
    proc = th.run("nan", overrides, env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-4000:]
    message = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.startswith("train: ") and not ln.startswith("train: step ")  # not progress lines
    ]
    assert message, proc.stderr[-4000:]
    stopped = re.search(r"is (nan|inf|-inf)\b.* at step (\d+); stopping", message[0])
    assert stopped and "is intact" in message[0], message[0]
    bad_step = int(stopped.group(2))
    assert 2 <= bad_step <= 4
    # Every step before the bad one was checkpointed; the bad one was not.
    assert th.complete_steps(work)[-1] == bad_step - 1
    assert f"(step {bad_step - 1}) is intact" in message[0]
    assert np.all(np.isfinite(_flat(_load(work))))


def test_mistyped_config_key_fails_fast(tmp_path):
    import subprocess

    env = th.environment(tmp_path / "cache")
    cmd = th.command(tmp_path / "w", ["--config.train.num_step=5"])
    proc = subprocess.run(cmd, cwd=th.REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "num_step" in proc.stderr
    assert not (tmp_path / "w").exists(), "nothing is started for a bad config"
