"""SSD post-processing: sigmoid scores, box decoding and per-class NMS with static shapes.

Reference semantics (TF OD API ``batch_multiclass_non_max_suppression`` with ``use_static_shapes``,
i.e. ``tf.image.non_max_suppression_padded`` per class, TF 2.21):

1. ``scores = sigmoid(logits)[..., 1:]`` (background dropped); boxes decoded with the box coder.
2. Per class, greedy NMS in order (score descending, anchor index ascending) over candidates with
   ``score > score_threshold``; a box is suppressed when its IoU with a kept box is ``>=
   iou_threshold``, where ``IoU = inter / (area_a + area_b - inter + 1e-8)``. The first
   ``max_per_class`` kept boxes are selected. Quirk kept for equality: a kept box whose four
   coordinates are all ``<= 0`` still suppresses others but is not selected (TF tests
   ``any(box > 0)``).
3. All selections are clipped to ``[0, 1]``; boxes whose clipped area is 0 are dropped; the rest
   are ordered by (score desc, class asc, anchor asc) and the first ``max_total`` are returned.
   Entries past ``num_detections`` are zero (TF pads with score -1).

Speed: per (image, class) only the top K scores (``candidates_per_class``, default 128) enter a
greedy loop that runs all images and classes in parallel, one kept box per step (at most about
``max_per_class`` steps). Greedy NMS is prefix-stable (later candidates never change earlier
decisions), so the truncated result is provably identical to the full one when, for every class,
either ``max_per_class`` boxes were selected within the top K, or the (K+1)-th score is ``<=
score_threshold``, or it is strictly below the image's final ``max_total``-th score (then no
candidate past K can enter the output). This is checked on the device; only images that fail it
are redone (``lax.map`` + ``lax.cond``) with the next K (512) and, if still needed, all anchors.
Results therefore always equal the reference; K only changes the speed. (Under an outer ``vmap``
the ``cond`` becomes a ``select`` and every path runs: call this batched function directly.)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import box_coder

_NMS_EPSILON = 1e-8


@dataclasses.dataclass(frozen=True)
class NmsSettings:
    """NMS parameters (``config.detection.nms``; ``reference()``: 1e-8, 0.6, 100, 100).

    ``candidates_per_class``: increasing top-K pre-selection sizes; the whole batch runs with the
    first, and only the images whose result is not provably exact are redone, one by one, with the
    next sizes and finally with all anchors. ``None`` (or empty) always uses every anchor. This
    never changes the result, only the speed.
    """

    score_threshold: float
    iou_threshold: float
    max_per_class: int
    max_total: int
    candidates_per_class: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> NmsSettings:
        k = cfg.candidates_per_class
        return cls(
            score_threshold=float(cfg.score_threshold),
            iou_threshold=float(cfg.iou_threshold),
            max_per_class=int(cfg.max_per_class),
            max_total=int(cfg.max_total),
            candidates_per_class=tuple(int(x) for x in k) if k else None,
        )

    @classmethod
    def reference(cls) -> NmsSettings:
        return cls.from_config(config_lib.detection_config().nms)


class Detections(NamedTuple):
    """Fixed-size detections; only the first ``num_detections[b]`` rows of image b are valid."""

    boxes: jax.Array  # [B, D, 4] normalized [ymin, xmin, ymax, xmax], clipped to [0, 1]
    scores: jax.Array  # [B, D] float32, descending
    classes: jax.Array  # [B, D] int32, 0-based foreground class
    num_detections: jax.Array  # [B] int32
    anchor_indices: jax.Array  # [B, D] int32, the anchor each detection came from


def _coords(boxes: jax.Array) -> tuple[jax.Array, ...]:
    """``[..., 4]`` -> ``(ymin, xmin, ymax, xmax, area)``, each ``[...]``."""
    ymin, xmin, ymax, xmax = (boxes[..., i] for i in range(4))
    return ymin, xmin, ymax, xmax, (ymax - ymin) * (xmax - xmin)


def _iou_soa(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> jax.Array:
    """IoU of ``_coords`` tuples ``a`` (kept boxes) and ``b``, as in
    ``tf.image.non_max_suppression_padded``: ``inter / (area_a + area_b - inter + 1e-8)``."""
    ay0, ax0, ay1, ax1, a_area = a
    by0, bx0, by1, bx1, b_area = b
    i_w = jnp.maximum(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0.0)
    i_h = jnp.maximum(jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0.0)
    i_area = i_w * i_h
    return i_area / (a_area + b_area - i_area + _NMS_EPSILON)


def _greedy_nms(
    scores: jax.Array,
    boxes: jax.Array,
    valid: jax.Array,
    max_out: int,
    iou_threshold: float,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS of many independent candidate lists at once (e.g. every image and class).

    Args:
      scores: ``[..., K]``; the next kept box is the highest-scoring live candidate, the lowest
        position among ties.
      boxes: ``[..., K, 4]``, broadcastable to ``scores`` (e.g. ``[B, 1, K, 4]`` shared by classes).
      valid: ``[..., K]`` bool, candidates above the score threshold.
      max_out: selections per list.
      iou_threshold: suppress when IoU ``>=`` this.

    Returns:
      ``positions [..., max_out]`` int32 (into K) and ``counts [...]`` int32.
    """
    batch_shape = scores.shape[:-1]
    soa = _coords(boxes)  # each broadcastable to [..., K]
    slots = jnp.arange(max_out, dtype=jnp.int32)
    positions = jnp.arange(scores.shape[-1], dtype=jnp.int32)

    def cond(state):
        alive, count, _ = state
        return jnp.any(alive & (count < max_out)[..., None])

    def body(state):
        alive, count, selected = state
        active = jnp.any(alive, axis=-1) & (count < max_out)
        pos = jnp.argmax(jnp.where(alive, scores, -jnp.inf), axis=-1).astype(jnp.int32)
        kept = tuple(jnp.take_along_axis(c, pos[..., None], axis=-1) for c in soa[:4])
        kept = (*kept, (kept[2] - kept[0]) * (kept[3] - kept[1]))  # each [..., 1]
        suppressed = _iou_soa(kept, soa) >= iou_threshold  # [..., K]
        picked = positions == pos[..., None]
        alive = alive & ~(active[..., None] & (suppressed | picked))
        # TF selects only boxes with a coordinate > 0 (the others still suppress).
        counted = active & jnp.any(jnp.concatenate(kept[:4], axis=-1) > 0, axis=-1)
        write = (slots == count[..., None]) & counted[..., None]
        selected = jnp.where(write, pos[..., None], selected)
        return alive, count + counted.astype(jnp.int32), selected

    init = (
        valid,
        jnp.zeros(batch_shape, jnp.int32),
        jnp.zeros((*batch_shape, max_out), jnp.int32),
    )
    _, counts, selected = lax.while_loop(cond, body, init)
    return selected, counts


