"""Statistics of a validated COCO-format dataset: what the model will be trained on (numpy only).

``validate_with_boxes`` runs the same validation as ``validate.validate_dataset`` (every image
decoded, every box checked and repaired as preparation does it) and also keeps the surviving
boxes in a ``BoxTable``; ``BoxTable.summary`` turns it into JSON-ready counts. Counted are the
**training** boxes: non-crowd boxes after validation (crowd boxes never become targets), all of
an image's boxes even beyond ``max_boxes`` (the report counts the truncation).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from mobiledet_jax.data import validate


@dataclasses.dataclass(frozen=True)
class BoxTable:
    """The training boxes of a dataset, one row per box."""

    class_names: tuple[str, ...]
    image_sizes: np.ndarray  # [I, 2] (height, width) of each usable image
    image_index: np.ndarray  # [M] row of image_sizes
    classes: np.ndarray  # [M] 0-based class index
    boxes: np.ndarray  # [M, 4] normalized ymin, xmin, ymax, xmax

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    @classmethod
    def from_clean_images(cls, images, class_names) -> BoxTable:
        """From ``validate.CleanImage``s (crowd boxes left out)."""
        sizes, index, classes, boxes = [], [], [], []
        for i, image in enumerate(images):
            sizes.append((image.height, image.width))
            train = ~np.asarray(image.is_crowd, bool)
            index.append(np.full(int(train.sum()), i, np.int64))
            classes.append(np.asarray(image.classes, np.int64)[train])
            boxes.append(np.asarray(image.boxes, np.float64).reshape(-1, 4)[train])
        return cls(
            class_names=tuple(class_names),
            image_sizes=np.asarray(sizes, np.int64).reshape(-1, 2),
            image_index=np.concatenate([np.zeros(0, np.int64), *index]),
            classes=np.concatenate([np.zeros(0, np.int64), *classes]),
            boxes=np.concatenate([np.zeros((0, 4)), *boxes]),
        )

    def boxes_per_class(self) -> np.ndarray:
        return np.bincount(self.classes, minlength=len(self.class_names))

    def images_per_class(self) -> np.ndarray:
        """Images holding at least one box of each class."""
        pairs = np.unique(np.stack([self.image_index, self.classes]), axis=1)
        return np.bincount(pairs[1], minlength=len(self.class_names))

    def boxes_per_image(self) -> np.ndarray:
        """``[I]`` training boxes of each image (0 for negative images)."""
        return np.bincount(self.image_index, minlength=self.num_images)

    def input_pixels(self, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(heights, widths)`` of the boxes in an ``H x W`` model input (the pipeline resizes
        every image to it without keeping the aspect ratio)."""
        height, width = image_size
        return (
            (self.boxes[:, 2] - self.boxes[:, 0]) * height,
            (self.boxes[:, 3] - self.boxes[:, 1]) * width,
        )

    def summary(self, image_size: tuple[int, int]) -> dict:
        """JSON-ready counts and size distributions (sizes in input pixels of ``image_size``)."""
        heights, widths = self.input_pixels(image_size)
        per_image = self.boxes_per_image()
        quantiles = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)

        def dist(values):
            if not len(values):
                return {}
            return {f"p{int(q * 100)}": float(np.quantile(values, q)) for q in quantiles}

        counts, images = self.boxes_per_class(), self.images_per_class()
        return {
            "num_images": self.num_images,
            "num_boxes": int(len(self.classes)),
            "classes": [
                {"name": n, "images": int(i), "boxes": int(b)}
                for n, i, b in zip(self.class_names, images, counts, strict=True)
            ],
            "boxes_per_image": {
                "mean": float(per_image.mean()) if len(per_image) else 0.0,
                "max": int(per_image.max()) if len(per_image) else 0,
                "histogram": {int(k): int(v) for k, v in enumerate(np.bincount(per_image)) if v},
            },
            "input_size": list(image_size),
            "box_sqrt_area_input_px": dist(np.sqrt(heights * widths)),
            "box_aspect_ratio_w_over_h": dist(widths / np.maximum(heights, 1e-9)),
        }


def validate_with_boxes(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    *,
    max_boxes: int = 100,
    label_map: str = "dataset",
    workers: int | None = None,
) -> tuple[validate.Report, BoxTable | None]:
    """``validate.validate_dataset`` that also returns the surviving boxes (None when the data
    cannot be read at all)."""
    report = validate.Report(annotations=str(annotations), images=str(images))
    try:
        coco = validate.read_coco(annotations)
        labels = validate.build_label_map(coco["categories"], label_map)
    except validate.DataError as e:
        report.fatal.append(str(e))
        return report, None
    if not pathlib.Path(images).is_dir():
        report.fatal.append(f"image folder not found: {images}")
        return report, None
    clean = validate.iter_clean_images(
        coco, images, labels, report, max_boxes=max_boxes, workers=workers
    )
    return report, BoxTable.from_clean_images(clean, labels.names)  # keeps no pixels
