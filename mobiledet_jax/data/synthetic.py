"""The embedded dataset: coloured shapes on textured backgrounds, in COCO format.

Generated deterministically from a seed on first use (about a second per hundred images), so the
quickstart and the tests train with no download. Each image (320x320, 240x320, 320x240 or 288x352)
holds 1-4 shapes of 4 classes with exact pixel boxes; objects are large (20-45% of the short side)
and overlap little, so a small detector learns them in minutes on a CPU.
"""

import colorsys
import dataclasses
import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image, ImageDraw

from mobiledet_jax.data import temporaries

CLASS_NAMES = ("circle", "square", "triangle", "cross")
IMAGE_SIZES = ((320, 320), (240, 320), (320, 240), (288, 352))  # (height, width)
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CocoSplit:
    """A COCO-format split on disk: an instances JSON and the folder its file names live in."""

    annotations: pathlib.Path
    images: pathlib.Path


def default_cache_dir() -> pathlib.Path:
    """``$MOBILEDET_DATA_CACHE`` or ``~/.cache/mobiledet_jax``."""
    env = os.environ.get("MOBILEDET_DATA_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "mobiledet_jax"


def ensure_synthetic(
    cache_dir: str | os.PathLike | None = None,
    num_train: int = 512,
    num_val: int = 128,
    seed: int = 0,
) -> dict[str, CocoSplit]:
    """Returns the ``train`` and ``val`` splits, generating them under ``cache_dir`` if missing.

    Generation writes to a private temporary folder and renames it into place, so concurrent
    processes sharing a file system never see a half-written dataset; the folder of a killed
    generation is removed by the next call on the same host (``temporaries``).
    """
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    root = cache / f"synthetic_v{FORMAT_VERSION}_seed{seed}_{num_train}_{num_val}"
    temporaries.remove_stale(root)  # left by killed generations on this host
    if not root.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = temporaries.private_name(root)
        try:
            generate_split(tmp / "train", num_train, seed=seed, split_id=0)
            generate_split(tmp / "val", num_val, seed=seed, split_id=1)
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():  # a real failure, not a lost race with another process
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        split: CocoSplit(root / split / "instances.json", root / split / "images")
        for split in ("train", "val")
    }


def generate_split(
    directory: str | os.PathLike,
    num_images: int,
    seed: int,
    split_id: int,
    image_size: tuple | None = None,
) -> CocoSplit:
    """Writes ``num_images`` JPEGs and ``instances.json`` into ``directory``.

    ``image_size`` (height, width) fixes the size; by default it varies over IMAGE_SIZES.
    """
    directory = pathlib.Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, split_id, i])
        pixels, objects = render_image(rng, image_size)
        image_id = i + 1
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(directory / "images" / file_name, quality=92)
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for class_index, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (directory / "instances.json").write_text(json.dumps(coco))
    return CocoSplit(directory / "instances.json", directory / "images")


def render_image(rng: np.random.Generator, image_size: tuple | None = None) -> tuple:
    """One image: uint8 [H, W, 3] and a list of (class index, (x, y, w, h)) in pixels."""
    height, width = image_size or IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    objects = []  # (class index, (x, y, w, h))
    for _ in range(rng.integers(1, 5)):
        box = _place_box(rng, height, width, [b for _, b in objects])
        if box is None:
            continue
        class_index = int(rng.integers(len(CLASS_NAMES)))
        hue, sat, val = rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
        colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
        _draw_shape(draw, CLASS_NAMES[class_index], box, colour)
        objects.append((class_index, box))
    return np.asarray(image), objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation texture: coarse colour blotches plus fine pixel noise."""
    grey = rng.uniform(60, 170)
    coarse = grey + rng.normal(0, 22, size=(rng.integers(4, 12), rng.integers(4, 12), 3))
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    noise = rng.normal(0, 9, size=(height, width, 1))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _place_box(rng, height, width, placed, max_tries=30):
    """A random (x, y, w, h) box that overlaps the placed boxes by IoU < 0.1, or None."""
    short = min(height, width)
    for _ in range(max_tries):
        side = rng.uniform(0.2, 0.45) * short
        aspect = rng.uniform(0.75, 1.33)
        w = int(round(side * np.sqrt(aspect)))
        h = int(round(side / np.sqrt(aspect)))
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        if all(_iou((x, y, w, h), other) < 0.1 for other in placed):
            return x, y, w, h
    return None


def _iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, box, colour) -> None:
    """Fills the shape so that it touches all four sides of ``box`` (pixels x..x+w-1)."""
    x, y, w, h = box
    x1, y1 = x + w - 1, y + h - 1
    if name == "circle":
        draw.ellipse((x, y, x1, y1), fill=colour)
    elif name == "square":
        draw.rectangle((x, y, x1, y1), fill=colour)
    elif name == "triangle":
        draw.polygon([(x, y1), (x1, y1), ((x + x1) / 2, y)], fill=colour)
    elif name == "cross":
        t = max(2, round(min(w, h) / 3))
        cy, cx = y + (h - t) // 2, x + (w - t) // 2
        draw.rectangle((x, cy, x1, cy + t - 1), fill=colour)
        draw.rectangle((cx, y, cx + t - 1, y1), fill=colour)
    else:
        raise ValueError(f"unknown shape {name!r}")