def _merge(
    boxes: jax.Array,
    anchors: jax.Array,
    scores: jax.Array,
    slot_valid: jax.Array,
    max_total: int,
) -> tuple[Detections, jax.Array]:
    """Clip, drop zero-area boxes, keep the top ``max_total`` over classes (one image).

    ``boxes [A, 4]``; ``anchors``, ``scores``, ``slot_valid`` ``[C, P]``. Returns unbatched
    ``Detections`` and the score of the last detection (``-inf`` if fewer than ``max_total``).
    """
    num_classes, per_class = scores.shape
    clipped = jnp.clip(jnp.take(boxes, anchors, axis=0), 0.0, 1.0)  # [C, P, 4]
    area = _coords(clipped)[4]
    valid = (slot_valid & (area != 0.0)).reshape(-1)
    key = jnp.where(valid, scores.reshape(-1), -jnp.inf)
    take = min(max_total, key.shape[0])
    top_scores, flat = lax.top_k(key, take)
    num = jnp.minimum(jnp.sum(valid.astype(jnp.int32)), take)
    keep = jnp.arange(take) < num
    classes = (flat // per_class).astype(jnp.int32)
    det = Detections(
        boxes=jnp.where(keep[:, None], clipped.reshape(-1, 4)[flat], 0.0),
        scores=jnp.where(keep, top_scores, 0.0),
        classes=jnp.where(keep, classes, 0),
        num_detections=num.astype(jnp.int32),
        anchor_indices=jnp.where(keep, anchors.reshape(-1)[flat], 0).astype(jnp.int32),
    )
    if take < max_total:
        pad = max_total - take
        det = Detections(
            boxes=jnp.pad(det.boxes, ((0, pad), (0, 0))),
            scores=jnp.pad(det.scores, (0, pad)),
            classes=jnp.pad(det.classes, (0, pad)),
            num_detections=det.num_detections,
            anchor_indices=jnp.pad(det.anchor_indices, (0, pad)),
        )
    last = jnp.where(num == max_total, top_scores[-1], -jnp.inf)
    return det, last


def _merge_batch(boxes, anchors, scores, counts, max_per_class, max_total):
    """``boxes [B, A, 4]``; ``anchors``, ``scores`` ``[B, C, P]``; ``counts [B, C]``."""
    slot_valid = jnp.arange(max_per_class) < counts[..., None]
    merge = lambda b, a, s, v: _merge(b, a, s, v, max_total)
    return jax.vmap(merge)(boxes, anchors, scores, slot_valid)


def _nms_full(boxes, scores_ca, score_threshold, iou_threshold, max_per_class, max_total):
    """Exact NMS over all anchors: ``boxes [B, A, 4]``, ``scores_ca [B, C, A]``."""
    valid = scores_ca > score_threshold
    pos, counts = _greedy_nms(scores_ca, boxes[:, None], valid, max_per_class, iou_threshold)
    scores = jnp.take_along_axis(scores_ca, pos, axis=-1)
    return _merge_batch(boxes, pos, scores, counts, max_per_class, max_total)[0]


def _nms_topk(boxes, scores_ca, k, score_threshold, iou_threshold, max_per_class, max_total):
    """NMS over the top ``k`` candidates per class; also returns whether that is provably exact."""
    top_scores, top_idx = lax.top_k(scores_ca, k + 1)  # [B, C, k + 1]
    # Without a barrier XLA:CPU fuses the slices below into the top_k and runs 4x slower. One
    # barrier per output: a barrier of the pair is the top_k's own tuple once the sharded
    # program's tuples are simplified, and XLA's TopkDecomposer then aborts the compilation
    # (a CHECK in HloInstruction::tuple_index) on any multi-device mesh.
    top_scores = lax.optimization_barrier(top_scores)
    top_idx = lax.optimization_barrier(top_idx)
    next_score = top_scores[..., k]
    scores_k, idx_k = top_scores[..., :k], top_idx[..., :k].astype(jnp.int32)
    cand_boxes = jax.vmap(lambda b, i: jnp.take(b, i, axis=0))(boxes, idx_k)  # [B, C, k, 4]
    valid = scores_k > score_threshold
    pos, counts = _greedy_nms(scores_k, cand_boxes, valid, max_per_class, iou_threshold)
    anchors = jnp.take_along_axis(idx_k, pos, axis=-1)
    scores = jnp.take_along_axis(scores_k, pos, axis=-1)
    det, last = _merge_batch(boxes, anchors, scores, counts, max_per_class, max_total)
    exact = (
        (counts >= max_per_class) | (next_score <= score_threshold) | (next_score < last[:, None])
    )
    return det, jnp.all(exact, axis=-1)


def _solve_image(boxes, scores_ca, tiers, args) -> Detections:
    """One image (``boxes [A, 4]``, ``scores_ca [C, A]``): try each K in ``tiers``, then all."""
    unbatch = lambda det: jax.tree_util.tree_map(lambda x: x[0], det)
    if not tiers or tiers[0] >= scores_ca.shape[-1]:
        return unbatch(_nms_full(boxes[None], scores_ca[None], *args))
    det, exact = _nms_topk(boxes[None], scores_ca[None], tiers[0], *args)
    return lax.cond(
        exact[0], lambda: unbatch(det), lambda: _solve_image(boxes, scores_ca, tiers[1:], args)
    )


def batched_multiclass_nms(
    boxes: jax.Array, scores: jax.Array, nms: NmsSettings | None = None
) -> Detections:
    """Per-class NMS for a batch (see the module docstring for the exact semantics).

    Args:
      boxes: ``[B, A, 4]`` normalized ``[ymin, xmin, ymax, xmax]``, not clipped (shared by classes).
      scores: ``[B, A, C]`` foreground scores (background already dropped).
      nms: the parameters (default: ``NmsSettings.reference()``).

    Returns:
      ``Detections`` with ``D = nms.max_total``.
    """
    nms = nms or NmsSettings.reference()
    candidates_per_class = nms.candidates_per_class
    boxes = boxes.astype(jnp.float32)
    scores_ca = jnp.swapaxes(scores.astype(jnp.float32), 1, 2)  # [B, C, A]
    num_anchors = scores_ca.shape[-1]
    args = (nms.score_threshold, nms.iou_threshold, nms.max_per_class, nms.max_total)
    tiers = tuple(int(k) for k in (candidates_per_class or ()) if k < num_anchors)
    if not tiers:
        return _nms_full(boxes, scores_ca, *args)
    fast, exact = _nms_topk(boxes, scores_ca, tiers[0], *args)

    def redo_inexact_images() -> Detections:
        def one(x):
            b, s, det, ok = x
            return lax.cond(ok, lambda: det, lambda: _solve_image(b, s, tiers[1:], args))

        return lax.map(one, (boxes, scores_ca, fast, exact))

    return lax.cond(jnp.all(exact), lambda: fast, redo_inexact_images)


def postprocess(
    box_encodings: jax.Array,
    class_logits: jax.Array,
    anchors: jax.Array,
    nms: NmsSettings | None = None,
) -> Detections:
    """Raw SSD outputs to detections.

    Args:
      box_encodings: ``[B, A, 4]`` (ty, tx, th, tw).
      class_logits: ``[B, A, C + 1]`` logits, column 0 = background.
      anchors: ``[A, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
      nms: see ``batched_multiclass_nms`` (default: the reference settings).

    Returns:
      ``Detections``: boxes ``[B, D, 4]`` clipped to [0, 1], scores ``[B, D]``, classes ``[B, D]``
      (0-based int32), num_detections ``[B]``, anchor_indices ``[B, D]``.
    """
    boxes = box_coder.decode(box_encodings.astype(jnp.float32), jnp.asarray(anchors)[None])
    scores = jax.nn.sigmoid(class_logits.astype(jnp.float32))[..., 1:]
    return batched_multiclass_nms(boxes, scores, nms)
