"""Boxes drawn where they are (``visualization.draw``), a deterministic palette, and grids."""

import numpy as np
import pytest

from mobiledet_jax.visualization import draw, mosaic
from tests.helpers.png_checks import assert_outlined, outline_pixels

GRAY = 128


def test_palette_is_deterministic_and_distinct():
    colors = [draw.class_color(i) for i in range(90)]
    assert colors == [draw.class_color(i) for i in range(90)]
    assert len(set(colors)) == 90
    assert draw.class_color_float(3) == tuple(c / 255 for c in draw.class_color(3))


def test_boxes_land_on_their_pixels():
    image = np.full((60, 80, 3), GRAY, np.uint8)
    boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.55, 0.5, 0.95, 0.9]])
    out = draw.draw_boxes(image, boxes, [0, 3], ["a", "b", "c", "d"])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, np.full_like(image, GRAY)), "the input image was changed"
    for box, c in zip(boxes, [0, 3], strict=True):
        assert_outlined(out, box, draw.class_color(c))
    assert draw.box_to_pixels(boxes[0], 60, 80) == outline_pixels(boxes[0], 60, 80)
    # a whole-image box outlines the border; boxes outside are clipped
    full = draw.draw_boxes(image, [[0, 0, 1, 1]], [1], labels=False)
    assert np.all(full[:, 0] == draw.class_color(1)) and np.all(full[-1, :] == draw.class_color(1))
    assert draw.box_to_pixels([-0.5, -0.5, 2, 2], 60, 80) == (0, 0, 79, 59)


def test_labels_and_scores_are_drawn():
    image = np.full((64, 64, 3), GRAY, np.uint8)
    plain = draw.draw_boxes(image, [[0.5, 0.2, 0.9, 0.8]], [2], labels=False)
    named = draw.draw_boxes(image, [[0.5, 0.2, 0.9, 0.8]], [2], ["x", "y", "zebra"], scores=[0.5])
    above = named[:32]  # the label strip sits above the box
    assert (above != plain[:32]).any()
    with pytest.raises(ValueError, match="uint8"):
        draw.draw_boxes(image.astype(np.float32), [], [])


def test_grid_places_tiles_and_upscale_repeats_pixels():
    tiles = [np.full((10, 12, 3), v, np.uint8) for v in (10, 20, 30)]
    out = mosaic.grid(tiles, columns=2)
    assert out.shape == (2 * 10 + mosaic.GAP, 2 * 12 + mosaic.GAP, 3)
    for i, v in enumerate((10, 20, 30)):
        y, x = mosaic.tile_origin(i, 2, (10, 12))
        assert np.all(out[y : y + 10, x : x + 12] == v)
    big, factor = draw.upscale(tiles[0], 32)
    assert factor == 4 and big.shape == (40, 48, 3)
    assert draw.upscale(tiles[0], 5)[1] == 1
    assert draw.to_uint8(np.array([[[-3.0, 127.6, 300.0]]])).tolist() == [[[0, 128, 255]]]
