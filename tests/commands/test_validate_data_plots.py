"""``python -m mobiledet_jax.validate_data --plots=<dir> [--image_size=...]``: the dataset statistics
figures and ``statistics.json``, their numbers checked against a hand-made dataset, and the
command's other flags unchanged."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax import validate_data
from mobiledet_jax.data import coco_source
from mobiledet_jax.detection import anchor_coverage, anchors
from tests.helpers.png_checks import assert_png_with_content
from tests.helpers.tiny_coco import write_tiny_coco

FIGURES = ("class_counts", "box_sizes", "boxes_per_image", "anchor_coverage")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("tiny_coco"))


def test_plots_and_statistics(tiny, tmp_path, capsys):
    path, images = tiny
    out = tmp_path / "plots"
    args = [f"--annotations={path}", f"--images={images}", f"--plots={out}", "--image_size=150"]
    assert validate_data.main(args) == 0
    printed = capsys.readouterr().out
    assert "usable: yes" in printed and "anchor coverage at 150x150" in printed
    for name in FIGURES:
        assert_png_with_content(out / f"{name}.png")
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["num_boxes"] == 3 and stats["boxes_per_image"]["histogram"] == {
        "0": 1, "1": 1, "2": 1
    }  # fmt: skip
    assert [c["boxes"] for c in stats["classes"]] == [2, 1]
    # the coverage of the three training boxes (sqrt areas 75, 30, 63.6 px at 150x150, away
    # from the bucket edges), computed here from the JSON's pixel boxes
    boxes = np.array(
        [[0, 0, 50 / 100, 100 / 200], [50 / 100, 100 / 200, 90 / 100, 120 / 200],
         [20 / 100, 10 / 100, 80 / 100, 40 / 100]]
    )  # fmt: skip
    expected = anchor_coverage.anchor_coverage(
        boxes, anchors.anchors_for_image(150, 150), (150, 150), 0.5
    ).to_dict()
    cov = stats["anchor_coverage"]
    assert cov["image_size"] == [150, 150] and cov["matched_threshold"] == 0.5
    assert cov["all"]["num_boxes"] == 3
    for got, want in zip(cov["buckets"], expected["buckets"], strict=True):
        for key in ("bucket", "num_boxes", "num_covered", "num_forced_only"):
            assert got[key] == want[key], (key, got, want)
    assert [b["num_boxes"] for b in cov["buckets"]] == [0, 1, 1, 1, 0]


def test_json_stays_one_document_and_shards_still_write(tiny, tmp_path, capsys):
    path, images = tiny
    out = tmp_path / "plots"
    shards = tmp_path / "shards"
    args = [f"--annotations={path}", f"--images={images}", f"--plots={out}", "--image_size=96x128"]
    assert validate_data.main([*args, "--json", f"--output_dir={shards}"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout: the report only
    assert report["usable"] and "anchor coverage at 96x128" in captured.err
    assert (shards / coco_source.METADATA).is_file()
    assert json.loads((out / "statistics.json").read_text())["input_size"] == [96, 128]
    with pytest.raises(SystemExit):
        validate_data.main([*args[:2], "--image_size=big"])


def test_unusable_data_writes_no_plots(tiny, tmp_path, capsys):
    _, images = tiny
    (tmp_path / "bad.json").write_text("[]")
    out = tmp_path / "plots"
    args = [f"--annotations={tmp_path / 'bad.json'}", f"--images={images}", f"--plots={out}"]
    assert validate_data.main(args) == 1
    assert "FATAL" in capsys.readouterr().out and not out.exists()


def test_command_as_a_process(tiny, tmp_path):
    path, images = tiny
    out = tmp_path / "plots"
    cmd = [
        sys.executable, "-m", "mobiledet_jax.validate_data", f"--annotations={path}",
        f"--images={images}", f"--plots={out}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "anchor coverage at 320x320 (2034 anchors)" in done.stdout
    assert (out / "statistics.json").is_file()
