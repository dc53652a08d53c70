"""Synthetic data, global batches, determinism, resume, evaluation input."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobiledet_jax import data
from mobiledet_jax.data import synthetic


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = data.data_config()
    c.cache_dir = str(tmp_path_factory.mktemp("cache"))
    c.synthetic.num_train, c.synthetic.num_val = 48, 20
    c.num_shards = 4
    c.shuffle_buffer = 64
    return c


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def _batch_size():
    return 2 * jax.device_count()


def _numpy(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def test_synthetic_is_deterministic_with_exact_boxes(tmp_path):
    a = synthetic.generate_split(tmp_path / "a", 12, seed=3, split_id=0)
    b = synthetic.generate_split(tmp_path / "b", 12, seed=3, split_id=0)
    assert a.annotations.read_bytes() == b.annotations.read_bytes()
    for f in a.images.iterdir():
        assert f.read_bytes() == (b.images / f.name).read_bytes()
    coco = json.loads(a.annotations.read_text())
    per_image = np.bincount([x["image_id"] for x in coco["annotations"]])
    assert per_image[1:].min() >= 1 and per_image.max() <= 4
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        height, width = sizes[ann["image_id"]]
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        assert min(w, h) >= 0.15 * min(height, width)
        if ann["category_id"] == 2:  # squares fill their box: uniform colour up to the edges
            path = a.images / f"{ann['image_id']:06d}.jpg"
            patch = np.asarray(Image.open(path), np.float32)[y + 2 : y + h - 2, x + 2 : x + w - 2]
            assert patch.std(axis=(0, 1)).max() < 12


def test_train_batches(cfg, mesh):
    it = data.build_train_iterator(cfg, _batch_size(), (320, 288), mesh, seed=0)
    assert it.info.category_names == synthetic.CLASS_NAMES and it.info.num_classes == 4
    batch = next(it)
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    b = _numpy(batch)
    assert b["image"].shape == (_batch_size(), 320, 288, 3) and b["image"].dtype == np.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["gt_boxes"].shape == (_batch_size(), 100, 4)
    assert b["gt_classes"].dtype == np.int32 and b["gt_mask"].dtype == bool
    boxes = b["gt_boxes"][b["gt_mask"]]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert set(b["gt_classes"][b["gt_mask"]]) <= {0, 1, 2, 3}
    assert (b["gt_boxes"][~b["gt_mask"]] == 0).all()


def test_same_seed_same_batches(cfg, mesh):
    a = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=5)
    b = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=5)
    c = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=6)
    for _ in range(3):
        x, y, z = _numpy(next(a)), _numpy(next(b)), _numpy(next(c))
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(x["image"], z["image"])


def test_resume_yields_the_next_batch(cfg, mesh, tmp_path):
    a = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=1)
    for _ in range(7):  # past one epoch of a data shard's files
        next(a)
    a.save(tmp_path / "input")
    expected = [_numpy(next(a)) for _ in range(3)]
    b = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=1)
    b.restore(tmp_path / "input")
    assert b.step == 7
    for want in expected:
        got = _numpy(next(b))
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other = data.build_train_iterator(cfg, _batch_size(), 64, mesh, seed=2)
    with pytest.raises(ValueError, match="saved with"):
        other.restore(tmp_path / "input")


def test_eval_sees_each_image_once_with_padding(cfg, mesh):
    global_batch = 8 * jax.device_count()
    ev = data.build_eval_iterator(cfg, global_batch, 320, mesh)
    gt = ev.info.ground_truth()
    assert len(ev) == -(-20 // global_batch)
    ids, sizes = [], {}
    for _ in range(2):  # an evaluation iterable can be run again
        ids = []
        for batch in ev:
            b = _numpy(batch)
            real = b["example_mask"]
            ids += b["image_id"][real].tolist()
            assert (b["image_id"][~real] == -1).all() and not b["gt_mask"][~real].any()
            pairs = zip(b["image_id"], b["original_size"], strict=True)
            sizes.update({int(i): tuple(s) for i, s in pairs})
            last = b
        assert sorted(ids) == sorted(i["id"] for i in gt["images"])
    for image in gt["images"]:
        assert sizes[image["id"]] == (image["height"], image["width"])
    # the eval image is the JPEG decoded, resized with TF1 bilinear and scaled to [-1, 1]
    row = int(np.flatnonzero(last["example_mask"])[0])
    name = next(i["file_name"] for i in gt["images"] if i["id"] == last["image_id"][row])
    coco_dir = synthetic.ensure_synthetic(cfg.cache_dir, 48, 20)["val"].images
    pixels = tf.io.decode_jpeg(tf.io.read_file(str(coco_dir / name)), channels=3)
    resized = tf.compat.v1.image.resize_bilinear(pixels[None], (320, 320))[0].numpy()
    np.testing.assert_allclose(last["image"][row], resized * 2 / 255 - 1, atol=1e-5)


def test_eval_boxes_match_ground_truth(cfg, mesh):
    ev = data.build_eval_iterator(cfg, 4 * jax.device_count(), 320, mesh)
    gt = ev.info.ground_truth()
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    by_image = {}
    for a in gt["annotations"]:
        h, w = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            ([y / h, x / w, (y + bh) / h, (x + bw) / w], a["category_id"])
        )
    for batch in ev:
        b = _numpy(batch)
        for i in np.flatnonzero(b["example_mask"]):
            boxes, categories = zip(*by_image[int(b["image_id"][i])], strict=True)
            m = b["gt_mask"][i]
            np.testing.assert_allclose(b["gt_boxes"][i][m], boxes, atol=1e-6)
            mapped = [ev.info.category_ids[c] for c in b["gt_classes"][i][m]]
            assert mapped == list(categories)


def test_bad_batch_and_mesh_arguments(cfg, mesh):
    with pytest.raises(ValueError, match="positive"):
        data.build_train_iterator(cfg, 0, 64, mesh, seed=0)
    if jax.device_count() > 1:
        with pytest.raises(ValueError, match="not divisible"):
            data.build_train_iterator(cfg, jax.device_count() + 1, 64, mesh, seed=0)
    with pytest.raises(ValueError, match="no axis"):
        data.build_train_iterator(cfg, 8, 64, mesh, seed=0, data_axis="batch")
    bad = data.data_config()
    bad.source = "nope"
    with pytest.raises(ValueError, match="unknown data.source"):
        data.build_train_iterator(bad, 8, 64, mesh, seed=0)
