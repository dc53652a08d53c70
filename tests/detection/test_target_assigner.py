"""Target assignment: class/box targets, weights and match counts on padded ground truth."""

import jax
import numpy as np

from mobiledet_jax.detection import box_coder, target_assigner

# The hand-computed case of test_matcher.py: matches are [2, 0, 1, -1] (a2 is a forced match).
ANCHORS = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.5, 0.5, 1]], np.float32)
GT = np.array([[0, 0, 0.5, 0.5], [0.25, 0.5, 0.75, 1], [0, 0, 0.9, 0.9]], np.float32)


def test_assign_targets():
    gt_boxes = np.concatenate([GT, np.zeros((2, 4), np.float32)])  # padded to N = 5
    gt_classes = np.array([4, 0, 89, 7, 7], np.int32)
    gt_mask = np.array([True, True, True, False, False])
    t = jax.jit(target_assigner.assign_targets, static_argnums=4)(
        ANCHORS, gt_boxes, gt_classes, gt_mask, 90
    )
    t = jax.tree_util.tree_map(np.asarray, t)
    np.testing.assert_array_equal(t.matches, [2, 0, 1, -1])
    np.testing.assert_array_equal(t.positive, [True, True, True, False])
    assert int(t.num_matches) == 3
    assert t.cls_targets.shape == (4, 91)
    expected_cls = np.zeros((4, 91), np.float32)
    expected_cls[0, 90] = expected_cls[1, 5] = expected_cls[2, 1] = 1.0
    np.testing.assert_array_equal(t.cls_targets, expected_cls)
    np.testing.assert_array_equal(t.cls_weights, np.ones(4))
    expected_reg = np.asarray(box_coder.encode(GT[[2, 0, 1]], ANCHORS[:3]))
    np.testing.assert_allclose(t.reg_targets[:3], expected_reg, atol=1e-6)
    np.testing.assert_array_equal(t.reg_targets[3], np.zeros(4))


def test_batch_assign_targets_and_empty_image():
    gt_boxes = np.stack([GT, np.zeros_like(GT)])
    gt_classes = np.zeros((2, 3), np.int32)
    gt_mask = np.array([[True] * 3, [False] * 3])
    t = jax.jit(target_assigner.batch_assign_targets, static_argnums=4)(
        ANCHORS, gt_boxes, gt_classes, gt_mask, 3
    )
    t = jax.tree_util.tree_map(np.asarray, t)
    assert t.cls_targets.shape == (2, 4, 4) and t.reg_targets.shape == (2, 4, 4)
    np.testing.assert_array_equal(t.num_matches, [3, 0])
    np.testing.assert_array_equal(t.matches[1], [-1, -1, -1, -1])
    assert not np.any(t.cls_targets[1])
