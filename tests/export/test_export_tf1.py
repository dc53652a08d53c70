"""Issue 4/7 acceptance: TF1 checkpoint -> JAX -> float32 TFLite gives the reference raw outputs.

The TF1 Object Detection API's outputs for the seeded reference weights and input
(``tests/reference_data/tf1/edgetpu/outputs.npz``) must come out of the exported file within
``1e-4 * max(1, max|ref|)``, the same tolerance the importer is held to.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax.tflite import runtime
from tests.helpers import tf1_reference

REF_KEYS = {"box_encodings": "box_encodings", "class_logits": "class_predictions_with_background"}


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_tf1_checkpoint_to_float_tflite_matches_reference(tmp_path, tf1_reference_dir):
    prefix = tf1_reference.write_checkpoint("edgetpu", tmp_path / "tf1" / "model.ckpt")
    workdir = tmp_path / "workdir"
    imported = _run("-m", "mobiledet_jax.import_tf1", "--model=edgetpu", f"--checkpoint={prefix}",
                    f"--workdir={workdir}")  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]
    out = tmp_path / "edgetpu_f32.tflite"
    exported = _run("-m", "mobiledet_jax.export", f"--workdir={workdir}", "--target=cpu",
                    "--format=float32", "--outputs=raw", f"--output={out}", "--float_input",
                    "--parity_images=4", "--eval_images=0", "--latency_runs=0")  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]

    ref = np.load(tf1_reference_dir / "edgetpu" / "outputs.npz")
    x = np.random.default_rng(1234).uniform(0, 255, (1, 320, 320, 3)).astype(np.float32)
    outputs = runtime.TFLiteModel(str(out)).invoke(x)
    for ours, theirs in REF_KEYS.items():
        assert outputs[ours].shape == ref[theirs].shape
        tol = 1e-4 * max(1.0, float(np.max(np.abs(ref[theirs]))))
        assert np.max(np.abs(outputs[ours] - ref[theirs])) <= tol, ours
    np.testing.assert_allclose(
        np.load(str(out) + ".anchors.npy"), ref["anchors"], atol=1e-6
    )  # the anchors written beside the file are the reference's
    # parity on the synthetic validation images, as reported
    report = json.loads((tmp_path / "edgetpu_f32.tflite.report.json").read_text())
    for stats in report["parity"]["outputs"].values():
        assert stats["relative"] < 1e-4
    assert report["ops"]["convs"] == 93 and "TRANSPOSE" not in report["ops"]["counts"]
