"""Images as the model takes them: decoded to RGB, resized as the input pipeline resizes, uint8.

``model_pixels(image, size)`` is the preprocessing of every image that reaches an exported file or
a checkpoint outside the data pipeline (``predict``, ``Detector``, the int8 calibration images of
``export --calibration_images``): RGB, bilinear resize to the model's input size exactly as
``data.pipeline.resize_and_scale`` does it (TF ``ResizeBilinear``, ``align_corners=False``,
``half_pixel_centers`` as ``config.data.half_pixel_centers``, aspect ratio not kept), rounded to
uint8 (what a camera delivers and a uint8 file takes). No EXIF rotation is applied: the stored
pixels, as the data pipeline and COCO annotations see them. numpy and PIL only.
"""

from __future__ import annotations

import glob
import os
import pathlib

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file as uint8 ``[H, W, 3]`` RGB (grayscale, CMYK, palette and alpha converted)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _axis_weights(in_size: int, out_size: int, half_pixel_centers: bool):
    """Source rows (lower, upper) and interpolation weight of each output row (TF's kernel)."""
    scale = np.float32(in_size) / np.float32(out_size)  # float32 arithmetic, as TF's kernel
    out = np.arange(out_size, dtype=np.float32)
    if half_pixel_centers:
        src = (out + np.float32(0.5)) * scale - np.float32(0.5)
        lower = np.maximum(np.floor(src), 0).astype(np.int64)
        upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
        frac = src - np.floor(src)
    else:
        src = out * scale
        lower = np.floor(src).astype(np.int64)
        upper = np.minimum(lower + 1, in_size - 1)
        frac = src - lower
    return lower, upper, frac.astype(np.float32)


def resize_bilinear(image: np.ndarray, size, half_pixel_centers: bool = False) -> np.ndarray:
    """``[h, w, C]`` -> float32 ``[H, W, C]``, TF ``ResizeBilinear(align_corners=False)``."""
    height, width = (int(s) for s in size)
    x = np.asarray(image, np.float32)
    y0, y1, fy = _axis_weights(x.shape[0], height, half_pixel_centers)
    x0, x1, fx = _axis_weights(x.shape[1], width, half_pixel_centers)
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * fx[None, :, None]
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * fx[None, :, None]
    return top + (bottom - top) * fy[:, None, None]


def model_pixels(image: np.ndarray, size, half_pixel_centers: bool = False) -> np.ndarray:
    """RGB ``[h, w, 3]`` -> uint8 ``[H, W, 3]``: the model's input size, rounded pixels."""
    resized = resize_bilinear(image, size, half_pixel_centers)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def is_video(path: str | os.PathLike) -> bool:
    return pathlib.Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_images(source: str | os.PathLike) -> list[pathlib.Path]:
    """The image files of ``source``: one file, a folder (not recursive) or a glob, sorted.

    Raises FileNotFoundError when it names nothing, ValueError when it holds no image files."""
    text = os.fspath(source)
    path = pathlib.Path(text)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    elif glob.has_magic(text):
        files = sorted(pathlib.Path(p) for p in glob.glob(text) if os.path.isfile(p))
    else:
        raise FileNotFoundError(f"no such file, folder or glob match: {text}")
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise ValueError(f"{text} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return images


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are at most ``n``):
    consecutive video frames are near duplicates, so calibration takes them across the list."""
    if n <= 0 or len(items) <= n:
        return list(items)
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in picks]
