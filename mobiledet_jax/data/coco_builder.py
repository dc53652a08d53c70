"""The COCO-format data that the readers of other formats build (``yolo_source``, ``voc_source``,
``tfod_source``), with what they find while reading counted in its report.

A reader adds images and pixel boxes to a :class:`CocoBuilder` and counts what it cannot express in
COCO format (an unreadable label file, a malformed line, an unknown class name, ...) under a reason
of ``problems.REASONS``; everything it can express (zero-area, inverted or out-of-image boxes,
missing or corrupt images) goes into the dict, for the COCO checks of ``validate.py`` to count. So
every source ends in the same report, and the converted JSON holds exactly what was expressible.
"""

import os
import pathlib

from PIL import Image

from mobiledet_jax.data import problems, validate


class CocoBuilder:
    """Images numbered 1, 2, ... in the order added; annotations likewise.

    ``categories``: (category id, name) pairs. ``source`` names the data in the report;
    ``images_root`` is the folder file names are written relative to (absolute outside it).
    """

    def __init__(self, categories, source: str, images_root: str | os.PathLike):
        self.images_root = pathlib.Path(images_root).absolute()
        self.coco = {
            "images": [],
            "annotations": [],
            "categories": [{"id": int(i), "name": str(name)} for i, name in categories],
        }
        self.report = problems.Report(annotations=source, images=str(self.images_root))
        self.category_ids = {int(i) for i, _ in categories}

    def add_image(self, path: str | os.PathLike, size: tuple | None = None, **extra) -> int:
        """Adds an image file (``size``: (height, width) if known); returns its id."""
        image_id = len(self.coco["images"]) + 1
        entry = {"id": image_id, "file_name": self.file_name(path), **extra}
        if size:
            entry["height"], entry["width"] = int(size[0]), int(size[1])
        self.coco["images"].append(entry)
        return image_id

    def add_box(self, image_id: int, category_id: int, x, y, w, h, iscrowd=False) -> None:
        """Adds a pixel box (x, y: top-left corner); ``category_id`` must be a known category."""
        self.coco["annotations"].append(
            {
                "id": len(self.coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": int(category_id),
                "bbox": [round(float(v), 4) for v in (x, y, w, h)],  # 1e-4 pixel
                "area": round(float(w) * float(h), 4),
                "iscrowd": int(bool(iscrowd)),
            }
        )

    def skip_image(self, reason: str, example) -> None:
        """Counts an image left out (it is still one of the source's images)."""
        self.report.add(reason, example)
        self.report.num_images += 1

    def drop(self, reason: str, example, n: int = 1) -> None:
        """Counts ``n`` annotations left out (they are still among the source's annotations)."""
        self.report.add(reason, example, n=n)
        self.report.num_annotations += n

    def data(self) -> validate.CocoData:
        return validate.CocoData(self.coco, self.images_root, self.report)

    def file_name(self, path) -> str:
        """``path`` relative to ``images_root`` (POSIX), or absolute when outside it."""
        path = pathlib.Path(path).absolute()
        try:
            return path.relative_to(self.images_root).as_posix()
        except ValueError:
            return str(path)


def image_size(source) -> tuple | None:
    """(height, width) from an image file's header (a path, or a file object), without decoding
    it; None when it cannot be opened (the COCO checks then count the file as missing or corrupt).
    """
    try:
        with Image.open(source) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - any failure: the image is reported by the COCO checks
        return None
    return height, width


def file_identity(paths) -> str:
    """One line per path: name, size and modification time (or 'missing'); cheap to compute, so a
    prepared split is found again without reading the files."""
    lines = []
    for path in paths:
        try:
            st = os.stat(path)
            lines.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            lines.append(f"{path}|missing")
    return "\n".join(lines)
