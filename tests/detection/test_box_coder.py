"""Faster R-CNN box coder: hand-computed codes, round trips and the TF1 reference decode."""

import jax
import numpy as np

from mobiledet_jax.detection import box_coder


def _random_boxes(rng, n):
    yx = rng.uniform(-0.2, 0.9, (n, 2))
    hw = rng.uniform(0.01, 0.8, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


def test_hand_computed_encode():
    anchor = np.array([[0.2, 0.2, 0.6, 0.4]], np.float32)  # centre (0.4, 0.3), size 0.4 x 0.2
    box = np.array([[0.3, 0.1, 0.5, 0.5]], np.float32)  # centre (0.4, 0.3), size 0.2 x 0.4
    np.testing.assert_allclose(
        box_coder.encode(box, anchor), [[0.0, 0.0, 5 * np.log(0.5), 5 * np.log(2.0)]], atol=1e-5
    )
    shifted = np.array([[0.3, 0.2, 0.7, 0.4]], np.float32)  # centre y + 0.1 = 0.25 * ha
    np.testing.assert_allclose(box_coder.encode(shifted, anchor), [[2.5, 0, 0, 0]], atol=1e-5)


def test_round_trip():
    rng = np.random.default_rng(0)
    boxes, anchors = _random_boxes(rng, 500), _random_boxes(rng, 500)
    decoded = jax.jit(lambda b, a: box_coder.decode(box_coder.encode(b, a), a))(boxes, anchors)
    np.testing.assert_allclose(decoded, boxes, atol=2e-6)
    codes = rng.normal(0, 1, (500, 4)).astype(np.float32)
    np.testing.assert_allclose(
        box_coder.encode(box_coder.decode(codes, anchors), anchors), codes, atol=2e-4
    )


def test_broadcasts_over_batch():
    rng = np.random.default_rng(1)
    anchors = _random_boxes(rng, 7)
    codes = rng.normal(0, 1, (3, 7, 4)).astype(np.float32)
    out = np.asarray(box_coder.decode(codes, anchors[None]))
    np.testing.assert_allclose(out[1], box_coder.decode(codes[1], anchors), atol=0)


def test_decode_matches_tf1_reference(tf1_reference_dir):
    ref = np.load(tf1_reference_dir / "edgetpu" / "outputs.npz")
    boxes = box_coder.decode(ref["box_encodings"][0], ref["anchors"])
    np.testing.assert_allclose(boxes, ref["raw_detection_boxes"][0], atol=1e-6)
