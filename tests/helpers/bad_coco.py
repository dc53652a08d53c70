"""A COCO-format dataset with one instance of every data problem the pipeline must handle (corrupt,
converted and mismatched images, bad boxes, unknown ids, ...), built from real files on disk."""

import json
import pathlib

from PIL import Image

GOOD_BOX = [8, 6, 30, 20]  # x, y, w, h on a 64x48 image


def _save(path, mode="RGB", size=(64, 48), colour=(200, 30, 30), fmt=None):
    Image.new(mode, size, colour).save(path, format=fmt)


def write_bad_dataset(root: pathlib.Path):
    """A COCO-format dataset under ``root`` holding one instance of every problem the pipeline must
    handle: ``(instances.json path, image folder, {image name: id})``."""
    images = root / "images"
    images.mkdir()
    _save(images / "good.jpg", fmt="JPEG")
    _save(images / "full.jpg", fmt="JPEG")
    good = (images / "good.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    _save(images / "cmyk.jpg", mode="CMYK", colour=(0, 255, 255, 0), fmt="JPEG")  # red
    _save(images / "png.jpg", fmt="PNG")  # a PNG with a .jpg name
    _save(images / "gray.jpg", mode="L", colour=128, fmt="JPEG")
    _save(images / "rgba.png", mode="RGBA", colour=(0, 0, 255, 128), fmt="PNG")
    _save(images / "empty.jpg", fmt="JPEG")
    _save(images / "many.jpg", fmt="JPEG")
    _save(images / "mismatch.jpg", fmt="JPEG")
    names = [
        "good",
        "full",
        "truncated",
        "garbage",
        "cmyk",
        "png",
        "gray",
        "rgba",
        "empty",
        "many",
        "mismatch",
        "missing",
    ]
    coco_images = [
        {
            "id": i + 1,
            "file_name": f"{n}.{'png' if n == 'rgba' else 'jpg'}",
            "height": 48,
            "width": 64,
        }
        for i, n in enumerate(names)
    ]
    ids = {n: i + 1 for i, n in enumerate(names)}
    coco_images[ids["mismatch"] - 1]["height"] = 99
    coco_images.append({"id": ids["good"], "file_name": "full.jpg"})  # duplicate id
    coco_images.append({"file_name": "good.jpg"})  # no id
    anns = []

    def ann(image, bbox, category=1, **extra):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": ids.get(image, image),
                "bbox": bbox,
                "category_id": category,
                "iscrowd": 0,
                **extra,
            }
        )

    ann("good", GOOD_BOX)
    ann("good", [5, 5, 0, 10])  # zero area
    ann("good", [40, 5, -10, 10])  # inverted
    ann("good", [70, 50, 10, 10])  # outside the 64x48 image
    ann("good", [50, 40, 30, 30])  # crosses the border: clipped to [50, 40, 14, 8]
    ann("good", [1, 2, 3])  # malformed
    ann("good", [0, 0, 10, float("nan")])  # malformed (NaN)
    ann("good", GOOD_BOX, category=77)  # unknown category
    ann("good", [0, 0, 64, 48], category=2, iscrowd=1)  # crowd
    ann(999, GOOD_BOX)  # unknown image
    ann("full", GOOD_BOX, category=2)
    for name in ("truncated", "garbage", "missing"):
        ann(name, GOOD_BOX)
    for name in ("cmyk", "png", "gray", "rgba", "mismatch"):
        ann(name, GOOD_BOX, category=2)
    for k in range(7):
        ann("many", [k * 8, 4, 6, 6])
    anns[-1]["id"] = anns[-2]["id"]  # a duplicated annotation id
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = root / "instances.json"
    path.write_text(
        json.dumps({"images": coco_images, "annotations": anns, "categories": categories})
    )
    return path, images, ids
