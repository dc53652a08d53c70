"""The problems found in users' data, by named reason, and the :class:`Report` that counts them.

Each reason has an action: ``skipped`` (an image, a record or a file), ``dropped`` (an annotation),
``repaired``, ``truncated`` or ``kept`` (informational). The first group is found while reading a
format other than COCO JSON (YOLO, Pascal VOC, TF OD API TFRecords: ``yolo_source``,
``voc_source``, ``tfod_source``); the rest by the COCO checks of ``validate.py``, which every
source goes through. No TensorFlow, no PIL: the commands start fast.
"""

import collections
import dataclasses

# reason -> (action, description).
REASONS = {
    # Found while reading YOLO, VOC or TF OD API data, before the COCO checks.
    "unreadable_label_file": (
        "skipped",
        "label file missing (VOC), unreadable or not parseable (YOLO txt, VOC XML): image skipped",
    ),
    "corrupt_record_file": ("skipped", "TFRecord file corrupt or unreadable: rest of it skipped"),
    "malformed_record": (
        "skipped",
        "record not a tf.train.Example, without image/encoded, or with unequal object lists",
    ),
    "missing_label_file": ("kept", "YOLO image without a label file: a negative example"),
    "malformed_object": (
        "dropped",
        "YOLO line, VOC <object> or record object without a valid class or 4 finite numbers",
    ),
    "label_not_normalized": ("dropped", "YOLO coordinates outside [0, 1] (pixels, not fractions?)"),
    "duplicate_label": ("dropped", "YOLO label line repeated in its file"),
    "difficult_object": (
        "kept",
        "difficult=1 (VOC, TF OD API): iscrowd=1, ignored in evaluation, no training target",
    ),
    # The COCO checks (every source).
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
