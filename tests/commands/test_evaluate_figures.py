"""``python -m mobiledet_jax.evaluate`` writes the pictures of its evaluation: ``<workdir>/eval_<step>/``
for a checkpoint, ``--output`` (default ``<file>.eval_<split>/``) for an exported file, and prints
the best-F1 thresholds."""

import json
import pathlib
import subprocess
import sys

import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.evaluation.visual_report import FIGURE_NAMES as FIGURES
from mobiledet_jax.models import build_model, random_weights
from tests.helpers.png_checks import assert_png_with_content

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE = 96


@pytest.fixture(scope="module")
def random_workdir(tmp_path_factory):
    """A random-weight checkpoint at step 3 with the config.json of a run."""
    root = tmp_path_factory.mktemp("evaluate_figures")
    config = config_lib.base_config("mobiledet_edgetpu")
    config.model.num_classes = 4
    config.model.image_size = SIZE
    config.model.width_multiplier = 0.25
    config.data.cache_dir = str(root / "data")
    config.data.synthetic.num_train = 8
    config.data.synthetic.num_val = 8
    config.data.num_shards = 1
    config.eval.batch_size = 8
    config.eval.num_sample_images = 2
    model = build_model(config.model)
    variables = random_weights.random_variables(model, (SIZE, SIZE), seed=2, class_logit_scale=5.0)
    workdir = root / "workdir"
    workdir_lib.save_model(str(workdir), variables, config.model, step=3, source="random")
    (workdir / "config.json").write_text(config.to_json())
    return workdir


def _evaluate(*flags):
    cmd = [sys.executable, "-m", "mobiledet_jax.evaluate", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def _assert_eval_folder(folder, num_samples):
    for name in FIGURES:
        assert_png_with_content(folder / f"{name}.png")
    samples = sorted((folder / "samples").glob("*.png"))
    assert len(samples) == num_samples
    for path in samples:
        assert_png_with_content(path)
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow
def test_checkpoint_evaluation_writes_the_eval_folder(random_workdir):
    done = _evaluate(f"--workdir={random_workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best F1 (IoU 0.5, all classes)" in done.stdout
    report = _assert_eval_folder(random_workdir / "eval_3", num_samples=2)
    assert report["step"] == 3
    saved = json.loads((random_workdir / "eval_step_latest.json").read_text())
    assert report["metrics"] == saved  # the metrics file of before, unchanged
    assert set(report["best_f1"]) == {"overall", "per_class"}
    assert len(report["confusion_matrix"]["counts"]) == 5


@pytest.mark.slow
def test_tflite_evaluation_writes_to_output(random_workdir, tmp_path):
    from mobiledet_jax.export import exporter

    tflite = tmp_path / "model.tflite"
    opts = exporter.ExportOptions(
        format="float32", outputs="raw", parity_images=0, eval_images=0, latency_runs=0
    )
    exporter.export_checkpoint(str(random_workdir), str(tflite), opts)
    done = _evaluate(f"--tflite={tflite}", f"--workdir={random_workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_eval_folder(tmp_path / "model.tflite.eval_val", num_samples=2)  # the default
    assert (tmp_path / "model.tflite.eval_val.json").is_file()
    out = tmp_path / "chosen"
    done = _evaluate(f"--tflite={tflite}", f"--workdir={random_workdir}", f"--output={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_eval_folder(out, num_samples=2)
