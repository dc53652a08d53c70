"""Validation and repair of COCO-format detection data, in Python with PIL, before any tf.data.

Every problem is handled (the image skipped or converted, the box dropped, clipped or truncated)
and counted under a named reason in a :class:`Report`, so bad data never kills a run and is never
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

# reason -> (action, description). Actions: skipped (image), dropped (annotation), repaired,
# truncated, kept (informational).
REASONS = {
    "malformed_image_entry": ("skipped", "image entry without an integer id or a file_name"),
    "duplicate_image_id": ("skipped", "image id listed twice (later entries skipped)"),
    "missing_image_file": ("skipped", "image file not found"),
    "corrupt_image": ("skipped", "image cannot be decoded (corrupt or truncated file)"),
    "converted_non_jpeg": ("repaired", "PNG or other non-JPEG file re-encoded as RGB JPEG"),
    "converted_grayscale": ("repaired", "grayscale image converted to RGB"),
    "converted_cmyk": ("repaired", "CMYK image converted to RGB"),
    "converted_other_mode": ("repaired", "palette/alpha/other colour mode converted to RGB"),
    "image_size_mismatch": ("repaired", "JSON height/width differ from the file (file used)"),
    "image_without_annotations": ("kept", "no training boxes: kept as a negative example"),
    "image_over_max_boxes": ("truncated", "more than max_boxes training boxes"),
    "boxes_truncated": ("truncated", "training boxes beyond max_boxes (kept for evaluation)"),
    "unknown_category": ("dropped", "annotation category_id not in the categories/label map"),
    "unknown_image_id": ("dropped", "annotation image_id not in images"),
    "annotation_of_skipped_image": ("dropped", "annotation of a skipped image"),
    "malformed_box": ("dropped", "bbox missing, not 4 numbers, or not finite"),
    "zero_area_box": ("dropped", "bbox width or height is 0"),
    "inverted_box": ("dropped", "bbox width or height is negative"),
    "box_outside_image": ("dropped", "bbox entirely outside the image"),
    "box_clipped": ("repaired", "bbox crosses the image border (clipped)"),
    "annotation_id_reassigned": ("repaired", "annotation id missing or duplicated (new id)"),
    "crowd_box": ("kept", "iscrowd=1: kept for evaluation, not a training target"),
}
MAX_EXAMPLES = 5  # offending ids listed per reason
MAX_IMAGE_ID = 2**31 - 1  # image ids travel to the device as int32


class DataError(ValueError):
    """The dataset cannot be used (unreadable JSON, no categories, nothing usable left, ...)."""

    def __init__(self, message: str, report: "Report | None" = None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class Report:
    """Counts of what was found, kept, repaired and dropped, by reason."""

    annotations: str = ""
    images: str = ""
    num_images: int = 0  # entries in the JSON
    num_annotations: int = 0
    num_usable_images: int = 0
    num_training_boxes: int = 0  # non-crowd boxes kept (before max_boxes truncation)
    num_eval_boxes: int = 0  # boxes in the cleaned ground truth, crowd included
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)
    fatal: list = dataclasses.field(default_factory=list)

    def add(self, reason: str, example=None, n: int = 1) -> None:
        if reason not in REASONS:
            raise KeyError(f"unknown reason {reason!r}")
        self.counts[reason] += n
        listed = self.examples.setdefault(reason, [])
        if example is not None and len(listed) < MAX_EXAMPLES:
            listed.append(example)

    @property
    def usable(self) -> bool:
        return not self.fatal and self.num_usable_images > 0 and self.num_training_boxes > 0

    def to_dict(self) -> dict:
        return {
            "usable": self.usable,
            "annotations": self.annotations,
            "images": self.images,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_usable_images": self.num_usable_images,
            "num_training_boxes": self.num_training_boxes,
            "num_eval_boxes": self.num_eval_boxes,
            "fatal": list(self.fatal),
            "counts": {r: self.counts[r] for r in REASONS if self.counts[r]},
            "examples": {r: self.examples[r] for r in REASONS if self.examples.get(r)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        fields = {
            k: d[k]
            for k in (
                "annotations",
                "images",
                "num_images",
                "num_annotations",
                "num_usable_images",
                "num_training_boxes",
                "num_eval_boxes",
            )
        }
        report = cls(**fields, fatal=list(d["fatal"]), examples=dict(d["examples"]))
        report.counts.update(d["counts"])
        return report

    def format(self) -> str:
        """Human-readable report, one line per reason found."""
        lines = [
            f"annotations: {self.annotations}",
            f"images:      {self.images}",
            f"images: {self.num_usable_images} usable of {self.num_images}; "
            f"annotations: {self.num_annotations}; training boxes: {self.num_training_boxes}; "
            f"evaluation boxes: {self.num_eval_boxes}",
        ]
        for reason, (action, text) in REASONS.items():
            if self.counts[reason]:
                ids = self.examples.get(reason)
                suffix = f"  e.g. {ids}" if ids else ""
                lines.append(f"  {action:9s} {self.counts[reason]:7d}  {reason}: {text}{suffix}")
        lines += [f"FATAL: {message}" for message in self.fatal]
        if not self.fatal and not self.num_usable_images:
            lines.append("NOT USABLE: no image survived validation")
        elif not self.fatal and not self.num_training_boxes:
            lines.append("NOT USABLE: no training box survived validation")
        lines.append("usable: yes" if self.usable else "usable: NO")
        return "\n".join(lines)


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
    report.num_images = len(coco["images"])
    report.num_annotations = len(coco["annotations"])
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


def validate_dataset(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    *,
    max_boxes: int = 100,
    label_map: str = "dataset",
    workers: int | None = None,
) -> Report:
    """Checks a whole dataset without writing anything; returns the report."""
    report = Report(annotations=str(annotations), images=str(images))
    try:
        coco = read_coco(annotations)
        labels = build_label_map(coco["categories"], label_map)
    except DataError as e:
        report.fatal.append(str(e))
        return report
    if not pathlib.Path(images).is_dir():
        report.fatal.append(f"image folder not found: {images}")
        return report
    for _ in iter_clean_images(coco, images, labels, report, max_boxes=max_boxes, workers=workers):
        pass
    return report


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
