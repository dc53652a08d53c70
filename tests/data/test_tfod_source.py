"""``data.source='tfod_tfrecord'``: TF OD API records and label map built in code, broken records
and a corrupt file included, read through the COCO checks into batches that hold their boxes."""

import jax
import numpy as np
import pytest

from mobiledet_jax import data
from mobiledet_jax.data import problems, sources, tfod_source
from tests.helpers import user_datasets


@pytest.fixture(scope="module")
def tfod(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfod")
    return user_datasets.write_tfod(base / "records", base / "cache")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def test_label_map_as_the_api_reads_it(tmp_path):
    path = tmp_path / "label_map.pbtxt"
    path.write_text(user_datasets.LABEL_MAP)
    assert tfod_source.read_label_map(str(path)) == [
        (1, "/m/01yrx", "cat"),
        (2, "dog", ""),
        (5, "bird", ""),
    ]
    path.write_text('item { id: 0 name: \'background\' }\nitem { id: 3 name: "a \\"b\\"" }')
    assert tfod_source.read_label_map(str(path)) == [(3, 'a "b"', "")]
    for text, match in (
        ("item { id: x }", "not a StringIntLabelMap"),
        ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "repeated"),
        ("# nothing\n", "no items"),
    ):
        path.write_text(text)
        with pytest.raises(problems.DataError, match=match):
            tfod_source.read_label_map(str(path))
    with pytest.raises(problems.DataError, match="not found"):
        tfod_source.read_label_map(str(tmp_path / "missing.pbtxt"))


def test_every_bad_item_is_counted(tfod):
    cfg, _, counts = tfod
    report = sources.open_split(cfg, "train").info.report
    assert report["counts"] == counts
    assert report["num_images"] == 8 and report["num_usable_images"] == 5
    assert report["examples"]["corrupt_record_file"][0].endswith("00002.tfrecord after record 1")


def test_eval_batches_hold_the_boxes(tfod, mesh):
    cfg, expected, _ = tfod
    for split in ("train", "val"):
        evaluation = data.build_eval_iterator(cfg, 2, 32, mesh, split=split)
        assert evaluation.info.category_ids == (1, 2, 5)
        assert evaluation.info.category_names == ("cat", "dog", "bird")  # display name first
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in evaluation]
        got = user_datasets.batch_boxes(batches, evaluation.info.ground_truth())
        user_datasets.assert_same_boxes(got, expected[split])


def test_records_are_read_once(tfod, monkeypatch):
    cfg, _, _ = tfod
    first = sources.open_split(cfg, "val")
    assert not any(first.prepared.directory.glob("scratch"))  # extracted images: deleted

    def fail(*args):
        raise AssertionError("the records were read again")

    monkeypatch.setattr(tfod_source, "read_split", fail)
    assert sources.open_split(cfg, "val").prepared.directory == first.prepared.directory


def test_missing_pattern_and_no_files(tfod, tmp_path):
    cfg, _, _ = tfod
    c = cfg.copy_and_resolve_references()
    c.tfod_tfrecord.val_pattern = ""
    with pytest.raises(problems.DataError, match="val_pattern"):
        sources.open_split(c, "val")
    c.tfod_tfrecord.val_pattern = str(tmp_path / "none-*.tfrecord")
    with pytest.raises(problems.DataError, match="no TFRecord files"):
        sources.open_split(c, "val")
