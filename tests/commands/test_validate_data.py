"""``python -m mobiledet_jax.validate_data``: the report, its exit codes and the shards it writes, on
a dataset with every data problem (tests/helpers/bad_coco.py)."""

import json
import pathlib
import subprocess
import sys

import pytest

from mobiledet_jax import validate_data
from mobiledet_jax.data import coco_source
from tests.helpers import bad_coco

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    return bad_coco.write_bad_dataset(tmp_path_factory.mktemp("bad"))


def test_cli_reports_and_exit_codes(bad_dataset, tmp_path, capsys):
    path, images, _ = bad_dataset
    assert validate_data.main([f"--annotations={path}", f"--images={images}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] and report["counts"]["corrupt_image"] == 2
    (tmp_path / "bad.json").write_text("[]")
    assert validate_data.main([f"--annotations={tmp_path / 'bad.json'}", f"--images={images}"]) == 1
    assert "FATAL" in capsys.readouterr().out
    out = tmp_path / "shards"
    args = [f"--annotations={path}", f"--images={images}", f"--output_dir={out}", "--max_boxes=5"]
    assert validate_data.main(args) == 0
    assert (out / coco_source.METADATA).is_file()


def test_cli_as_a_process(bad_dataset, capsys):
    path, images, _ = bad_dataset
    cmd = [
        sys.executable,
        "-m",
        "mobiledet_jax.validate_data",
        f"--annotations={path}",
        f"--images={images}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "corrupt_image" in done.stdout and "usable: yes" in done.stdout
    args = [f"--annotations={path}", f"--images={images / 'nowhere'}"]
    assert validate_data.main(args) == 1
    assert "image folder not found" in capsys.readouterr().out
