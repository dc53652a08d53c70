"""``--checkpoint_step=<N|latest|best>``: ``workdir.load_model`` and the commands choose the same
checkpoint; ``<workdir>/best`` finds its run's config and labels."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.models import build_model, random_weights

SIZE = 128
NAMES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Steps 4 and 10 in checkpoints/, step 7 kept as the best (as training lays them out)."""
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE, 0.25, len(NAMES)
    model = build_model(mc)
    path = tmp_path_factory.mktemp("steps") / "run"
    for step, target in ((4, path), (10, path), (7, path / "best")):
        v = random_weights.random_variables(model, (SIZE, SIZE), seed=step, class_logit_scale=10)
        workdir_lib.save_model(str(target), v, mc, step=step, source=f"seed {step}")
    workdir_lib.write_labels(str(path), NAMES)
    config = config_lib.base_config()
    config.model = mc
    workdir_lib.write_config(config, str(path))
    return path


def test_parse_step():
    p = workdir_lib.parse_step
    assert [p(None), p(""), p("latest"), p(-1), p("-1")] == ["latest"] * 5
    assert (p("best"), p("BEST"), p(7), p("12")) == ("best", "best", 7, 12)
    with pytest.raises(ValueError, match="a number, 'latest' or 'best'"):
        p("newest")


def test_load_model_latest_best_and_number(run, tmp_path):
    assert workdir_lib.load_model(str(run)).step == 10
    assert workdir_lib.load_model(str(run), "latest").step == 10
    assert workdir_lib.load_model(str(run), 4).meta["source"] == "seed 4"
    best = workdir_lib.load_model(str(run), "best")
    assert (best.step, best.meta["source"]) == (7, "seed 7")
    with pytest.raises(FileNotFoundError, match="step 5 not in"):
        workdir_lib.load_model(str(run), "5")
    # a run that never evaluated has no best: the message says what to pass instead
    other = tmp_path / "no_best"
    workdir_lib.save_model(
        str(other), best.variables, workdir_lib.model_config_from_meta(best.meta)
    )
    with pytest.raises(FileNotFoundError, match="no best checkpoint in .*--checkpoint_step=latest"):
        workdir_lib.load_model(str(other), "best")
    # <run>/best given as a workdir: its own checkpoint, the run's config and labels
    assert workdir_lib.load_model(str(run / "best")).step == 7
    assert workdir_lib.load_labels(str(run / "best")) == NAMES
    assert workdir_lib.load_config(str(run / "best")).model.num_classes == len(NAMES)


def test_config_json_of_before_named_steps_still_loads(tmp_path):
    config = config_lib.base_config()
    saved = json.loads(config.to_json())
    saved["checkpoint"]["init_from_step"] = -1  # how config.json held it before
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.load_config(str(tmp_path)).checkpoint.init_from_step == "latest"
    saved["checkpoint"]["init_from_step"] = 1200
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.load_config(str(tmp_path)).checkpoint.init_from_step == "1200"


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
def test_export_and_predict_take_the_best(run, tmp_path):
    out = tmp_path / "best.tflite"
    result = _run("-m", "mobiledet_jax.export", f"--workdir={run}", "--checkpoint_step=best",
                  "--format=float32", f"--output={out}", "--parity_images=0", "--eval_images=0",
                  "--latency_runs=0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.with_name("best.tflite.report.json").read_text())
    assert (r["model"]["checkpoint_step"], r["model"]["source"]) == (7, "seed 7")
    assert r["labels"]["names"] == NAMES
    image = tmp_path / "images" / "one.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 120, 3), np.uint8)).save(image)
    result = _run("-m", "mobiledet_jax.predict", f"--model={run}", "--checkpoint_step=best",
                  f"--source={image}", f"--output={tmp_path / 'pred'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint step 7" in result.stdout
    bad = _run("-m", "mobiledet_jax.export", f"--workdir={run}", "--checkpoint_step=newest",
               f"--output={tmp_path / 'x.tflite'}")  # fmt: skip
    assert bad.returncode == 2 and "'latest' or 'best'" in bad.stderr
