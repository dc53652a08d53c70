"""How well the anchors of an input size reach a dataset's ground-truth boxes (numpy in and out).

Definition, for each ground-truth box and an input size ``H x W``:

- The box is taken in the model input: the pipeline resizes every image to ``H x W`` without
  keeping its aspect ratio, so a normalized ``[ymin, xmin, ymax, xmax]`` box of the image is the
  same normalized box of the input, and its IoU with the (normalized) anchors of
  ``anchors.anchors_for_image(H, W)`` is exactly what the matcher computes
  (``matcher.pairwise_iou``). Boxes are those of the data as stored: augmentation is not applied.
- ``best_iou``: the highest IoU of the box with any anchor; ``positives``: how many anchors have
  IoU ``>= matched_threshold`` with it (0.5, ``config.detection.matcher.matched_threshold``).
- **covered**: ``best_iou >= matched_threshold``: at least one anchor is a positive for the box on
  IoU alone. **forced only**: the others: only the forced match (``force_match_for_each_row``)
  gives them an anchor, their single best one at an IoU below the threshold (and not even that
  when another box of the same image claims the same anchor: a per-image effect this per-box
  measure does not count). With force matching off they would never be trained.
- **size bucket**: ``sqrt(box area in input pixels) = sqrt(h * H * w * W)``, with the lower edge
  inclusive, edges ``config.visualization.coverage_size_edges`` (16, 32, 64, 128): the buckets
  double like the feature-map strides, and at 320 x 320 the smallest anchor is 32 px (scale 0.1
  of the first map), which a square box only reaches at IoU 0.5 from 32 / sqrt(2) = 22.6 px up,
  so the two lowest buckets show how much of a dataset sits below the anchors.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.detection import matcher

CHUNK = 2048  # boxes per IoU block ([CHUNK, A] floats; one compiled program for every block)


@jax.jit
def _best_and_positives(boxes, anchors, threshold):
    iou = matcher.pairwise_iou(boxes, anchors)
    return iou.max(axis=1), (iou >= threshold).sum(axis=1)


def best_anchor_iou(
    boxes: np.ndarray, anchors: np.ndarray, matched_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(best IoU [N] float32, anchors at IoU >= matched_threshold [N] int)`` of normalized
    ``boxes [N, 4]`` against ``anchors [A, 4]``, computed in fixed-size blocks."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    anchors_j = jnp.asarray(anchors, jnp.float32)
    best, positives = [], []
    for start in range(0, len(boxes), CHUNK):
        block = boxes[start : start + CHUNK]
        padded = np.zeros((CHUNK, 4), np.float32)
        padded[: len(block)] = block
        b, p = _best_and_positives(padded, anchors_j, np.float32(matched_threshold))
        best.append(np.asarray(b)[: len(block)])
        positives.append(np.asarray(p)[: len(block)])
    if not best:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(best), np.concatenate(positives).astype(np.int64)


def bucket_names(size_edges) -> list[str]:
    """``["<16", "16-32", ..., ">=128"]`` for edges ``(16, 32, 64, 128)``."""
    edges = [float(e) for e in size_edges]
    names = [f"<{edges[0]:g}"] if edges else []
    names += [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
    names += [f">={edges[-1]:g}"] if edges else ["all sizes"]
    return names


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Per-box results and per-bucket summaries (``to_dict`` for JSON)."""

    image_size: tuple[int, int]
    matched_threshold: float
    num_anchors: int
    size_edges: tuple[float, ...]
    sizes: np.ndarray  # [N] sqrt(area) in input pixels
    best_iou: np.ndarray  # [N]
    positives: np.ndarray  # [N] anchors at IoU >= matched_threshold
    bucket: np.ndarray  # [N] bucket index

    def _summary(self, mask: np.ndarray, name: str, lower, upper) -> dict:
        n = int(mask.sum())
        covered = int((self.best_iou[mask] >= self.matched_threshold).sum())
        return {
            "bucket": name,
            "min_size": lower,
            "max_size": upper,
            "num_boxes": n,
            "num_covered": covered,
            "num_forced_only": n - covered,
            "fraction_covered": covered / n if n else float("nan"),
            "mean_best_iou": float(self.best_iou[mask].mean()) if n else float("nan"),
            "mean_positive_anchors": float(self.positives[mask].mean()) if n else float("nan"),
        }

    def buckets(self) -> list[dict]:
        """One summary per size bucket, in increasing size."""
        bounds = [0.0, *self.size_edges, None]
        return [
            self._summary(self.bucket == i, name, bounds[i], bounds[i + 1])
            for i, name in enumerate(bucket_names(self.size_edges))
        ]

    def overall(self) -> dict:
        return self._summary(np.ones(len(self.sizes), bool), "all", 0.0, None)

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "matched_threshold": self.matched_threshold,
            "num_anchors": self.num_anchors,
            "size_measure": "sqrt(box area) in input pixels",
            "size_edges": list(self.size_edges),
            "all": self.overall(),
            "buckets": self.buckets(),
        }


def anchor_coverage(
    boxes: np.ndarray,
    anchors: np.ndarray,
    image_size: tuple[int, int],
    matched_threshold: float,
    size_edges=(16, 32, 64, 128),
) -> Coverage:
    """Coverage of normalized ground-truth ``boxes [N, 4]`` by ``anchors [A, 4]`` of an input of
    ``image_size = (H, W)`` (module docstring)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = (int(v) for v in image_size)
    edges = tuple(float(e) for e in size_edges)
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"size edges must increase, got {size_edges}")
    h = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * height
    w = np.clip(boxes[:, 3] - boxes[:, 1], 0, None) * width
    sizes = np.sqrt(h * w)
    best, positives = best_anchor_iou(boxes, anchors, matched_threshold)
    return Coverage(
        image_size=(height, width),
        matched_threshold=float(matched_threshold),
        num_anchors=int(np.asarray(anchors).shape[0]),
        size_edges=edges,
        sizes=sizes,
        best_iou=best,
        positives=positives,
        bucket=np.searchsorted(np.asarray(edges), sizes, side="right"),
    )
