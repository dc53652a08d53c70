"""SSD target assignment on padded ground truth (TF OD API ``target_assigner`` for SSD).

IoU similarity, argmax matching (``matcher.MatcherSettings``; the reference: thresholds 0.5/0.5,
force match per ground-truth box), then:

- class targets ``[A, C + 1]``: one-hot at ``class + 1`` for a positive anchor, all zeros for an
  unmatched or ignored one (``encode_background_as_zeros``; the background slot is always 0);
- regression targets ``[A, 4]``: Faster R-CNN codes of the matched box, zeros elsewhere;
- class weights ``[A]``: 1, except 0 for ignored anchors (only possible with distinct thresholds);
- ``num_matches``: the number of positive anchors (TF's ``sum(reg_weights)``).

Shapes are static: ground truth is padded to ``N`` boxes with a validity mask. Runs under jit;
``batch_assign_targets`` is the vmapped version.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mobiledet_jax.detection import box_coder, matcher


class Targets(NamedTuple):
    """Per-anchor training targets; add a leading ``[B]`` for the batched version."""

    cls_targets: jax.Array  # [A, C + 1] float32, 0/1
    cls_weights: jax.Array  # [A] float32
    reg_targets: jax.Array  # [A, 4] float32, (ty, tx, th, tw)
    positive: jax.Array  # [A] bool, matched anchors (TF reg_weights > 0)
    matches: jax.Array  # [A] int32, matched gt row, -1 unmatched, -2 ignored
    num_matches: jax.Array  # [] int32


def assign_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_mask: jax.Array,
    num_classes: int,
    matcher_settings: matcher.MatcherSettings | None = None,
) -> Targets:
    """Targets for one image.

    Args:
      anchors: ``[A, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
      gt_boxes: ``[N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``, padded.
      gt_classes: ``[N]`` int, 0-based foreground class ids.
      gt_mask: ``[N]`` bool, True for real boxes.
      num_classes: foreground classes ``C`` (90 for COCO); targets have ``C + 1`` slots.
      matcher_settings: the argmax matcher's (default: the reference).

    Returns:
      ``Targets`` with the shapes listed on the class.
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_mask = jnp.asarray(gt_mask, bool)
    similarity = matcher.pairwise_iou(gt_boxes, anchors)  # [N, A]
    matches = matcher.argmax_match(similarity, gt_mask, matcher_settings)
    positive = matches >= 0
    row = jnp.maximum(matches, 0)

    matched_boxes = jnp.take(gt_boxes, row, axis=0)  # [A, 4]
    codes = box_coder.encode(matched_boxes, anchors)
    reg_targets = jnp.where(positive[:, None], codes, 0.0)

    matched_classes = jnp.take(jnp.asarray(gt_classes, jnp.int32), row, axis=0)
    one_hot = jax.nn.one_hot(matched_classes + 1, num_classes + 1, dtype=jnp.float32)
    cls_targets = jnp.where(positive[:, None], one_hot, 0.0)
    cls_weights = jnp.where(matches == matcher.IGNORED, 0.0, 1.0).astype(jnp.float32)
    return Targets(
        cls_targets=cls_targets,
        cls_weights=cls_weights,
        reg_targets=reg_targets,
        positive=positive,
        matches=matches,
        num_matches=jnp.sum(positive.astype(jnp.int32)),
    )


def batch_assign_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_mask: jax.Array,
    num_classes: int,
    matcher_settings: matcher.MatcherSettings | None = None,
) -> Targets:
    """``assign_targets`` over a batch: ``gt_boxes [B, N, 4]``, ``gt_classes [B, N]``,
    ``gt_mask [B, N]``, shared ``anchors [A, 4]``; every ``Targets`` field gains a leading ``B``."""
    fn = lambda b, c, m: assign_targets(anchors, b, c, m, num_classes, matcher_settings)
    return jax.vmap(fn)(gt_boxes, gt_classes, gt_mask)
