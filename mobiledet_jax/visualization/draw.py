"""Boxes with class names (and scores) drawn on images, one colour per class.

Images are ``uint8 [H, W, 3]`` arrays; boxes are the model's normalized ``[ymin, xmin, ymax,
xmax]``. ``box_to_pixels`` defines where a box lands: its outermost pixel rows and columns are
``round(v * size)`` (left/top) and ``round(v * size) - 1`` (right/bottom), clipped to the image,
and the ``LINE_WIDTH`` pixels of the outline are drawn inward from them, so a box covering the
whole image outlines the border pixels and two boxes sharing an edge in normalized coordinates
never overlap in pixels. Labels sit on a filled strip of the class
colour just above the box (inside it when the box touches the top of the image).

The palette is deterministic: class ``i`` gets the hue ``i * golden ratio`` (mod 1), so
neighbouring class indices get very different colours and a class keeps its colour in every
figure, mosaic and TensorBoard image, whatever the number of classes.
"""

import colorsys
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GOLDEN_RATIO = 0.6180339887498949
LINE_WIDTH = 2


@functools.lru_cache(maxsize=1024)
def class_color(class_index: int) -> tuple[int, int, int]:
    """The RGB colour of a class (deterministic, distinct for neighbouring indices)."""
    hue = (int(class_index) * GOLDEN_RATIO) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def class_color_float(class_index: int) -> tuple[float, float, float]:
    """``class_color`` in [0, 1] (matplotlib's convention)."""
    return tuple(c / 255.0 for c in class_color(class_index))


@functools.lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def box_to_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """Normalized ``[ymin, xmin, ymax, xmax]`` -> inclusive pixel ``(x0, y0, x1, y1)`` of its
    outline (see the module docstring), clipped to the image."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    x0 = min(max(int(round(xmin * width)), 0), width - 1)
    y0 = min(max(int(round(ymin * height)), 0), height - 1)
    x1 = min(max(int(round(xmax * width)) - 1, x0), width - 1)
    y1 = min(max(int(round(ymax * height)) - 1, y0), height - 1)
    return x0, y0, x1, y1


def _label(draw: ImageDraw.ImageDraw, text: str, x0: int, y0: int, color, font) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    ty = y0 - th if y0 - th >= 0 else y0 + LINE_WIDTH
    draw.rectangle([x0, ty, x0 + tw - 1, ty + th - 1], fill=color)
    light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150
    ink = (0, 0, 0) if light else (255, 255, 255)
    draw.text((x0 + 2 - left, ty + 1 - top), text, fill=ink, font=font)


def draw_boxes(
    image: np.ndarray,
    boxes,
    classes,
    class_names=None,
    scores=None,
    *,
    labels: bool = True,
    font_size: int = 11,
) -> np.ndarray:
    """A copy of ``image`` (uint8 ``[H, W, 3]``) with ``boxes [N, 4]`` outlined in their class
    colours; ``labels``: the class name (``class_names[c]``, else the index) and, when ``scores``
    are given, the score. Boxes are drawn first, labels last, so no outline covers a label."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    corners = [box_to_pixels(b, height, width) for b in boxes]
    for (x0, y0, x1, y1), c in zip(corners, classes, strict=True):
        draw.rectangle([x0, y0, x1, y1], outline=class_color(c), width=LINE_WIDTH)
    if labels:
        font = _font(font_size)
        for i, ((x0, y0, _, _), c) in enumerate(zip(corners, classes, strict=True)):
            name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else c
            text = f"{name}" if scores is None else f"{name} {float(scores[i]):.2f}"
            _label(draw, text, x0, y0, class_color(c), font)
    return np.asarray(pil)


def upscale(image: np.ndarray, min_side: int) -> tuple[np.ndarray, int]:
    """``image`` repeated by the smallest integer factor that makes its short side >= ``min_side``
    (nearest neighbour: every input pixel becomes a square block, nothing is interpolated), and
    that factor. Boxes are normalized, so they are drawn on the upscaled image unchanged."""
    factor = max(1, -(-int(min_side) // min(image.shape[:2])))
    if factor == 1:
        return image, 1
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1), factor


def to_uint8(image) -> np.ndarray:
    """Float pixels in [0, 255] (the pipeline's ``pixels=True`` images) -> uint8, rounded."""
    return np.clip(np.rint(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)


def caption(image: np.ndarray, text: str, font_size: int = 12) -> np.ndarray:
    """``image`` with a white strip on top holding ``text`` (black). The strip's height depends
    on ``font_size`` only, so captioned images of one size stack (TensorBoard image batches)."""
    font = _font(font_size)
    strip = Image.new("RGB", (image.shape[1], font_size + 8), (255, 255, 255))
    ImageDraw.Draw(strip).text((3, 3), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), image], axis=0)
