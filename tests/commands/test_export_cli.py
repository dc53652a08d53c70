"""``python -m mobiledet_jax.export`` end to end on a tiny checkpoint and the synthetic dataset."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.data.synthetic import CLASS_NAMES
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.evaluation.evaluator import Evaluator
from mobiledet_jax.evaluation.tflite_eval import evaluate_tflite
from mobiledet_jax.export import exporter, metadata
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.sharding import host_mesh
from mobiledet_jax.tflite import runtime

SIZE = 128


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE, 0.25, len(CLASS_NAMES)
    variables = random_weights.random_variables(build_model(mc), (SIZE, SIZE), seed=4)
    path = tmp_path_factory.mktemp("export_cli") / "workdir"
    workdir_lib.save_model(str(path), variables, mc, step=3, source="random")
    return path


def _export(workdir, output, *flags):
    cmd = [sys.executable, "-m", "mobiledet_jax.export", f"--workdir={workdir}",
           f"--output={output}", "--representative_images=8", "--parity_images=2",
           "--eval_images=16", "--latency_runs=5", *flags]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_edgetpu_preset(workdir, tmp_path):
    out = tmp_path / "edgetpu.tflite"
    result = _export(workdir, out, "--target=edgetpu")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "edgetpu.tflite.report.json").read_text())
    assert (tmp_path / "edgetpu.tflite.report.md").read_text().startswith("# Export report")
    e = report["export"]
    assert (e["format"], e["outputs"], e["input"]["dtype"]) == ("int8", "postprocessed", "UINT8")
    assert report["model"]["checkpoint_step"] == 3
    assert report["preflight"]["ok"] and report["preflight"]["target"] == "edgetpu"
    for stats in report["parity"]["outputs"].values():
        assert stats["max_abs_diff_steps"] < 30
    coco = report["coco"]
    assert coco["images"] == 16 and set(coco) >= {"jax", "tflite", "ap_drop"}
    assert report["latency"]["median_ms"] > 0
    # the reported metrics are those of the file and of the checkpoint on the same 16 images:
    # scored again here by the evaluation code (the command used the default data config)
    config = config_lib.base_config()
    config.model = workdir_lib.model_config_from_meta(workdir_lib.load_model(str(workdir)).meta)
    config.eval.batch_size, config.eval.max_batches = 16, 1
    tflite = evaluate_tflite(config, str(out))
    variables = workdir_lib.load_model(str(workdir)).variables
    jax_metrics = Evaluator(config, host_mesh(), pixels=True).evaluate(variables)
    for k, v in coco["tflite"].items():
        assert v == pytest.approx(tflite[k], abs=1e-9), k
    for k, v in coco["jax"].items():
        assert v == pytest.approx(jax_metrics[k], abs=1e-6), k
    assert coco["ap_drop"] == pytest.approx(tflite["AP"] - jax_metrics["AP"], abs=1e-6)
    _, files = metadata.read(out.read_bytes())
    assert files["labelmap.txt"].split() == list(CLASS_NAMES)


@pytest.mark.slow
def test_raw_float_export_is_a_predict_fn(workdir, tmp_path):
    out = tmp_path / "raw.tflite"
    # a float model for the EdgeTPU: written, but the preflight fails and so does the command
    flags = ("--target=edgetpu", "--format=float32", "--outputs=raw", "--eval_images=0")
    result = _export(workdir, out, *flags)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "FAIL" in result.stdout
    report = json.loads((tmp_path / "raw.tflite.report.json").read_text())
    assert report["export"]["format"] == "float32" and not report["preflight"]["ok"]
    assert report["coco"] is None
    for stats in report["parity"]["outputs"].values():
        assert stats["relative"] < 1e-4
    anchors = np.load(tmp_path / "raw.tflite.anchors.npy")
    np.testing.assert_array_equal(anchors, anchors_lib.anchors_for_image(SIZE, SIZE))
    # the predict_fn interface: [0, 255] pixels in, raw outputs out
    variables, meta, _ = workdir_lib.load_model(str(workdir))
    model = build_model(workdir_lib.model_config_from_meta(meta))
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    boxes, logits = runtime.TFLiteModel(str(out)).raw(pixels)
    ref_boxes, ref_logits = exporter.jax_raw(model, variables, pixels)
    assert boxes.shape == (2, len(anchors), 4) and logits.shape == (2, len(anchors), 5)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-4)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)


def test_missing_checkpoint_exits_2(tmp_path):
    result = _export(tmp_path / "none", tmp_path / "x.tflite", "--target=cpu")
    assert result.returncode == 2
    assert "export:" in result.stderr and not (tmp_path / "x.tflite").exists()
