"""Bad data is repaired, skipped or truncated, and counted; built from real files on disk."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobiledet_jax import validate_data
from mobiledet_jax.data import coco_source, data_config, pipeline, records, sources, validate

REPO = pathlib.Path(__file__).resolve().parents[1]
GOOD_BOX = [8, 6, 30, 20]  # x, y, w, h on a 64x48 image


def _save(path, mode="RGB", size=(64, 48), colour=(200, 30, 30), fmt=None):
    Image.new(mode, size, colour).save(path, format=fmt)


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    """A COCO-format dataset holding one instance of every problem the pipeline must handle."""
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    images.mkdir()
    _save(images / "good.jpg", fmt="JPEG")
    _save(images / "full.jpg", fmt="JPEG")
    good = (images / "good.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    _save(images / "cmyk.jpg", mode="CMYK", colour=(0, 255, 255, 0), fmt="JPEG")  # red
    _save(images / "png.jpg", fmt="PNG")  # a PNG with a .jpg name
    _save(images / "gray.jpg", mode="L", colour=128, fmt="JPEG")
    _save(images / "rgba.png", mode="RGBA", colour=(0, 0, 255, 128), fmt="PNG")
    _save(images / "empty.jpg", fmt="JPEG")
    _save(images / "many.jpg", fmt="JPEG")
    _save(images / "mismatch.jpg", fmt="JPEG")
    names = [
        "good",
        "full",
        "truncated",
        "garbage",
        "cmyk",
        "png",
        "gray",
        "rgba",
        "empty",
        "many",
        "mismatch",
        "missing",
    ]
    coco_images = [
        {
            "id": i + 1,
            "file_name": f"{n}.{'png' if n == 'rgba' else 'jpg'}",
            "height": 48,
            "width": 64,
        }
        for i, n in enumerate(names)
    ]
    ids = {n: i + 1 for i, n in enumerate(names)}
    coco_images[ids["mismatch"] - 1]["height"] = 99
    coco_images.append({"id": ids["good"], "file_name": "full.jpg"})  # duplicate id
    coco_images.append({"file_name": "good.jpg"})  # no id
    anns = []

    def ann(image, bbox, category=1, **extra):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": ids.get(image, image),
                "bbox": bbox,
                "category_id": category,
                "iscrowd": 0,
                **extra,
            }
        )

    ann("good", GOOD_BOX)
    ann("good", [5, 5, 0, 10])  # zero area
    ann("good", [40, 5, -10, 10])  # inverted
    ann("good", [70, 50, 10, 10])  # outside the 64x48 image
    ann("good", [50, 40, 30, 30])  # crosses the border: clipped to [50, 40, 14, 8]
    ann("good", [1, 2, 3])  # malformed
    ann("good", [0, 0, 10, float("nan")])  # malformed (NaN)
    ann("good", GOOD_BOX, category=77)  # unknown category
    ann("good", [0, 0, 64, 48], category=2, iscrowd=1)  # crowd
    ann(999, GOOD_BOX)  # unknown image
    ann("full", GOOD_BOX, category=2)
    for name in ("truncated", "garbage", "missing"):
        ann(name, GOOD_BOX)
    for name in ("cmyk", "png", "gray", "rgba", "mismatch"):
        ann(name, GOOD_BOX, category=2)
    for k in range(7):
        ann("many", [k * 8, 4, 6, 6])
    anns[-1]["id"] = anns[-2]["id"]  # a duplicated annotation id
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = root / "instances.json"
    path.write_text(
        json.dumps({"images": coco_images, "annotations": anns, "categories": categories})
    )
    return path, images, ids


EXPECTED = {
    "malformed_image_entry": 1,
    "duplicate_image_id": 1,
    "missing_image_file": 1,
    "corrupt_image": 2,  # truncated and garbage
    "converted_non_jpeg": 2,  # png.jpg and rgba.png
    "converted_grayscale": 1,
    "converted_cmyk": 1,
    "converted_other_mode": 1,  # RGBA
    "image_size_mismatch": 1,
    "image_without_annotations": 1,
    "image_over_max_boxes": 1,
    "boxes_truncated": 2,
    "unknown_category": 1,
    "unknown_image_id": 1,
    "annotation_of_skipped_image": 3,
    "malformed_box": 2,
    "zero_area_box": 1,
    "inverted_box": 1,
    "box_outside_image": 1,
    "box_clipped": 1,
    "annotation_id_reassigned": 1,
    "crowd_box": 1,
}


def test_every_bad_case_is_counted(bad_dataset):
    path, images, _ = bad_dataset
    report = validate.validate_dataset(path, images, max_boxes=5, workers=2)
    assert report.to_dict()["counts"] == EXPECTED
    assert report.num_images == 14 and report.num_usable_images == 9
    assert report.usable and not report.fatal
    # good: box + clipped; full, cmyk, png, gray, rgba, mismatch: 1; many: 7
    assert report.num_training_boxes == 2 + 6 + 7
    assert report.num_eval_boxes == report.num_training_boxes + 1  # + the crowd box
    text = report.format()
    for reason in EXPECTED:
        assert reason in text


@pytest.fixture(scope="module")
def prepared(bad_dataset, tmp_path_factory):
    path, images, _ = bad_dataset
    out = tmp_path_factory.mktemp("prepared") / "split"
    return coco_source.prepare(path, images, out, max_boxes=5, num_shards=3, progress=False)


def test_prepared_records_are_clean(prepared, bad_dataset):
    _, _, ids = bad_dataset
    assert prepared.report["counts"] == EXPECTED
    assert prepared.num_examples == 9 and len(prepared.files) == 3
    examples = {}
    for serialized in tf.data.TFRecordDataset(list(prepared.files)):
        ex = records.parse_example(serialized)
        image = tf.io.decode_jpeg(ex["image/encoded"]).numpy()  # every record is an RGB JPEG
        assert image.shape == (48, 64, 3)
        assert (ex["image/height"], ex["image/width"]) == (48, 64)
        boxes = ex["boxes"].numpy()
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        examples[int(ex["image/id"])] = (image, ex)
    assert set(examples) == {
        ids[n] for n in ("good", "full", "cmyk", "png", "gray", "rgba", "empty", "many", "mismatch")
    }
    image, _ = examples[ids["cmyk"]]
    assert image[..., 0].mean() > 200 and image[..., 1:].mean() < 60  # CMYK red is RGB red
    image, _ = examples[ids["gray"]]
    assert np.ptp(image.astype(int), axis=-1).max() <= 2  # grey replicated into RGB
    _, good = examples[ids["good"]]
    np.testing.assert_allclose(
        good["boxes"].numpy(),
        [[6 / 48, 8 / 64, 26 / 48, 38 / 64], [40 / 48, 50 / 64, 1, 1], [0, 0, 1, 1]],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(good["is_crowd"].numpy(), [False, False, True])
    assert len(examples[ids["many"]][1]["boxes"]) == 7  # all kept on disk, truncated in tf.data


def test_ground_truth_keeps_crowd_and_repairs(prepared, bad_dataset):
    _, _, ids = bad_dataset
    gt = json.loads(prepared.ground_truth.read_text())
    assert len(gt["images"]) == 9
    good = [a for a in gt["annotations"] if a["image_id"] == ids["good"]]
    assert [a["bbox"] for a in good] == [GOOD_BOX, [50, 40, 14, 8], [0, 0, 64, 48]]
    assert [a["iscrowd"] for a in good] == [0, 0, 1]
    ann_ids = [a["id"] for a in gt["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    mismatch = [i for i in gt["images"] if i["id"] == ids["mismatch"]][0]
    assert mismatch["height"] == 48


def test_pipeline_truncates_to_max_boxes_and_excludes_crowd(prepared, bad_dataset):
    _, _, ids = bad_dataset
    cfg = data_config()
    cfg.max_boxes = 5
    split = sources.RecordSplit(prepared)
    ds, num_batches = pipeline.eval_dataset(
        split, shard_index=0, num_shards=1, batch_size=4, image_size=(32, 32), cfg=cfg
    )
    batches = list(ds.as_numpy_iterator())
    assert num_batches == len(batches) == 3
    by_id = {}
    for b in batches:
        for i in np.flatnonzero(b["example_mask"]):
            by_id[int(b["image_id"][i])] = {k: v[i] for k, v in b.items()}
    assert len(by_id) == 9 and sum(int(b["example_mask"].sum()) for b in batches) == 9
    assert by_id[ids["many"]]["gt_mask"].sum() == 5
    assert by_id[ids["good"]]["gt_is_crowd"][:3].tolist() == [False, False, True]
    assert by_id[ids["empty"]]["gt_mask"].sum() == 0
    train = pipeline.train_dataset(
        split, shard_index=0, num_shards=1, batch_size=9, image_size=(32, 32), cfg=cfg, seed=0
    )
    seen_good = 0
    for batch in train.take(6).as_numpy_iterator():  # epochs mix in the shuffle buffer
        assert batch["gt_mask"].sum(1).max() <= 5
        for i in np.flatnonzero(batch["image_id"] == ids["good"]):
            assert batch["gt_mask"][i].sum() <= 2  # the crowd box is never a training target
            seen_good += 1
    assert seen_good


def test_unusable_data_is_reported_not_crashed(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    report = validate.validate_dataset(tmp_path / "bad.json", tmp_path)
    assert not report.usable and "not valid JSON" in report.fatal[0]
    (tmp_path / "only_corrupt.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
                "categories": [{"id": 1, "name": "a"}],
            }
        )
    )
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    report = validate.validate_dataset(tmp_path / "only_corrupt.json", tmp_path)
    assert not report.usable and report.counts["corrupt_image"] == 1
    with pytest.raises(validate.DataError, match="not usable"):
        coco_source.prepare(
            tmp_path / "only_corrupt.json", tmp_path, tmp_path / "out", progress=False
        )
    assert not (tmp_path / "out").exists()


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


def test_prepared_folder_from_other_data_is_refused(prepared, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(validate.DataError, match="different annotations"):
        coco_source.prepare(other, tmp_path, prepared.directory, progress=False)


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
