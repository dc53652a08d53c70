"""Grids of images and PNG files.

``grid`` lays out uint8 ``[H, W, 3]`` tiles row by row with a white gap between them; tiles of
different sizes are placed top-left in cells of the largest size, so no tile is ever rescaled
(a mosaic shows images at the size the model receives them).
"""

import io
import os

import numpy as np
from etils import epath
from PIL import Image

GAP = 4  # pixels between tiles
BACKGROUND = 255


def grid(images, columns: int, gap: int = GAP) -> np.ndarray:
    """Tiles ``images`` (a non-empty sequence of uint8 ``[H, W, 3]``) ``columns`` per row."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("grid of no images")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    out = np.full(
        (rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3),
        BACKGROUND,
        np.uint8,
    )
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def tile_origin(index: int, columns: int, tile_shape, gap: int = GAP) -> tuple[int, int]:
    """``(y, x)`` of tile ``index``'s top-left pixel in a ``grid`` of equal ``tile_shape`` tiles."""
    r, c = divmod(index, columns)
    return r * (tile_shape[0] + gap), c * (tile_shape[1] + gap)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = GAP) -> np.ndarray:
    """Two images in one row (e.g. ground truth beside detections)."""
    return grid([left, right], columns=2, gap=gap)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` array encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: np.ndarray, path: str | os.PathLike) -> epath.Path:
    """Writes a uint8 ``[H, W, 3]`` array as a PNG (parent folders created; any ``epath``, e.g. a
    ``gs://`` workdir)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))
    return path
