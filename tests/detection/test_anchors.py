"""Anchors against the TF1 reference and hand-computed values."""

import math

import numpy as np
import pytest

from mobiledet_jax.detection import anchors


def test_matches_tf1_reference(tf1_reference_dir):
    ref = np.load(tf1_reference_dir / "edgetpu" / "outputs.npz")["anchors"]
    got = anchors.anchors_for_image(320, 320)
    assert got.shape == (2034, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_feature_map_sizes():
    assert anchors.feature_map_sizes(320, 320) == (
        (20, 20),
        (10, 10),
        (5, 5),
        (3, 3),
        (2, 2),
        (1, 1),
    )
    # TF SAME convs: ceil divisions at every stride-2 step.
    assert anchors.feature_map_sizes(300, 512) == (
        (19, 32),
        (10, 16),
        (5, 8),
        (3, 4),
        (2, 2),
        (1, 1),
    )
    assert anchors.feature_map_sizes(640, 640)[0] == (40, 40)
    assert anchors.num_anchors(320, 320) == 2034


def test_layer_specs():
    specs = anchors.layer_box_specs()
    assert [len(s) for s in specs] == list(anchors.anchors_per_location())
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    interpolated = [s[-1][0] for s in specs[1:]]
    np.testing.assert_allclose(interpolated, [0.4183, 0.5701, 0.7211, 0.8718, 0.9747], atol=1e-4)


def test_order_and_geometry_hand_computed():
    # Map 1 of a 320 input (10x10, 6 types), location (y=2, x=7), type 1 = (0.35, ar 2.0).
    a = anchors.anchors_for_image(320, 320)
    index = 1200 + (2 * 10 + 7) * 6 + 1
    yc, xc = 2.5 / 10, 7.5 / 10
    h, w = 0.35 / math.sqrt(2.0), 0.35 * math.sqrt(2.0)
    np.testing.assert_allclose(
        a[index], [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], atol=1e-6
    )


def test_non_square_input():
    h, w = 320, 640
    sizes = anchors.feature_map_sizes(h, w)
    a = anchors.anchors_for_image(h, w)
    assert a.shape == (anchors.num_anchors(h, w), 4)
    # Map 0 is 20 x 40; first anchor type is (0.1, ar 1): square in pixels.
    assert sizes[0] == (20, 40)
    first = a[0]
    assert first[2] - first[0] == pytest.approx(0.1, abs=1e-6)
    assert first[3] - first[1] == pytest.approx(0.05, abs=1e-6)
    assert (first[0] + first[2]) / 2 == pytest.approx(0.5 / 20, abs=1e-6)
    assert (first[1] + first[3]) / 2 == pytest.approx(0.5 / 40, abs=1e-6)


def test_cached_anchors_are_read_only():
    a = anchors.anchors_for_image(320, 320)
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    assert anchors.anchors_jnp(320, 320).shape == (2034, 4)
