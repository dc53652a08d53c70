"""Picture checks: a figure file is a valid PNG with visible content; a box outline is drawn on
exactly the pixels of the box (computed here independently of ``visualization.draw``)."""

import pathlib

import numpy as np
from PIL import Image

LINE_WIDTH = 2  # visualization.draw.LINE_WIDTH, restated: the test must not trust the library


def assert_png_with_content(path, min_size: int = 32, min_colors: int = 8) -> np.ndarray:
    """``path`` is a PNG that decodes, is at least ``min_size`` pixels each way, and is not blank
    (several colours, not one flat field); returns its RGB pixels."""
    path = pathlib.Path(path)
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()  # structure and CRCs
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    h, w = pixels.shape[:2]
    assert h >= min_size and w >= min_size, f"{path}: {w}x{h}"
    packed = pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
    colors = np.unique(packed)
    assert len(colors) >= min_colors, f"{path} is blank ({len(colors)} colours)"
    assert pixels.std() > 1.0, f"{path} is nearly flat"
    return pixels


def outline_pixels(box, height, width):
    """The pixel rectangle of a normalized box, computed here independently of the library."""
    ymin, xmin, ymax, xmax = box
    return (
        round(xmin * width),
        round(ymin * height),
        round(xmax * width) - 1,
        round(ymax * height) - 1,
    )


def assert_outlined(image, box, color, min_fraction=0.9):
    """Most pixels of the box's left, right and bottom edges (the label may cover the top edge)
    are ``color``; the pixels just inside the 2-pixel line are not."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = outline_pixels(box, h, w)
    rows = slice(y0 + 2, y1 - 1)
    edges = [image[rows, x0], image[rows, x1], image[y1, x0 : x1 + 1]]
    for edge in edges:
        hit = np.all(edge == color, axis=-1).mean()
        assert hit >= min_fraction, (box, x0, y0, x1, y1, hit)
    inside = image[(y0 + y1) // 2, x0 + LINE_WIDTH]
    assert not np.array_equal(inside, color), "the outline is thicker or misplaced"
    outside = image[(y0 + y1) // 2, x0 - 1] if x0 > 0 else None
    if outside is not None:
        assert not np.array_equal(outside, color), "the outline starts left of the box"
