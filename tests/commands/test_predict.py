"""``python -m mobiledet_jax.predict``: a quickstart-like workdir and its float32 export give the same
detections on the same images; annotated images, an annotated video and ``predictions.json`` (COCO
results, scored by pycocotools against an annotation file) are written."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mobiledet_jax.export import exporter
from mobiledet_jax.inference import video
from tests.helpers import quickstart_model
from tests.helpers.detections import assert_same_detections

SHAPES = {"street.jpg": (240, 320), "yard.png": (160, 160), "door.jpg": (131, 97)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    workdir = quickstart_model.workdir(root / "workdir")
    tflite = root / "quickstart.tflite"
    opts = exporter.ExportOptions(format="float32", parity_images=0, eval_images=0, latency_runs=0)
    exporter.export_checkpoint(str(workdir), str(tflite), opts)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for name, (h, w) in SHAPES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
    coco = {
        "images": [{"id": 10 + i, "file_name": n, "height": h, "width": w}
                   for i, (n, (h, w)) in enumerate(SHAPES.items())],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 3, "bbox": [20, 30, 60, 50],
                         "area": 3000, "iscrowd": 0}],
        "categories": [{"id": i + 1, "name": n} for i, n in
                       enumerate(quickstart_model.CLASS_NAMES)],
    }  # fmt: skip
    (root / "instances.json").write_text(json.dumps(coco))
    return {"root": root, "workdir": workdir, "tflite": tflite, "images": images}


def _predict(model, source, output, *flags):
    cmd = [sys.executable, "-m", "mobiledet_jax.predict", f"--model={model}",
           f"--source={source}", f"--output={output}", *flags]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _by_image(path):
    out = {}
    for r in json.loads(path.read_text()):
        out.setdefault(r["file_name"], []).append(r)
    return out


def _normalized(entries, shape):
    h, w = shape
    boxes = np.array([[y / h, x / w, (y + bh) / h, (x + bw) / w]
                      for x, y, bw, bh in (e["bbox"] for e in entries)])  # fmt: skip
    classes = np.array([e["category_id"] for e in entries])
    return boxes, classes, np.array([e["score"] for e in entries])


@pytest.mark.slow
def test_workdir_and_its_float_export_predict_the_same(setup, tmp_path):
    out_jax, out_tfl = tmp_path / "jax", tmp_path / "tflite"
    annotations = setup["root"] / "instances.json"
    stdout = _predict(setup["workdir"], setup["images"], out_jax, f"--annotations={annotations}")
    assert "names: data config (synthetic)" in stdout
    for name in SHAPES:
        assert any(line.startswith(f"{name}: ") and line.endswith(" ms") and "detections" in line
                   for line in stdout.splitlines()), name  # fmt: skip
    _predict(setup["tflite"], f"{setup['images']}/*", out_tfl, f"--annotations={annotations}")
    jax_dets, tfl_dets = (
        _by_image(out_jax / "predictions.json"),
        _by_image(out_tfl / "predictions.json"),
    )
    assert set(jax_dets) == set(tfl_dets) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert_same_detections(_normalized(jax_dets[name], shape), _normalized(tfl_dets[name], shape),
                               box_tol=1e-3, score_tol=2e-5)  # fmt: skip
        annotated = Image.open(out_jax / name)
        assert annotated.size == shape[::-1] and annotated.mode == "RGB"
        original = np.asarray(Image.open(setup["images"] / name))
        assert np.any(np.asarray(annotated) != original)  # boxes were drawn
    # COCO results: pycocotools scores them against the annotation file
    gt = COCO(str(annotations))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(out_jax / "predictions.json"))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert {r["image_id"] for r in json.loads((out_jax / "predictions.json").read_text())} == {
        10, 11, 12
    }  # fmt: skip
    assert 0 <= ev.stats[0] <= 1


@pytest.mark.slow
def test_a_video_is_annotated(setup, tmp_path):
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(5)
    with video.VideoWriter(clip, fps=10) as writer:
        for _ in range(8):
            writer.write(rng.integers(0, 256, (120, 176, 3), dtype=np.uint8))
    assert video.video_info(clip)["frames"] == 8
    stdout = _predict(setup["tflite"], clip, tmp_path / "out", "--score_threshold=0.5")
    assert sum(line.startswith("frame ") for line in stdout.splitlines()) == 8
    annotated = tmp_path / "out" / "clip.annotated.mp4"
    info = video.video_info(annotated)
    assert (info["frames"], info["width"], info["height"]) == (8, 176, 120)
    frames = list(video.read_frames(annotated))
    assert len(frames) == 8 and frames[0].shape == (120, 176, 3)
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {e["image_id"] for e in entries} <= set(range(1, 9))
    assert all(e["score"] >= 0.5 for e in entries)


def test_missing_source_exits_2(setup, tmp_path):
    cmd = [sys.executable, "-m", "mobiledet_jax.predict", f"--model={setup['tflite']}",
           f"--source={tmp_path / 'none'}", f"--output={tmp_path / 'out'}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "predict: no such file, folder or glob" in result.stderr
