"""A hand-made COCO-format dataset whose every count is known (dataset statistics tests)."""

import json

import numpy as np
from PIL import Image


def write_tiny_coco(root):
    """3 images (100x200, 100x100, 50x50); categories 1 'cat', 5 'dog'; image 1: two cats and a
    crowd dog; image 2: one dog and a box dropped as zero-area; image 3: nothing."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i, (h, w) in enumerate(((100, 200), (100, 100), (50, 50)), start=1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(images / f"{i}.jpg")
        entries.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 50], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 50, 20, 40], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [10, 10, 30, 30], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 5, "bbox": [10, 20, 30, 60], "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 5, "bbox": [10, 20, 0, 60], "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return path, images
