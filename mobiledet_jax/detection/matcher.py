"""IoU similarity and the argmax matcher (TF OD API ``iou_similarity`` + ``argmax_matcher``).

Rows are ground-truth boxes, columns are anchors. A match vector holds, per anchor, the matched row
(``>= 0``), ``UNMATCHED`` (-1, a negative) or ``IGNORED`` (-2, neither positive nor negative).

Force-match conflicts: with ``force_match_for_each_row`` every valid row claims its best column
(``argmax`` over the row, so the lowest anchor index among ties). When several rows claim the same
column, TF resolves it with ``argmax`` over a one-hot ``[rows, columns]`` indicator, i.e. the
**lowest row index wins**; the other rows lose that forced match (they may end with no anchor at
all). This module does exactly that (checked in tests/detection/test_matcher.py). Note that a
valid row whose IoU is 0 with every anchor is still force-matched, to anchor 0, as in TF.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from mobiledet_jax import config as config_lib

UNMATCHED = -1
IGNORED = -2


@dataclasses.dataclass(frozen=True)
class MatcherSettings:
    """Argmax matcher thresholds (``config.detection.matcher``; ``reference()``: 0.5 / 0.5, forced
    match per ground-truth box)."""

    matched_threshold: float
    unmatched_threshold: float
    force_match_for_each_row: bool = True
    negatives_lower_than_unmatched: bool = True

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> MatcherSettings:
        return cls(
            matched_threshold=float(cfg.matched_threshold),
            unmatched_threshold=float(cfg.unmatched_threshold),
            force_match_for_each_row=bool(cfg.force_match_for_each_row),
            negatives_lower_than_unmatched=bool(cfg.negatives_lower_than_unmatched),
        )

    @classmethod
    def reference(cls) -> MatcherSettings:
        return cls.from_config(config_lib.detection_config().matcher)


def pairwise_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """IoU of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]`` (``[ymin, xmin, ymax, xmax]``) -> ``[N, M]``.

    TF ``box_list_ops.iou`` semantics: 0 where the intersection is 0 (so zero-area padding boxes
    give 0, never NaN).
    """
    y_min1, x_min1, y_max1, x_max1 = (boxes1[:, i : i + 1] for i in range(4))
    y_min2, x_min2, y_max2, x_max2 = (boxes2[None, :, i] for i in range(4))
    heights = jnp.maximum(0.0, jnp.minimum(y_max1, y_max2) - jnp.maximum(y_min1, y_min2))
    widths = jnp.maximum(0.0, jnp.minimum(x_max1, x_max2) - jnp.maximum(x_min1, x_min2))
    intersections = heights * widths
    areas1 = (y_max1 - y_min1) * (x_max1 - x_min1)
    areas2 = (y_max2 - y_min2) * (x_max2 - x_min2)
    unions = areas1 + areas2 - intersections
    safe_unions = jnp.where(intersections == 0.0, 1.0, unions)
    return jnp.where(intersections == 0.0, 0.0, intersections / safe_unions)


def argmax_match(
    similarity: jax.Array, valid_rows: jax.Array, settings: MatcherSettings | None = None
) -> jax.Array:
    """Match each column (anchor) of ``similarity [N, M]`` to a row (ground truth).

    Args:
      similarity: ``[N, M]`` float, e.g. ``pairwise_iou(gt_boxes, anchors)``.
      valid_rows: ``[N]`` bool; padded rows never match.
      settings: ``MatcherSettings`` (default: the reference). A column is positive if its best
        similarity is ``>= matched_threshold``, negative if below ``unmatched_threshold``
        (``negatives_lower_than_unmatched``; the roles of the two bands swap when False, TF
        semantics), ignored in between; with ``force_match_for_each_row`` every valid row keeps
        its best column (see module docstring).

    Returns:
      ``[M]`` int32: matched row, ``UNMATCHED`` (-1) or ``IGNORED`` (-2).
    """
    s = settings or MatcherSettings.reference()
    matched_threshold, unmatched_threshold = s.matched_threshold, s.unmatched_threshold
    negatives_lower_than_unmatched = s.negatives_lower_than_unmatched
    if unmatched_threshold > matched_threshold:
        raise ValueError("unmatched_threshold must be <= matched_threshold")
    if not negatives_lower_than_unmatched and unmatched_threshold == matched_threshold:
        raise ValueError("equal thresholds need negatives_lower_than_unmatched=True")
    if similarity.shape[0] == 0:
        return jnp.full(similarity.shape[1:], UNMATCHED, jnp.int32)
    valid_rows = valid_rows.astype(bool)
    # Padded rows: TF relies on zero boxes having IoU 0; masking them is equivalent and also safe
    # for padding that is not all zeros.
    sim = jnp.where(valid_rows[:, None], similarity, -1.0)
    matches = jnp.argmax(sim, axis=0).astype(jnp.int32)
    matched_vals = jnp.max(sim, axis=0)
    below = matched_vals < unmatched_threshold
    between = (matched_vals >= unmatched_threshold) & (matched_vals < matched_threshold)
    low_value, mid_value = (
        (UNMATCHED, IGNORED) if negatives_lower_than_unmatched else (IGNORED, UNMATCHED)
    )
    matches = jnp.where(below, low_value, matches)
    matches = jnp.where(between, mid_value, matches)
    if s.force_match_for_each_row:
        best_column = jnp.argmax(similarity, axis=1)  # [N], first column among ties
        indicators = jax.nn.one_hot(best_column, similarity.shape[1], dtype=jnp.int32)
        indicators = indicators * valid_rows[:, None].astype(jnp.int32)  # [N, M]
        forced_row = jnp.argmax(indicators, axis=0).astype(jnp.int32)  # lowest row wins
        forced = jnp.max(indicators, axis=0) > 0
        matches = jnp.where(forced, forced_row, matches)
    return matches
