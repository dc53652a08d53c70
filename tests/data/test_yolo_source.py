"""``data.source='yolo'``: an Ultralytics dataset built in code, broken files included, read
through the COCO checks into batches that hold exactly its labels."""

import jax
import numpy as np
import pytest

from mobiledet_jax import data
from mobiledet_jax.data import problems, sources, yolo_source
from tests.helpers import user_datasets


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    base = tmp_path_factory.mktemp("yolo")
    return user_datasets.write_yolo(base / "data", base / "cache")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def _numpy(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def test_every_bad_item_is_counted(yolo):
    cfg, _, counts = yolo
    report = sources.open_split(cfg, "train").info.report
    assert report["counts"] == counts
    assert report["num_images"] == 8 and report["num_usable_images"] == 5
    assert report["usable"] and "yolo" in report["annotations"]


def test_eval_batches_hold_the_labels(yolo, mesh):
    cfg, expected, _ = yolo
    for split in ("train", "val"):
        evaluation = data.build_eval_iterator(cfg, 2, 32, mesh, split=split)
        assert evaluation.info.category_names == ("cat", "dog", "bird")
        assert evaluation.info.category_ids == (1, 2, 3)  # YOLO class i = category i + 1
        batches = [_numpy(b) for b in evaluation]
        got = user_datasets.batch_boxes(batches, evaluation.info.ground_truth())
        user_datasets.assert_same_boxes(got, expected[split])


def test_train_batches_without_augmentation(yolo, mesh):
    cfg, expected, _ = yolo
    train = data.build_train_iterator(cfg, 5, 32, mesh, seed=0)
    stem_of = {
        i["id"]: i["file_name"].rsplit("/", 1)[-1].split(".")[0]
        for i in train.info.ground_truth()["images"]
    }
    batch = _numpy(next(train))
    assert batch["image"].shape == (5, 32, 32, 3)
    for row in range(5):
        want = expected["train"][stem_of[int(batch["image_id"][row])]]
        mask = batch["gt_mask"][row]
        assert batch["gt_classes"][row][mask].tolist() == [c for c, _, _ in want]
        np.testing.assert_allclose(
            batch["gt_boxes"][row][mask], np.reshape([b for _, b, _ in want], (-1, 4)), atol=1e-5
        )


def test_prepared_once_and_again_when_a_label_changes(tmp_path):
    cfg, _, _ = user_datasets.write_yolo(tmp_path / "data", tmp_path / "cache")
    first = sources.open_split(cfg, "val").prepared.directory
    assert sources.open_split(cfg, "val").prepared.directory == first
    (tmp_path / "data/labels/val/v1.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n")
    second = sources.open_split(cfg, "val")
    assert second.prepared.directory != first
    assert second.info.report["num_training_boxes"] == 3


def test_yaml_forms(tmp_path):
    """names as a list, Roboflow's ``../train/images``, a txt list of images, and bad yamls."""
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/labels").mkdir(parents=True)
    for name in ("x.jpg", "y.JPG", "notes.txt"):
        (tmp_path / "train/images" / name).write_bytes(user_datasets.jpeg())
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/val.txt").write_text("./../train/images/x.jpg\n\n../train/images/x.jpg\n")
    (tmp_path / "data.yaml").write_text(
        "names: [a, b]\nnc: 2\ntrain: ../train/images\nvalidation: lists/val.txt\n"
    )
    spec = yolo_source.read_yaml(tmp_path / "data.yaml")
    assert spec["names"] == ("a", "b") and spec["root"] == tmp_path
    images, repeated = yolo_source.image_files(spec, "train")
    assert [p.name for p in images] == ["x.jpg", "y.JPG"] and repeated == 0
    images, repeated = yolo_source.image_files(spec, "val")
    assert images == [tmp_path / "train/images/x.jpg"] and repeated == 1
    label = yolo_source.label_file(tmp_path / "train/images/x.jpg")
    assert label == tmp_path / "train/labels/x.txt"
    for text, match in (
        ("names: [a]\nnc: 2\ntrain: x\n", "nc=2"),
        ("names: {0: a, 2: b}\ntrain: x\n", "indices"),
        ("train: x\n", "names"),
        ("names: [a\n", "not valid YAML"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(problems.DataError, match=match):
            yolo_source.read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "no_val.yaml").write_text("names: [a]\ntrain: train/images\n")
    with pytest.raises(problems.DataError, match="no 'val'"):
        yolo_source.image_files(yolo_source.read_yaml(tmp_path / "no_val.yaml"), "val")
