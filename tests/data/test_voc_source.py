"""``data.source='voc'``: a Pascal VOC folder built in code, broken files included, read through
the COCO checks into batches that hold exactly its boxes."""

import jax
import numpy as np
import pytest

from mobiledet_jax import data
from mobiledet_jax.data import problems, sources, voc_source
from tests.helpers import user_datasets


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    base = tmp_path_factory.mktemp("voc")
    return user_datasets.write_voc(base / "VOC2012", base / "cache")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def test_every_bad_item_is_counted(voc):
    cfg, _, counts = voc
    report = sources.open_split(cfg, "train").info.report
    assert report["counts"] == counts
    assert report["num_images"] == 6 and report["num_usable_images"] == 3
    assert report["num_training_boxes"] == 3 and report["num_eval_boxes"] == 4


def test_eval_batches_hold_the_boxes(voc, mesh):
    cfg, expected, _ = voc
    for split in ("train", "val"):
        evaluation = data.build_eval_iterator(cfg, 2, 32, mesh, split=split)
        assert evaluation.info.category_names == voc_source.VOC_CLASSES  # names all among them
        assert evaluation.info.category_ids == tuple(range(1, 21))
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in evaluation]
        got = user_datasets.batch_boxes(batches, evaluation.info.ground_truth())
        user_datasets.assert_same_boxes(got, expected[split])


def test_difficult_is_not_a_training_target_unless_asked(tmp_path, mesh):
    cfg, _, _ = user_datasets.write_voc(tmp_path / "VOC", tmp_path / "cache")
    (tmp_path / "VOC/ImageSets/Main/t1.txt").write_text("t1\n")  # a dog and a difficult cat
    cfg.voc.train_set = "t1"
    for as_crowd, boxes in ((True, 1), (False, 2)):
        cfg.difficult_as_crowd = as_crowd
        train = data.build_train_iterator(cfg, 1, 32, mesh, seed=0)
        assert int(np.asarray(next(train)["gt_mask"]).sum()) == boxes


def test_classes_beyond_voc_and_configured_names(tmp_path):
    cfg, _, _ = user_datasets.write_voc(tmp_path / "VOC", tmp_path / "cache")
    root = tmp_path / "VOC"
    (root / "Annotations/w3.xml").write_text(
        (root / "Annotations/w1.xml").read_text().replace("person", "widget")
    )
    (root / "JPEGImages/w3.jpg").write_bytes(user_datasets.jpeg())
    (root / "ImageSets/Main/val.txt").write_text("w1\nw2\nw3\n")
    split = voc_source.read_split(cfg, "val")  # not all VOC names: the sorted names found
    assert [c["name"] for c in split.coco["categories"]] == ["cat", "dog", "person", "widget"]
    cfg.voc.class_names = ("dog", "person")
    split = voc_source.read_split(cfg, "val")
    assert [c["name"] for c in split.coco["categories"]] == ["dog", "person"]
    assert split.report.counts["unknown_category"] == 1
    assert split.report.examples["unknown_category"] == ["widget"]


def test_not_a_voc_folder(tmp_path):
    cfg = data.data_config()
    cfg.voc.root = str(tmp_path)
    with pytest.raises(problems.DataError, match="no Annotations"):
        voc_source.read_split(cfg, "train")
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(problems.DataError, match="image set not found"):
        voc_source.read_split(cfg, "train")
