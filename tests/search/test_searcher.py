"""``python -m mobiledet_jax.search`` end to end (configs/search_test.py), its exact resume after a
kill, and its result through ``train`` and ``export`` (configs/searched.py)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax.models import specs
from mobiledet_jax.search import space as S
from tests.helpers import train_harness as th
from tests.helpers.tensorboard_events import read_events

REPO = pathlib.Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "helpers" / "search_fault_runner.py"
SEARCH_CONFIG = REPO / "configs" / "search_test.py"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    env = {**th.environment(root / "jax_cache"), "MOBILEDET_PROGRESS": "plain"}
    return {"root": root, "env": env, "data": root / "data"}


def _search(workdir, shared, *extra, runner=None, env=None):
    entry = [str(runner)] if runner else ["-m", "mobiledet_jax.search"]
    cmd = [sys.executable, *entry, f"--config={SEARCH_CONFIG}", f"--workdir={workdir}",
           f"--config.data.cache_dir={shared['data']}", *extra]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, env=env or shared["env"], capture_output=True, text=True, timeout=1200
    )


def _log(workdir):
    return [json.loads(x) for x in (workdir / "search_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def searched(shared):
    work = shared["root"] / "straight"
    proc = _search(work, shared)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, proc


@pytest.mark.slow
def test_search_writes_its_result_logs_and_pictures(searched):
    work, proc = searched
    arch = json.loads((work / "arch.json").read_text())
    space = S.get_space("test")
    assert arch["space"] == "test" and arch["step"] == 30 and arch["image_size"] == 64
    spec = specs.spec_from_dict(arch["backbone"])
    assert S.decode(space, arch["indices"]) == spec
    assert arch["predicted_ms"] > 0 and arch["c0_ms"] > 0
    log = _log(work)
    assert [r["step"] for r in log] == list(range(1, 31))
    for key in ("quality", "cost_ms", "reward", "controller/baseline", "controller/entropy"):
        assert all(np.isfinite(r[key]) for r in log), key
    # the controller learns nothing during the RL delay (25% of 30 steps), then moves
    assert all(r["controller/lr"] == 0 for r in log[:7]) and log[-1]["controller/lr"] > 0
    assert log[0]["p_ops"] == 1.0 and log[-1]["p_ops"] == 0.0
    assert log[-1]["controller/entropy"] < log[0]["controller/entropy"]
    tags = set(read_events(work))
    assert {"quality", "cost_ms", "reward", "controller/baseline", "controller/entropy"} <= tags
    for png in ("arch.png", "controller.png"):
        assert (work / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "search: step 30/30" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["indices"] == arch["indices"]


@pytest.mark.slow
def test_a_killed_search_resumes_exactly(searched, shared):
    straight, _ = searched
    work = shared["root"] / "killed"
    env = {**shared["env"], "KILL_AFTER_SEARCH_SAVE": "20"}
    proc = _search(work, shared, runner=RUNNER, env=env)
    assert proc.returncode == -9, proc.stderr[-4000:]
    assert [r["step"] for r in _log(work)] == list(range(1, 21))
    proc = _search(work, shared)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed the search from step 20" in proc.stderr
    resumed, reference = _log(work), _log(straight)
    assert [r["step"] for r in resumed] == list(range(1, 31))
    for a, b in zip(resumed[20:], reference[20:], strict=True):
        for key in ("quality", "cost_ms", "reward", "controller/baseline", "supernet/loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert (
        json.loads((work / "arch.json").read_text())["indices"]
        == json.loads((straight / "arch.json").read_text())["indices"]
    )


@pytest.mark.slow
def test_the_result_trains_and_exports(searched, shared, tmp_path):
    straight, _ = searched
    work = tmp_path / "train"
    overrides = [
        "--config.train.num_steps=5", "--config.train.batch_size=8", "--config.train.warmup_steps=2",
        "--config.train.log_every=1", "--config.eval.max_batches=1", "--config.eval.batch_size=8",
        f"--config.data.cache_dir={shared['data']}", "--config.data.synthetic.num_train=64",
        "--config.data.synthetic.num_val=16", "--config.eval.figures=False",
        "--config.model.conv_form=conv",  # 5 steps: the faster compile (tests/helpers/train_harness.py)
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "mobiledet_jax.train",
           f"--config={REPO / 'configs' / 'searched.py'}:{straight / 'arch.json'}:quickstart",
           f"--workdir={work}", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=shared["env"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "searched.tflite"
    cmd = [sys.executable, "-m", "mobiledet_jax.export", f"--workdir={work}", f"--output={out}",
           "--target=cpu", "--representative_images=8", "--parity_images=2", "--eval_images=8",
           "--latency_runs=5"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=shared["env"], capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.exists() and out.stat().st_size > 10_000
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert report["export"]["format"] == "float32"
