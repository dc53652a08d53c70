"""QAT with a delayed BatchNorm freeze (``config.train.qat_bn_freeze_delay``), end to end.

A tiny QAT run of the real training command (MobileDet-EdgeTPU at width 0.25, 96x96, 4 steps,
freeze after 2): before the freeze the checkpoints hold unfolded convs whose moving statistics
still learn; from the freeze step on they hold folded kernels with frozen statistics (mean 0,
variance 1 - eps); a run resumed from before the freeze crosses it again to the same losses.
"""

import shutil

import numpy as np
import pytest
from flax import traverse_util

from mobiledet_jax import workdir as workdir_lib
from tests.helpers import train_harness as th

STEPS, DELAY = 4, 2
EPS = np.float32(0.01)  # layers.BACKBONE_NORM.epsilon: the backbone's BatchNorms


def _overrides(root):
    fields = {"model.width_multiplier": 0.25, "train.qat": True, "checkpoint.every_steps": 1,
              "checkpoint.keep": 10, "eval.max_batches": 1,
              "train.qat_bn_freeze_delay": DELAY}  # fmt: skip
    return th.tiny_overrides(root / "data", STEPS, **fields)


@pytest.fixture(scope="module")
def freeze_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat_freeze")
    env = th.environment(root / "jax_cache")
    workdir = root / "workdir"
    result = th.run(workdir, _overrides(root), env)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, env, workdir, result


def _backbone_bn(workdir, step):
    v = workdir_lib.load_model(str(workdir), step).variables
    stats = traverse_util.flatten_dict(v["batch_stats"]["backbone"], sep="/")
    return {k: np.asarray(a) for k, a in stats.items()}


@pytest.mark.slow
def test_statistics_learn_then_freeze_folded(freeze_run):
    _, _, workdir, result = freeze_run
    assert f"corrected to batch statistics until step {DELAY}" in result.stderr
    assert f"at step {DELAY} (frozen statistics from here)" in result.stderr
    assert th.complete_steps(workdir)[-STEPS:] == list(range(1, STEPS + 1))
    before = _backbone_bn(workdir, 1)
    variances = [v for k, v in before.items() if k.endswith("/var")]
    means = [v for k, v in before.items() if k.endswith("/mean")]
    # step 1: unfolded, the moving averages moved off their start (mean 0, var 1) by the batch
    assert not all(np.allclose(v, 1.0) for v in variances)
    assert not all(np.allclose(m, 0.0) for m in means)
    for step in (DELAY, STEPS):  # folded at the freeze, frozen after it
        after = _backbone_bn(workdir, step)
        for k, v in after.items():
            want = np.float32(1.0) - EPS if k.endswith("/var") else 0.0
            np.testing.assert_allclose(v, want, rtol=0, atol=1e-7, err_msg=f"{k} at {step}")
    losses = th.losses_by_step(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(v[0]) for v in losses.values())


@pytest.mark.slow
def test_resume_from_before_the_freeze_crosses_it_again(freeze_run):
    root, env, workdir, _ = freeze_run
    for step in range(DELAY, STEPS + 1):
        for d in (f"checkpoints/{step}", f"input_state/{step}"):
            shutil.rmtree(workdir / d, ignore_errors=True)
    shutil.rmtree(workdir / "best", ignore_errors=True)
    result = th.run(workdir, _overrides(root), env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from checkpoint step {DELAY - 1}" in result.stderr
    assert f"at step {DELAY} (frozen statistics from here)" in result.stderr
    losses = th.losses_by_step(workdir)
    for s in range(DELAY, STEPS + 1):  # the same batches from the restored, unfolded state
        np.testing.assert_allclose(losses[s][1], losses[s][0], rtol=1e-5)
