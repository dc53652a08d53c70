"""The first K images of an evaluation with their ground truth and detections, for pictures.

Always the split's first K real images (``example_mask``), so every evaluation of a run shows the
same images and progress is visible from one to the next. Images are taken as the model saw
them (the input size) and turned into uint8 pixels: ``pixels=True`` batches already are [0, 255];
normalized batches are mapped back with the constants of ``mobiledet_jax.pixels`` (display only:
nothing is scored on them). Only the rows this process holds are read (on a multi-host run,
process 0 holds the first rows of every batch), with one device-to-host copy per batch until K
images are collected.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mobiledet_jax import pixels as pixels_lib


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation image: uint8 input pixels, its real ground truth and its detections."""

    image: np.ndarray  # [H, W, 3] uint8, the model input
    image_id: int
    gt_boxes: np.ndarray  # [N, 4] normalized ymin, xmin, ymax, xmax
    gt_classes: np.ndarray  # [N] 0-based
    gt_is_crowd: np.ndarray  # [N] bool
    det_boxes: np.ndarray  # [D, 4]
    det_scores: np.ndarray  # [D]
    det_classes: np.ndarray  # [D]


def _local_rows(images) -> dict[int, np.ndarray]:
    """``{global row: [H, W, 3] array}`` of the rows of ``images`` this process can read."""
    if isinstance(images, jax.Array) and not images.is_fully_addressable:
        rows = {}
        for shard in images.addressable_shards:
            start = shard.index[0].start or 0
            data = np.asarray(shard.data)
            for i in range(data.shape[0]):
                rows.setdefault(start + i, data[i])
        return rows
    data = np.asarray(images)
    return dict(enumerate(data))


def to_display_pixels(image: np.ndarray, pixels: bool) -> np.ndarray:
    """A batch image as uint8 pixels: [0, 255] floats rounded, or [-1, 1] mapped back."""
    image = np.asarray(image, np.float32)
    if not pixels:
        image = (image - pixels_lib.PIXEL_OFFSET) / pixels_lib.PIXEL_SCALE
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class SampleCollector:
    """Collects the first ``num`` real images of the batches it is given."""

    def __init__(self, num: int, pixels: bool):
        self.num = max(0, int(num))
        self.pixels = pixels
        self.samples: list[Sample] = []

    @property
    def done(self) -> bool:
        return len(self.samples) >= self.num

    def add(self, images, det, gt: dict) -> None:
        """``images``: the batch's ``image``; ``det``: detections (``boxes``, ``scores``,
        ``classes``, ``num_detections``); ``gt``: the batch's ground truth, host arrays."""
        if self.done:
            return
        want = [b for b in np.flatnonzero(gt["example_mask"])][: self.num - len(self.samples)]
        if not want:
            return
        rows = _local_rows(images)
        boxes, scores = np.asarray(det.boxes), np.asarray(det.scores)
        classes, counts = np.asarray(det.classes), np.asarray(det.num_detections)
        for b in want:
            if b not in rows:
                continue
            real = np.asarray(gt["gt_mask"][b], bool)
            n = int(counts[b])
            self.samples.append(
                Sample(
                    image=to_display_pixels(rows[b], self.pixels),
                    image_id=int(gt["image_id"][b]),
                    gt_boxes=np.asarray(gt["gt_boxes"][b])[real],
                    gt_classes=np.asarray(gt["gt_classes"][b])[real],
                    gt_is_crowd=np.asarray(gt["gt_is_crowd"][b], bool)[real],
                    det_boxes=boxes[b, :n],
                    det_scores=scores[b, :n],
                    det_classes=classes[b, :n],
                )
            )
