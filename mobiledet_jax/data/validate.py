"""Validation and repair of COCO-format detection data, in Python with PIL, before any tf.data.

Every problem is handled (the image skipped or converted, the box dropped, clipped or truncated)
and counted under a named reason in a ``problems.Report``, so bad data never kills a run and is never
lost silently. :func:`iter_clean_images` yields the images that survive, ready to be written as
records; ``python -m mobiledet_jax.validate_data`` prints the report.

Boxes come out as normalized float32 [ymin, xmin, ymax, xmax]; classes as contiguous 0-based
indices into ``LabelMap.category_ids``.
"""

import collections
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import pathlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

# The reasons and the Report live in problems.py; imported here for this module's callers.
from mobiledet_jax.data.problems import MAX_EXAMPLES, REASONS, DataError, Report  # noqa: F401

MAX_IMAGE_ID = 2**31 - 1  # image ids travel to the device as int32


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Contiguous class index i <-> dataset category id ``category_ids[i]``."""

    category_ids: tuple
    names: tuple

    def class_of(self) -> dict:
        return {cid: i for i, cid in enumerate(self.category_ids)}


@dataclasses.dataclass
class CleanImage:
    """One validated image: RGB JPEG bytes and boxes that are safe to feed to tf.data."""

    image_id: int
    file_name: str
    height: int
    width: int
    encoded: bytes  # baseline RGB JPEG
    boxes: np.ndarray  # [N, 4] float32 normalized ymin, xmin, ymax, xmax (crowd included)
    classes: np.ndarray  # [N] int32 contiguous class indices
    is_crowd: np.ndarray  # [N] bool
    annotations: list  # cleaned COCO annotation dicts (pixel xywh) for the evaluation ground truth


def read_coco(path: str | os.PathLike) -> dict:
    """Loads an instances JSON and checks its top-level structure (raises DataError)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"annotations file not found: {path}")
    try:
        coco = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: missing or non-list '{key}' (not a COCO instances file)")
    return coco


def build_label_map(categories: list, mode: str = "dataset") -> LabelMap:
    """The class numbering: ``dataset`` (categories sorted by id) or ``coco90`` (id - 1)."""
    by_id = {}
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DataError(f"category without an integer id: {cat!r}")
        if cat["id"] in by_id:
            raise DataError(f"duplicate category id {cat['id']}")
        by_id[cat["id"]] = str(cat.get("name", f"category_{cat['id']}"))
    if not by_id:
        raise DataError("the annotations file lists no categories")
    if mode == "dataset":
        ids = tuple(sorted(by_id))
    elif mode == "coco90":
        ids = tuple(range(1, 91))
    else:
        raise ValueError(f"unknown label_map {mode!r}; expected 'dataset' or 'coco90'")
    return LabelMap(ids, tuple(by_id.get(i, f"unused_{i}") for i in ids))


def load_image(path: pathlib.Path) -> tuple[bytes, int, int, list]:
    """Decodes fully with PIL; returns (RGB JPEG bytes, height, width, repair reasons).

    Raises FileNotFoundError or OSError (corrupt/truncated) for unusable files.
    """
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: raises OSError on truncated or corrupt data
        reasons = []
        if im.mode == "CMYK":
            reasons.append("converted_cmyk")
        elif im.mode in ("L", "LA", "1", "I", "I;16", "F"):
            reasons.append("converted_grayscale")
        elif im.mode != "RGB":
            reasons.append("converted_other_mode")
        if im.format != "JPEG":
            reasons.append("converted_non_jpeg")
        width, height = im.size
        if reasons:
            rgb = im.convert("RGB")
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=95)
            data = buffer.getvalue()
    return data, height, width, reasons


