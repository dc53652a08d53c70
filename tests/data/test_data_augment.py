"""Augmentation: boxes stay on their pixels, and the crop keeps exactly the boxes the rule keeps."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobiledet_jax.data import augment, data_config, pipeline

H, W = 480, 640
RED_BOX_PX = (100, 150, 260, 400)  # y0, x0, y1, x1 (exclusive ends)


def _jpeg_with_red_box() -> bytes:
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[..., 2] = 255  # blue background
    y0, x0, y1, x1 = RED_BOX_PX
    pixels[y0:y1, x0:x1] = (255, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def _red_box() -> np.ndarray:
    y0, x0, y1, x1 = RED_BOX_PX
    return np.array([[y0 / H, x0 / W, y1 / H, x1 / W]], np.float32)


def _sample_many(n, boxes, **flags):
    """augment.sample for seeds 0..n-1, run inside tf.data (graph mode, fast)."""
    boxes = tf.constant(boxes, tf.float32)

    def fn(i):
        return augment.sample(tf.stack([i, 7]), tf.constant(H), tf.constant(W), boxes, **flags)

    return list(tf.data.Dataset.range(n).map(fn).as_numpy_iterator())


def _check_red_inside_blue_outside(image, box, margin=3, red_of=lambda p: p[..., 0] > 200):
    """Pixels inside ``box`` (normalized, in ``image``'s frame) are red, a ring outside is not."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = box[0] * h, box[1] * w, box[2] * h, box[3] * w
    top, left = int(np.ceil(y0)) + margin, int(np.ceil(x0)) + margin
    inner = image[top : int(y1) - margin, left : int(x1) - margin]
    assert inner.size and red_of(inner).all(), "pixels inside the box are not all red"
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]

    def window(grow):
        inside_rows = (rows >= y0 - grow) & (rows < y1 + grow)
        return inside_rows & (cols >= x0 - grow) & (cols < x1 + grow)

    grown, shrunk = window(2 * margin), window(margin)
    ring = image[grown & ~shrunk]
    assert not red_of(ring).any(), "red pixels outside the box: the box is too small or shifted"


def test_box_stays_on_its_pixels_after_crop_and_flip():
    jpeg = _jpeg_with_red_box()
    kinds = set()
    for aug in _sample_many(60, _red_box()):
        tf_aug = {k: tf.constant(v) for k, v in aug.items()}
        image = augment.decode_crop_flip(tf.constant(jpeg), tf_aug).numpy()
        assert image.shape[:2] == tuple(aug["crop"][2:])
        if aug["keep"][0]:
            _check_red_inside_blue_outside(image, aug["boxes"][0])
            kinds.add((bool(aug["flip"]), bool(aug["cropped"])))
    assert kinds == {(False, False), (False, True), (True, False), (True, True)}


def test_training_example_pixels_match_boxes_after_resize():
    """The full training preprocessing (flip, crop, resize to 320x320, scale to [-1, 1])."""
    cfg = data_config()
    example = {
        "image/encoded": tf.constant(_jpeg_with_red_box()),
        "image/id": tf.constant(1, tf.int64),
        "image/height": tf.constant(H),
        "image/width": tf.constant(W),
        "boxes": tf.constant(_red_box()),
        "classes": tf.constant([3]),
        "is_crowd": tf.constant([False]),
    }
    seen = 0
    for seed in range(30):
        out = pipeline.preprocess_train(example, tf.constant([seed, 0]), (320, 320), cfg)
        image = out["image"].numpy()
        assert image.shape == (320, 320, 3) and -1.0 <= image.min() and image.max() <= 1.0
        if out["gt_mask"][0]:
            assert out["gt_classes"][0] == 3 and out["gt_mask"].numpy().sum() == 1
            red = lambda p: (p[..., 0] > 0.6) & (p[..., 2] < -0.6)
            _check_red_inside_blue_outside(image, out["gt_boxes"][0].numpy(), red_of=red)
            seen += 1
    assert seen >= 10


