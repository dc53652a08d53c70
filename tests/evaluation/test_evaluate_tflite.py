"""``python -m mobiledet_jax.evaluate --tflite=<file>``: an exported file scored by the same COCO code
as the JAX model. A float32 file scores what the JAX model scores on the same batches."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.data.synthetic import CLASS_NAMES
from mobiledet_jax.evaluation import tflite_eval
from mobiledet_jax.evaluation.evaluator import Evaluator
from mobiledet_jax.export import exporter
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.sharding import host_mesh
from tests.helpers import train_harness as th

SIZE = 128
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _fields(cache_dir):
    return {
        "model.name": "mobiledet_edgetpu",
        "model.image_size": SIZE,
        "model.width_multiplier": 0.25,
        "eval.batch_size": 8,
        "eval.max_batches": 2,
        "data.cache_dir": str(cache_dir),
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 16,
        "data.num_shards": 2,
    }


def _config(fields):
    config = config_lib.base_config("mobiledet_edgetpu")
    config.model.num_classes = len(CLASS_NAMES)
    for key, value in fields.items():
        *parents, name = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[name] = value
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight checkpoint (with the config.json of a run) and its float32 exports."""
    root = tmp_path_factory.mktemp("evaluate_tflite")
    fields = _fields(root / "data")
    config = _config(fields)
    variables = random_weights.random_variables(build_model(config.model), (SIZE, SIZE), seed=4)
    workdir = root / "workdir"
    workdir_lib.save_model(str(workdir), variables, config.model, step=1, source="random")
    (workdir / "config.json").write_text(config.to_json())
    files = {}
    for outputs in ("raw", "postprocessed"):
        files[outputs] = root / f"{outputs}.tflite"
        opts = exporter.ExportOptions(
            format="float32", outputs=outputs, parity_images=0, eval_images=0, latency_runs=0
        )
        exporter.export_checkpoint(str(workdir), str(files[outputs]), opts, data_config=config.data)
    # the JAX model on the same pixel batches the file is scored on (eval.max_batches=2)
    jax_metrics = Evaluator(config, host_mesh(), pixels=True).evaluate(variables)
    return {"config": config, "fields": fields, "workdir": workdir, "jax": jax_metrics, **files}


def _evaluate(*flags):
    cmd = [sys.executable, "-m", "mobiledet_jax.evaluate", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=th.REPO)


@pytest.mark.slow
def test_raw_float_file_scores_what_jax_scores(exported):
    overrides = [f"--config.{k}={v}" for k, v in exported["fields"].items()]
    result = _evaluate(f"--tflite={exported['raw']}", "--config=configs/quickstart.py", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AP50" in result.stdout and "per-class AP" in result.stdout
    metrics = json.loads(exported["raw"].with_name("raw.tflite.eval_val.json").read_text())
    assert set(KEYS) <= set(metrics)
    assert all(np.isfinite(metrics[k]) and -1 <= metrics[k] <= 1 for k in KEYS)
    # the same 16 images, the same JAX post-processing on (float) raw outputs equal to 1e-5
    for k in KEYS:
        assert metrics[k] == pytest.approx(exported["jax"][k], abs=1e-4), k


@pytest.mark.slow
def test_postprocessed_file_with_the_workdir_config(exported):
    result = _evaluate(f"--tflite={exported['postprocessed']}", f"--workdir={exported['workdir']}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = exported["postprocessed"].with_name("postprocessed.tflite.eval_val.json")
    metrics = json.loads(out.read_text())
    assert all(np.isfinite(metrics[k]) and -1 <= metrics[k] <= 1 for k in KEYS)
    # the TFLite NMS op instead of ours: close to the JAX numbers, not bit-equal
    assert metrics["AP"] == pytest.approx(exported["jax"]["AP"], abs=0.01)
    assert metrics["AR100"] == pytest.approx(exported["jax"]["AR100"], abs=0.02)


def test_missing_file_is_a_clear_error(tmp_path):
    result = _evaluate(f"--tflite={tmp_path / 'nope.tflite'}")
    assert result.returncode == 2
    assert "no such .tflite file" in result.stderr


@pytest.mark.slow
def test_input_size_and_classes_must_match(exported):
    config = _config({**exported["fields"], "model.image_size": 160})
    with pytest.raises(ValueError, match="takes 128x128 images but the config's model is 160x160"):
        tflite_eval.evaluate_tflite(config, str(exported["raw"]))
    config = _config(exported["fields"])
    config.data.label_map = "coco90"
    with pytest.raises(ValueError, match="the file has 4 classes, split 'val' has 90"):
        tflite_eval.evaluate_tflite(config, str(exported["raw"]))