def clean_boxes(anns: list, height: int, width: int, class_of: dict, report: Report):
    """Checks, clips and normalizes one image's annotations (already known category/image)."""
    boxes, classes, crowd, kept = [], [], [], []
    for ann in anns:
        bbox = ann.get("bbox")
        ok = isinstance(bbox, list | tuple) and len(bbox) == 4
        ok = ok and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        if not ok:
            report.add("malformed_box", ann.get("id"))
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w == 0 or h == 0:
            report.add("zero_area_box", ann.get("id"))
            continue
        if w < 0 or h < 0:
            report.add("inverted_box", ann.get("id"))
            continue
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            report.add("box_outside_image", ann.get("id"))
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            report.add("box_clipped", ann.get("id"))
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd:
            report.add("crowd_box", ann.get("id"))
        boxes.append((y0 / height, x0 / width, y1 / height, x1 / width))
        classes.append(class_of[ann["category_id"]])
        crowd.append(is_crowd)
        area = ann.get("area")
        if not (isinstance(area, int | float) and math.isfinite(area) and area > 0):
            area = (x1 - x0) * (y1 - y0)
        kept.append(
            {**ann, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": int(is_crowd)}
        )
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes, np.asarray(classes, np.int32), np.asarray(crowd, bool), kept


def index_coco(coco: dict, label_map: LabelMap, report: Report):
    """Checks image entries and annotation references; returns (images, annotations by image)."""
    class_of = label_map.class_of()
    images, seen, out_of_range = [], set(), []
    for entry in coco["images"]:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(image_id, int) or not isinstance(entry.get("file_name"), str):
            report.add("malformed_image_entry", image_id)
            continue
        if not 0 <= image_id <= MAX_IMAGE_ID:
            out_of_range.append(image_id)
            continue
        if image_id in seen:
            report.add("duplicate_image_id", image_id)
            continue
        seen.add(image_id)
        images.append(entry)
    if out_of_range:
        report.fatal.append(
            f"{len(out_of_range)} image ids outside [0, 2^31-1] (ids travel to the device as "
            f"int32), e.g. {out_of_range[:MAX_EXAMPLES]}; renumber the images"
        )
    by_image = collections.defaultdict(list)
    for ann in coco["annotations"]:
        if not isinstance(ann, dict) or ann.get("image_id") not in seen:
            report.add("unknown_image_id", ann.get("id") if isinstance(ann, dict) else None)
        elif ann.get("category_id") not in class_of:
            report.add("unknown_category", ann.get("category_id"))
        else:
            by_image[ann["image_id"]].append(ann)
    return images, by_image


def iter_clean_images(
    coco: dict,
    images_dir: str | os.PathLike,
    label_map: LabelMap,
    report: Report,
    *,
    max_boxes: int = 100,
    workers: int | None = None,
) -> Iterator[CleanImage]:
    """Validates images and boxes in order, filling ``report``; yields the usable images.

    Images are decoded on a thread pool (PIL releases the GIL while decoding).
    """
    images_dir = pathlib.Path(images_dir)
    report.num_images += len(coco["images"])  # += : a reader may have counted skipped ones
    report.num_annotations += len(coco["annotations"])
    images, by_image = index_coco(coco, label_map, report)
    class_of = label_map.class_of()
    used_ann_ids = set()

    def load(entry):
        try:
            return load_image(images_dir / entry["file_name"])
        except FileNotFoundError:
            return "missing_image_file"
        except Exception:  # noqa: BLE001 - any decoder failure means a corrupt file, counted
            return "corrupt_image"

    for entry, loaded in _ordered_map(load, images, workers or min(16, os.cpu_count() or 1)):
        image_id = entry["id"]
        anns = by_image.get(image_id, [])
        if isinstance(loaded, str):
            report.add(loaded, image_id)
            if anns:
                report.add("annotation_of_skipped_image", anns[0].get("id"), n=len(anns))
            continue
        encoded, height, width, reasons = loaded
        for reason in reasons:
            report.add(reason, image_id)
        if (entry.get("height"), entry.get("width")) not in ((height, width), (None, None)):
            report.add("image_size_mismatch", image_id)
        boxes, classes, is_crowd, kept = clean_boxes(anns, height, width, class_of, report)
        for ann in kept:
            if not isinstance(ann.get("id"), int) or ann["id"] in used_ann_ids:
                report.add("annotation_id_reassigned", ann.get("id"))
                ann["id"] = None
            else:
                used_ann_ids.add(ann["id"])
        num_train = int((~is_crowd).sum())
        if num_train == 0:
            report.add("image_without_annotations", image_id)
        if num_train > max_boxes:
            report.add("image_over_max_boxes", image_id)
            report.add("boxes_truncated", n=num_train - max_boxes)
        report.num_usable_images += 1
        report.num_training_boxes += num_train
        report.num_eval_boxes += len(kept)
        yield CleanImage(
            image_id, entry["file_name"], height, width, encoded, boxes, classes, is_crowd, kept
        )


def assign_missing_ids(annotations: list) -> None:
    """Gives annotations whose id was cleared (None) fresh ids above the largest one in use."""
    next_id = max((a["id"] for a in annotations if a["id"] is not None), default=0) + 1
    for ann in annotations:
        if ann["id"] is None:
            ann["id"], next_id = next_id, next_id + 1


@dataclasses.dataclass
class CocoData:
    """COCO-format data in memory: the instances dict, the folder its ``file_name`` entries are
    relative to (absolute names are used as they are), and the report to fill, which a reader of
    another format (``yolo_source``, ``voc_source``, ``tfod_source``) hands over holding what it
    found while reading (``report.annotations`` names the source)."""

    coco: dict
    images: pathlib.Path
    report: Report


def read_coco_data(annotations: str | os.PathLike, images: str | os.PathLike) -> CocoData:
    """An instances JSON and its image folder as :class:`CocoData` (raises DataError)."""
    coco = read_coco(annotations)
    if not pathlib.Path(images).is_dir():
        raise DataError(f"image folder not found: {images}")
    return CocoData(coco, pathlib.Path(images), Report(str(annotations), str(images)))


def validate_coco(
    data: CocoData, *, max_boxes: int = 100, label_map: str = "dataset", workers: int | None = None
) -> Report:
    """Checks COCO-format data without writing anything; returns ``data.report``, filled."""
    try:
        labels = build_label_map(data.coco["categories"], label_map)
    except DataError as e:
        data.report.fatal.append(str(e))
        return data.report
    clean = iter_clean_images(
        data.coco, data.images, labels, data.report, max_boxes=max_boxes, workers=workers
    )
    for _ in clean:
        pass
    return data.report


def validate_dataset(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    *,
    max_boxes: int = 100,
    label_map: str = "dataset",
    workers: int | None = None,
) -> Report:
    """Checks an instances JSON and its image folder without writing anything; returns the report."""
    try:
        data = read_coco_data(annotations, images)
    except DataError as e:
        return Report(annotations=str(annotations), images=str(images), fatal=[str(e)])
    return validate_coco(data, max_boxes=max_boxes, label_map=label_map, workers=workers)


def _ordered_map(fn, items: list, workers: int, window_per_worker: int = 4):
    """Yields (item, fn(item)) in order, with at most workers * window_per_worker in flight."""
    window = max(1, workers * window_per_worker)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()
