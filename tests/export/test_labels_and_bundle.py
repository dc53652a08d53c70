"""Label files, the COCO-90 map, the Frigate preset and bundle, and an export's report carrying its
labels, calibration source and best-F1 thresholds (a tiny random model, float32 and int8)."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from mobiledet_jax import config as config_lib
from mobiledet_jax import labels
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.data.synthetic import CLASS_NAMES
from mobiledet_jax.data.tfds_source import COCO_CATEGORY_IDS
from mobiledet_jax.export import bundle, exporter, metadata, report
from mobiledet_jax.models import build_model, random_weights

SIZE = 128


def test_coco90_map_names_the_80_used_ids():
    names = labels.coco90_names()
    assert len(names) == 90 and names[0] == "person" and names[89] == "toothbrush"
    unused = [i + 1 for i, n in enumerate(names) if n.startswith("unused_")]
    assert unused == sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))
    assert all(names[i - 1] == f"unused_{i}" for i in unused) and len(set(names)) == 90


def test_label_files_round_trip_in_both_forms(tmp_path):
    assert labels.parse_labels("cat\ndog\n\n") == ["cat", "dog"]
    assert labels.labels_text(["cat", "dog"]) == "cat\ndog\n"
    # a name pycoral / Frigate would read as "<index> <name>": the whole file gets indices
    text = labels.labels_text(["cat", "10 pin bowling"])
    assert text == "0 cat\n1 10 pin bowling\n"
    assert labels.parse_labels(text) == ["cat", "10 pin bowling"]
    assert labels.parse_labels("0 person\n2 car\n") == ["person", "unused_1", "car"]
    path = tmp_path / "names.txt"
    path.write_text("a\nb\nc\n")
    assert labels.read_labels(path, 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="has 3 names but the model has 4 classes"):
        labels.read_labels(path, 4)
    with pytest.raises(FileNotFoundError):
        labels.read_labels(tmp_path / "none.txt")


def test_frigate_preset_sets_what_frigate_takes_and_refuses_contradictions():
    cfg = config_lib.export_config()
    opts = exporter.ExportOptions.from_config(cfg, preset="frigate")
    assert (opts.target, opts.format, opts.outputs, opts.float_input) == (
        "edgetpu", "int8", "postprocessed", False
    )  # fmt: skip
    with pytest.raises(ValueError, match="--preset=frigate exports outputs=postprocessed"):
        exporter.ExportOptions.from_config(cfg, preset="frigate", outputs="raw")
    with pytest.raises(ValueError, match="preset must be one of"):
        exporter.ExportOptions.from_config(cfg, preset="nope")


def test_frigate_snippet_is_the_model_block(tmp_path):
    opts = exporter.ExportOptions(target="edgetpu")
    best = {"overall": {"threshold": 0.41, "f1": 0.6, "precision": 0.6, "recall": 0.6},
            "per_class": {"person": {"threshold": 0.52, "f1": 0.7, "precision": 0.7, "recall": 0.7},
                          "cat": {"threshold": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}}}  # fmt: skip
    coco = {"split": "val", "images": 10, "best_f1": best}
    text = bundle.frigate_yaml(tmp_path / "det.tflite", opts, (320, 256), coco)
    parsed = yaml.safe_load(text)
    assert parsed["detectors"]["coral"] == {"type": "edgetpu", "device": "usb"}
    assert parsed["model"] == {
        "path": "/config/model_cache/det_edgetpu.tflite",
        "labelmap_path": "/config/model_cache/det.tflite.labels.txt",
        "width": 256,
        "height": 320,
        "input_tensor": "nhwc",
        "input_pixel_format": "rgb",
        "model_type": "ssd",
    }
    assert "edgetpu_compiler det.tflite" in text
    assert '#     "person":\n#       threshold: 0.52' in text and '"cat"' not in text
    cpu = yaml.safe_load(
        bundle.frigate_yaml(tmp_path / "d.tflite", exporter.ExportOptions(), (8, 8), None)
    )
    assert cpu["detectors"]["cpu"]["type"] == "cpu" and cpu["model"]["path"].endswith("/d.tflite")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A random 4-class model without config.json (the default synthetic data matches it)."""
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE, 0.25, len(CLASS_NAMES)
    model = build_model(mc)
    variables = random_weights.random_variables(model, (SIZE, SIZE), seed=3, class_logit_scale=10)
    path = tmp_path_factory.mktemp("labels_bundle") / "workdir"
    workdir_lib.save_model(str(path), variables, mc, step=5, source="random")
    return path


def _opts(**kw):
    base = dict(parity_images=2, eval_images=16, latency_runs=0, representative_images=4)
    return exporter.ExportOptions(**{**base, **kw})


@pytest.mark.slow
def test_float_export_reports_labels_thresholds_and_writes_the_bundle(workdir, tmp_path):
    out = tmp_path / "f32.tflite"
    r = exporter.export_checkpoint(str(workdir), str(out), _opts(format="float32"))
    assert r["labels"] == {"source": "the data config's categories", "names": list(CLASS_NAMES)}
    assert r["calibration"] is None and r["model"]["checkpoint_step"] == 5
    best = r["coco"]["best_f1"]
    assert set(best) == {"overall", "per_class"} and set(best["per_class"]) <= set(CLASS_NAMES)
    assert 0 <= best["overall"]["threshold"] <= 1 and 0 <= best["overall"]["f1"] <= 1
    md = report.paths(out)[1].read_text()
    assert "Score threshold (best F1 at IoU 0.5, TFLite file)" in md
    assert "labels from the data config's categories: circle" in md and "pycoral" in md
    files = bundle.paths(out)
    assert files["labels_file"].read_text().split("\n")[:4] == list(CLASS_NAMES)
    model_block = yaml.safe_load(files["frigate_file"].read_text())["model"]
    assert (model_block["width"], model_block["height"]) == (SIZE, SIZE)
    assert json.loads(report.paths(out)[0].read_text())["bundle"]["frigate_file"] == str(
        files["frigate_file"]
    )


@pytest.mark.slow
def test_labels_flag_and_calibration_images(workdir, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("apple\nbanana\ncherry\ndate\n")
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
            frames / f"{i}.png"
        )
    (frames / "broken.jpg").write_bytes(b"not a jpeg")
    (frames / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "int8.tflite"
    opts = _opts(format="int8", labels=str(names), calibration_images=str(frames), eval_images=0,
                 representative_images=10)  # fmt: skip
    r = exporter.export_checkpoint(str(workdir), str(out), opts)
    assert r["labels"]["names"] == ["apple", "banana", "cherry", "date"]
    cal = r["calibration"]
    assert cal["source"] == f"--calibration_images={frames}" and cal["images"] == 5
    assert cal["found"] == 6 and cal["skipped"][0].startswith("broken.jpg")
    _, files = metadata.read(out.read_bytes())
    assert files["labelmap.txt"].split() == ["apple", "banana", "cherry", "date"]
    assert "int8 calibration: 5 images of 6 found from --calibration_images" in (
        report.paths(out)[1].read_text()
    )
    # a label file of the wrong length fails before anything is converted (calibration: a glob)
    mc = workdir_lib.model_config_from_meta(workdir_lib.load_model(str(workdir)).meta)
    mc.num_classes = 3
    opts = _opts(format="int8", labels=str(names), calibration_images=str(frames / "*.png"),
                 eval_images=0)  # fmt: skip
    with pytest.raises(ValueError, match="has 4 names but the model has 3 classes"):
        exporter.export_model(mc, {}, str(tmp_path / "x.tflite"), opts, config_lib.data_config())
    assert not (tmp_path / "x.tflite").exists()
