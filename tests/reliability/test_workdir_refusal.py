"""A workdir refuses what it does not hold, before writing anything (``config_checks.check_workdir``,
``import_tf1.check_new_workdir``): a rerun with another model or data setting names the fields and
the fix in one line (exit 2) and leaves ``config.json`` byte-identical; training on an imported
workdir says to use ``init_from``; ``import_tf1`` refuses a workdir that has checkpoints.

The trained workdir is made by hand (``config.json`` and one orbax step with ``model``, ``train`` and
``meta`` items, as ``training.checkpointing`` writes them): no training run is needed."""

import importlib.util
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mobiledet_jax import config_checks, import_tf1
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.config import ConfigError
from tests.helpers import train_harness as th

STEP = 4


def _quickstart_with(overrides: list[str]):
    """The config the train command builds from configs/quickstart.py and ``--config.k=v``."""
    spec = importlib.util.spec_from_file_location(
        "quickstart", th.REPO / "configs" / "quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for override in overrides:
        key, value = override.removeprefix("--config.").split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value)
    return config


@pytest.fixture
def trained(tmp_path):
    overrides = th.tiny_overrides(tmp_path / "data", 8)
    config = _quickstart_with(overrides)
    work = tmp_path / "run"
    workdir_lib.write_config(config, str(work))
    items = ocp.args.Composite(
        model=ocp.args.StandardSave({"params": {"w": np.zeros(2, np.float32)}}),
        train=ocp.args.StandardSave({"step": np.int32(STEP)}),
        meta=ocp.args.JsonSave({"model": config.model.to_dict(), "source": "train"}),
    )
    options = ocp.CheckpointManagerOptions(create=True)
    with ocp.CheckpointManager(work / "checkpoints", options=options) as mngr:
        mngr.save(STEP, args=items, force=True)
        mngr.wait_until_finished()
    return work, config, overrides


def test_the_same_setting_resumes_and_free_fields_may_change(trained):
    work, config, _ = trained
    config_checks.check_workdir(config, str(work))
    config.train.num_steps = 100  # a longer run
    config.data.prefetch = 4  # how fast data is read
    config.data.cache_dir = "/elsewhere"
    config.eval.batch_size = 16
    config.model.compute_dtype = "bfloat16"  # how the same parameters compute
    config.model.bn_one_pass_min_pixels = 400
    config.model.conv_form = "conv"
    config_checks.check_workdir(config, str(work))


def test_a_changed_model_names_the_fields_and_the_fix(trained):
    work, config, _ = trained
    config.model.image_size = 128
    config.data.max_boxes = 50
    with pytest.raises(ConfigError) as e:
        config_checks.check_workdir(config, str(work))
    message = str(e.value)
    assert "\n" not in message
    assert "data.max_boxes: 100 -> 50, model.image_size: 96 -> 128" in message
    assert f"step {STEP}" in message and "use a new --workdir" in message
    assert f"--config.checkpoint.init_from={work}" in message


def test_an_imported_workdir_is_not_trained_in_place(tmp_path):
    work = tmp_path / "imported"
    config = _quickstart_with(th.tiny_overrides(tmp_path / "data", 8))
    workdir_lib.save_model(str(work), {"params": {"w": np.zeros(2, np.float32)}}, config.model)
    with pytest.raises(ConfigError, match="holds an imported model") as e:
        config_checks.check_workdir(config, str(work))
    assert f"new --workdir with --config.checkpoint.init_from={work}" in str(e.value)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        import_tf1.check_new_workdir(str(work))


def test_import_tf1_accepts_only_a_workdir_without_checkpoints(tmp_path, trained):
    import_tf1.check_new_workdir(str(tmp_path / "fresh"))
    (tmp_path / "labels_only").mkdir()
    (tmp_path / "labels_only" / "labels.txt").write_text("a\n")
    import_tf1.check_new_workdir(str(tmp_path / "labels_only"))
    work, _, _ = trained
    with pytest.raises(ConfigError, match=f"already holds checkpoints \\(step {STEP}"):
        import_tf1.check_new_workdir(str(work))


def test_a_refused_rerun_leaves_config_json_byte_identical(trained):
    work, _, overrides = trained
    before = (work / "config.json").read_bytes()
    steps = sorted(p.name for p in (work / "checkpoints").iterdir())
    env = th.environment(work.parent / "jax_cache")
    proc = th.run(work, [*overrides, "--config.model.image_size=128"], env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "model.image_size: 96 -> 128" in lines[0] and "init_from" in lines[0]
    assert (work / "config.json").read_bytes() == before
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == steps
    assert not (work / ".lock").exists()  # released on the way out
    assert not (work.parent / "data").exists()  # refused before any data was prepared


def test_the_import_command_refuses_a_trained_workdir(trained):
    work, _, _ = trained
    before = (work / "config.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "mobiledet_jax.import_tf1", "--model=edgetpu",
         f"--checkpoint={work.parent / 'missing' / 'model.ckpt'}", f"--workdir={work}"],
        cwd=th.REPO, env=th.environment(work.parent / "jax_cache"), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"already holds checkpoints (step {STEP}" in proc.stderr  # not "checkpoint not found"
    assert (work / "config.json").read_bytes() == before
