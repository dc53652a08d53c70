"""Issue 15 acceptance: an imported TF1 COCO MobileDet (the seeded reference weights) exports for
the EdgeTPU with the COCO names and camera-style calibration images, without any data config;
a data config of other classes, or no calibration source at all, is exit status 2 naming the fix."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from mobiledet_jax import labels
from mobiledet_jax.export import bundle, metadata, report

COCO = list(labels.coco90_names())


def _export(workdir, output, *flags):
    cmd = [sys.executable, "-m", "mobiledet_jax.export", f"--workdir={workdir}",
           f"--output={output}", "--parity_images=2", "--latency_runs=0", *flags]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A folder of 'camera frames' (JPEGs of another size than the model's)."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{i:03d}.jpg", quality=90)
    return folder


def test_import_records_the_coco_label_map(tf1_edgetpu_workdir):
    assert (tf1_edgetpu_workdir / "labels.txt").read_text() == labels.COCO90_FILE.read_text()


@pytest.mark.slow
def test_edgetpu_export_carries_the_coco_names(tf1_edgetpu_workdir, frames, tmp_path):
    out = tmp_path / "coco_edgetpu.tflite"
    flags = ("--target=edgetpu", "--outputs=postprocessed", f"--calibration_images={frames}")
    result = _export(tf1_edgetpu_workdir, out, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"int8 calibration: 6 images from --calibration_images={frames}" in result.stdout
    assert "COCO comparison not run: no data config with the model's 90 classes" in result.stdout
    r = json.loads(report.paths(out)[0].read_text())
    assert r["calibration"]["source"] == f"--calibration_images={frames}"
    assert r["calibration"]["images"] == 6 and r["export"]["quantization"] == "ptq"
    assert r["labels"] == {"source": str(tf1_edgetpu_workdir / "labels.txt"), "names": COCO}
    assert r["preflight"]["ok"] and r["parity"]["source"] == "calibration images"
    md = report.paths(out)[1].read_text()
    assert "int8 calibration: 6 images from --calibration_images" in md
    assert "labels from" in md and "person, bicycle, car" in md
    # the metadata, the labels file and the Frigate snippet
    _, files = metadata.read(out.read_bytes())
    assert files["labelmap.txt"].splitlines() == COCO
    paths = bundle.paths(out)
    assert paths["labels_file"].read_text().splitlines() == COCO
    model_block = yaml.safe_load(paths["frigate_file"].read_text())["model"]
    assert model_block["path"] == "/config/model_cache/coco_edgetpu_edgetpu.tflite"
    assert model_block["labelmap_path"].endswith("coco_edgetpu.tflite.labels.txt")
    assert (model_block["width"], model_block["height"], model_block["model_type"]) == (
        320, 320, "ssd"
    )  # fmt: skip
    # MediaPipe's ObjectDetector reads the names from the metadata
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ObjectDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(out)), score_threshold=0.0, max_results=25
    )
    image = np.asarray(Image.open(frames / "frame_000.jpg").convert("RGB"))
    with vision.ObjectDetector.create_from_options(options) as detector:
        found = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    names = [c.category_name for d in found.detections for c in d.categories]
    assert names and set(names) <= set(COCO)


def test_a_synthetic_data_config_is_refused(tf1_edgetpu_workdir, frames, tmp_path):
    out = tmp_path / "bad.tflite"
    flags = ("--target=edgetpu", f"--calibration_images={frames}",
             "--config=configs/mobiledet_edgetpu.py")  # fmt: skip
    result = _export(tf1_edgetpu_workdir, out, *flags)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("export: the model has 90 classes but --config=")
    assert "data.source='synthetic'" in message and "has 4" in message
    assert "--config.data.label_map=coco90" in message and "--eval_images=0" in message
    assert not out.exists()


def test_int8_without_a_calibration_source_is_refused(tf1_edgetpu_workdir, tmp_path):
    out = tmp_path / "bad.tflite"
    result = _export(tf1_edgetpu_workdir, out, "--target=edgetpu")
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("export: int8 calibration needs images")
    assert "--calibration_images=<folder or glob>" in message
    assert not out.exists()
