"""IoU and the argmax matcher: a hand-computed 3x4 case, force-match conflicts, a TF-op oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from mobiledet_jax.detection import matcher

# Columns: anchors; rows: ground truth (normalized ymin, xmin, ymax, xmax).
ANCHORS = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1]], np.float32)
GT = np.array([[0, 0, 0.5, 0.5], [0.25, 0.5, 0.75, 1], [0, 0, 0.9, 0.9]], np.float32)
# Hand-computed: g1 vs a2 = (0.25 * 0.5) / (0.25 + 0.25 - 0.125) = 1/3 (same for a3);
# g2 vs a1 = 0.25 / 0.81; g2 vs a2 = 0.16 / 0.9; g2 vs a3 = 0.2 / 0.86.
EXPECTED_IOU = np.array(
    [
        [0.25, 1.0, 0.0, 0.0],
        [0.25, 0.0, 1 / 3, 1 / 3],
        [0.81, 0.25 / 0.81, 0.16 / 0.9, 0.2 / 0.86],
    ]
)


def test_iou_hand_computed():
    np.testing.assert_allclose(matcher.pairwise_iou(GT, ANCHORS), EXPECTED_IOU, atol=1e-6)


def test_iou_zero_area_padding_is_zero():
    iou = matcher.pairwise_iou(np.zeros((2, 4), np.float32), ANCHORS)
    assert np.all(np.asarray(iou) == 0.0)


def test_matches_hand_computed_with_forced_match():
    iou = matcher.pairwise_iou(GT, ANCHORS)
    valid = np.ones(3, bool)
    # a0 -> g2 (0.81 >= 0.5); a1 -> g0 (1.0); a2 and a3 are below 0.5 -> unmatched ...
    plain = matcher.argmax_match(iou, valid, matcher.MatcherSettings(0.5, 0.5, False))
    np.testing.assert_array_equal(plain, [2, 0, -1, -1])
    # ... but g1's best anchor is a2 (IoU 1/3, tied with a3: the first column wins), so the forced
    # match overrides the threshold for a2.
    forced = matcher.argmax_match(iou, valid)
    np.testing.assert_array_equal(forced, [2, 0, 1, -1])


def test_force_match_conflict_lowest_row_wins():
    sim = jnp.array([[0.3, 0.1, 0.0], [0.4, 0.2, 0.0], [0.0, 0.0, 0.9]])
    # Rows 0 and 1 both claim column 0: TF's argmax over the one-hot indicator picks row 0.
    np.testing.assert_array_equal(matcher.argmax_match(sim, jnp.ones(3, bool)), [0, -1, 2])
    # An invalid row claims nothing.
    np.testing.assert_array_equal(
        matcher.argmax_match(sim, jnp.array([False, True, True])), [1, -1, 2]
    )


def test_ignore_band():
    sim = jnp.array([[0.45, 0.3, 0.7]])
    settings = matcher.MatcherSettings(0.5, 0.4, force_match_for_each_row=False)
    m = matcher.argmax_match(sim, jnp.ones(1, bool), settings)
    np.testing.assert_array_equal(m, [matcher.IGNORED, matcher.UNMATCHED, 0])
    settings = matcher.MatcherSettings(
        0.5, 0.4, force_match_for_each_row=False, negatives_lower_than_unmatched=False
    )
    m = matcher.argmax_match(sim, jnp.ones(1, bool), settings)
    np.testing.assert_array_equal(m, [matcher.UNMATCHED, matcher.IGNORED, 0])


def _tf_argmax_matcher(sim, valid_rows):
    """The op sequence of TF OD API argmax_matcher._match (thresholds 0.5/0.5, force match)."""
    sim = tf.constant(sim)
    matches = tf.argmax(sim, 0, output_type=tf.int32)
    vals = tf.reduce_max(sim, 0)
    below = tf.cast(tf.greater(0.5, vals), tf.int32)
    matches = matches * (1 - below) - 1 * below
    best = tf.argmax(sim, 1, output_type=tf.int32)
    ind = tf.one_hot(best, depth=sim.shape[1]) * tf.cast(valid_rows[:, None], tf.float32)
    rows = tf.argmax(ind, 0, output_type=tf.int32)
    mask = tf.cast(tf.reduce_max(ind, 0), tf.bool)
    return tf.where(mask, rows, matches).numpy()


def test_against_tf_ops_with_ties():
    rng = np.random.default_rng(0)
    n, m, trials = 6, 10, 40
    # Quantized values make ties (within rows and columns) frequent.
    sim = (rng.integers(0, 5, (trials, n, m)) / 4.0).astype(np.float32)
    valid = rng.uniform(size=(trials, n)) < 0.7
    # TF relies on padded rows being zero boxes: give invalid rows IoU 0.
    sim = np.where(valid[..., None], sim, 0.0).astype(np.float32)
    got = np.asarray(jax.jit(jax.vmap(matcher.argmax_match))(sim, valid))
    for trial in range(trials):
        expected = _tf_argmax_matcher(sim[trial], valid[trial])
        np.testing.assert_array_equal(got[trial], expected, err_msg=str(trial))