def _oracle(boxes, window, thresh):
    """Independent numpy version of the TF OD API crop rule (prune outside, IoA >= thresh)."""
    boxes = boxes.astype(np.float32)
    wy0, wx0, wy1, wx1 = window.astype(np.float32)
    ymin, xmin, ymax, xmax = boxes.T
    outside = (ymin >= wy1) | (xmin >= wx1) | (ymax <= wy0) | (xmax <= wx0)
    inter = np.clip(np.minimum(ymax, wy1) - np.maximum(ymin, wy0), 0, None) * np.clip(
        np.minimum(xmax, wx1) - np.maximum(xmin, wx0), 0, None
    )
    ioa = inter / ((ymax - ymin) * (xmax - xmin))
    keep = ~outside & (ioa >= np.float32(thresh))
    kept = (boxes[keep] - [wy0, wx0, wy0, wx0]) / [wy1 - wy0, wx1 - wx0, wy1 - wy0, wx1 - wx0]
    return keep, np.clip(kept, 0, 1)


@pytest.mark.parametrize("trial", range(4))
def test_crop_keeps_exactly_the_boxes_the_overlap_rule_keeps(trial):
    rng = np.random.default_rng(trial)
    centre = rng.uniform(0.1, 0.9, (12, 2))
    size = rng.uniform(0.05, 0.5, (12, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1)
    boxes = boxes[:, [0, 1, 2, 3]].astype(np.float32)
    checked = 0
    for aug in _sample_many(150, boxes):
        flipped = boxes.copy()
        if aug["flip"]:
            flipped[:, 1], flipped[:, 3] = 1 - boxes[:, 3], 1 - boxes[:, 1]
        y, x, h, w = aug["crop"]
        if aug["flip"]:
            x = W - x - w  # the window in the flipped image
        window = np.array([y / H, x / W, (y + h) / H, (x + w) / W])
        if not aug["cropped"]:
            assert (aug["keep"]).all() and np.allclose(aug["boxes"], flipped)
            continue
        keep, kept = _oracle(flipped, window, aug["overlap_thresh"])
        np.testing.assert_array_equal(aug["keep"], keep)
        np.testing.assert_allclose(aug["boxes"], kept, atol=1e-5)
        checked += 1
        # sample_distorted_bounding_box constraints: area, aspect ratio, min_object_covered.
        assert 0.1 - 0.01 <= h * w / (H * W) <= 1.0
        assert 0.5 - 0.02 <= w / h <= 2.0 + 0.02
        if h * w < H * W:  # not the fall-back whole image
            ymin, xmin, ymax, xmax = np.clip(flipped, 0, 1).T
            ih = np.clip(np.minimum(ymax, window[2]) - np.maximum(ymin, window[0]), 0, None)
            iw = np.clip(np.minimum(xmax, window[3]) - np.maximum(xmin, window[1]), 0, None)
            covered = ih * iw / ((ymax - ymin) * (xmax - xmin))
            assert covered.max() >= aug["overlap_thresh"] - 0.02
    assert checked > 80


def test_option_choice_keep_original_and_flip_frequencies():
    augs = _sample_many(2000, _red_box())
    cropped = np.array([a["cropped"] for a in augs])
    flips = np.array([a["flip"] for a in augs])
    thresholds = np.array([a["overlap_thresh"] for a in augs])[cropped]
    assert abs((~cropped).mean() - 0.15) < 0.03
    assert abs(flips.mean() - 0.5) < 0.04
    values, counts = np.unique(np.round(thresholds, 2), return_counts=True)
    np.testing.assert_allclose(values, augment.MIN_OBJECT_COVERED)
    assert counts.min() > 0.7 * counts.mean()


def test_same_seed_same_augmentation_and_switches():
    a = _sample_many(20, _red_box())
    b = _sample_many(20, _red_box())
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    off = _sample_many(20, _red_box(), horizontal_flip=False, ssd_random_crop=False)
    for aug in off:
        assert not aug["flip"] and not aug["cropped"]
        np.testing.assert_array_equal(aug["crop"], [0, 0, H, W])


def test_boxes_without_any_box_use_the_whole_image_distribution():
    augs = _sample_many(50, np.zeros((0, 4), np.float32))
    assert all(a["boxes"].shape == (0, 4) for a in augs)
    assert any(a["cropped"] for a in augs)
