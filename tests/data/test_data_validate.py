"""Bad data is repaired, skipped or truncated, and counted; built from real files on disk."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mobiledet_jax.data import coco_source, data_config, pipeline, records, sources, validate
from tests.helpers import bad_coco
from tests.helpers.bad_coco import GOOD_BOX


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    return bad_coco.write_bad_dataset(tmp_path_factory.mktemp("bad"))


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


def test_prepared_folder_from_other_data_is_refused(prepared, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(validate.DataError, match="different annotations"):
        coco_source.prepare(other, tmp_path, prepared.directory, progress=False)
