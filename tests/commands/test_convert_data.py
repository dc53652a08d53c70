"""``python -m mobiledet_jax.convert_data``: YOLO, VOC and TF OD API data (tests/helpers/
user_datasets.py, broken files included) as COCO JSON files that pass ``validate_data`` and train
into the same batches as the data they came from."""

import collections
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mobiledet_jax import convert_data, data, validate_data
from mobiledet_jax.data import formats
from tests.helpers import user_datasets

REPO = pathlib.Path(__file__).resolve().parents[2]


def _convert(source: str, base: pathlib.Path):
    """Writes the dataset, converts it; returns (its config, expected boxes, counts, output)."""
    out = base / "coco"
    if source == "yolo":
        cfg, expected, counts = user_datasets.write_yolo(base / "yolo", base / "cache")
        runs = [[f"--data={cfg.yolo.data_yaml}"]]
    elif source == "voc":
        cfg, expected, counts = user_datasets.write_voc(base / "VOC", base / "cache")
        runs = [[f"--data={cfg.voc.root}"]]
    else:
        cfg, expected, counts = user_datasets.write_tfod(base / "records", base / "cache")
        t = cfg.tfod_tfrecord
        runs = [
            [f"--data={t.train_pattern}", f"--label_map={t.label_map}"],
            [f"--data={t.val_pattern}", f"--label_map={t.label_map}", "--splits=val"],
        ]
    for args in runs:
        assert convert_data.main([f"--from={source}", f"--output={out}", *args]) == 0
    return cfg, expected, counts, out


@pytest.mark.parametrize("source", ["yolo", "voc", "tfod_tfrecord"])
def test_converted_json_validates_and_trains_the_same(source, tmp_path, capsys):
    cfg, expected, counts, out = _convert(source, tmp_path)
    printed = capsys.readouterr().out
    assert "found while reading" in printed and "validate_data" in printed
    coco = json.loads((out / "instances_train.json").read_text())
    images = pathlib.Path(coco["info"]["images"])
    args = [f"--annotations={out / 'instances_train.json'}", f"--images={images}", "--json"]
    assert validate_data.main(args) == 0
    from_json = json.loads(capsys.readouterr().out)["counts"]
    reading = formats.reader(source).read_split(cfg, "train", tmp_path / "again").report.counts
    assert all(f"{n:7d}  {reason}:" in printed for reason, n in reading.items())
    # reading + the COCO checks of the files = what training from the source data reports
    assert collections.Counter(from_json) + reading == collections.Counter(counts)

    c = data.data_config()
    c.source, c.cache_dir, c.num_shards = "coco_json", cfg.cache_dir, 2
    for split in ("train", "val"):
        split_json = json.loads((out / f"instances_{split}.json").read_text())
        c.coco_json[f"{split}_annotations"] = str(out / f"instances_{split}.json")
        c.coco_json[f"{split}_images"] = split_json["info"]["images"]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    for split in ("train", "val"):
        evaluation = data.build_eval_iterator(c, 2, 32, mesh, split=split)
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in evaluation]
        got = user_datasets.batch_boxes(batches, evaluation.info.ground_truth())
        user_datasets.assert_same_boxes(got, expected[split])


def test_as_processes(tmp_path):
    cfg, _, _ = user_datasets.write_yolo(tmp_path / "yolo", tmp_path / "cache")
    out = tmp_path / "coco"
    cmd = [sys.executable, "-m", "mobiledet_jax.convert_data", "--from=yolo"]
    cmd += [f"--data={cfg.yolo.data_yaml}", f"--output={out}", "--splits=val"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert not (out / "instances_train.json").exists()
    images = json.loads((out / "instances_val.json").read_text())["info"]["images"]
    cmd = [sys.executable, "-m", "mobiledet_jax.validate_data"]
    cmd += [f"--annotations={out / 'instances_val.json'}", f"--images={images}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "usable: yes" in done.stdout


def test_bad_arguments_and_unreadable_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        convert_data.main(["--from=tfod_tfrecord", "--data=x", f"--output={tmp_path}"])
    assert e.value.code == 2  # no --label_map
    with pytest.raises(SystemExit) as e:
        convert_data.main(["--from=csv", "--data=x", f"--output={tmp_path}"])
    assert e.value.code == 2
    args = ["--from=yolo", f"--data={tmp_path / 'none.yaml'}", f"--output={tmp_path}"]
    assert convert_data.main(args) == 1
    assert "FATAL" in capsys.readouterr().out
