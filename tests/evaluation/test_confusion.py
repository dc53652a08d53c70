"""The confusion matrix (``evaluation.confusion``) against hand-computed tiny cases."""

import numpy as np

from mobiledet_jax.evaluation import confusion
from mobiledet_jax.evaluation.coco_metric import CocoEvaluator


def test_hand_computed_image():
    # K = 2 classes; index 2 is background. Boxes [x, y, w, h].
    gt = [[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10], [60, 0, 20, 20]]
    gt_classes = [0, 1, 1, 0]
    crowd = [False, False, False, True]
    dets = [
        [0, 0, 10, 10],  # 0.9 class 1 on g0 (class 0): a confusion [0, 1]
        [1, 0, 10, 10],  # 0.8 class 0 on g0, already taken: false positive [2, 0]
        [20, 0, 10, 10],  # 0.7 class 1 on g1: true positive [1, 1]
        [62, 2, 8, 8],  # 0.6 inside the crowd box: not counted
        [100, 100, 5, 5],  # 0.2: below the score threshold, not counted
        [45, 0, 10, 10],  # 0.5 class 0, IoU 1/3 with g2: false positive [2, 0]; g2 missed [1, 2]
    ]
    scores = [0.9, 0.8, 0.7, 0.6, 0.2, 0.5]
    classes = [1, 0, 1, 0, 1, 0]
    matrix = confusion.image_confusion(
        gt, gt_classes, dets, scores, classes, 2, gt_is_crowd=crowd, score_threshold=0.3
    )
    np.testing.assert_array_equal(matrix, [[0, 1, 0], [0, 1, 1], [2, 0, 0]])


def test_greedy_by_score_and_best_iou():
    gt = [[0, 0, 10, 10]]
    # the higher score takes the box although the other detection overlaps it better
    dets = [[0, 0, 10, 6], [0, 0, 10, 10]]  # IoU 0.6 (score 0.9, class 0), 1.0 (0.5, class 1)
    m = confusion.image_confusion(gt, [0], dets, [0.9, 0.5], [0, 1], 2)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    # one detection between two boxes goes to the one it overlaps most
    gt = [[0, 0, 10, 10], [3, 0, 10, 10]]  # IoU with the detection: 80/120 and 90/110
    m = confusion.image_confusion(gt, [0, 1], [[2, 0, 10, 10]], [0.9], [0], 2)
    np.testing.assert_array_equal(m, [[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    # IoU exactly at the threshold matches (>=)
    m = confusion.image_confusion([[0, 0, 10, 10]], [0], [[0, 0, 10, 5]], [1.0], [0], 1)
    np.testing.assert_array_equal(m, [[1, 0], [0, 0]])


def test_empty_cases():
    m = confusion.image_confusion([], [], [], [], [], 3)
    assert m.shape == (4, 4) and not m.any()
    m = confusion.image_confusion([[0, 0, 5, 5]], [2], [], [], [], 3)
    assert m[2, 3] == 1 and m.sum() == 1
    m = confusion.image_confusion([], [], [[0, 0, 5, 5]], [0.5], [1], 3)
    assert m[3, 1] == 1 and m.sum() == 1


def test_matrix_of_a_coco_evaluator_sums_its_images():
    ev = CocoEvaluator(category_ids=(5, 9), category_names=("p", "q"))
    ev.add_batch(
        image_sizes=[[100, 100], [50, 200]],
        gt_boxes=[[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [[0, 0, 1, 0.5], [0, 0, 0, 0]]],
        gt_classes=[[0, 1], [1, 0]],
        gt_mask=[[True, True], [True, False]],
        det_boxes=[[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [[0, 0.5, 1, 1], [0, 0, 1, 0.5]]],
        det_scores=[[0.9, 0.4], [0.8, 0.7]],
        det_classes=[[0, 0], [1, 1]],
        num_detections=[2, 2],
    )
    m = confusion.confusion_matrix(ev, score_threshold=0.5)
    # image 1: p on p; q missed (its detection has score 0.4). image 2: q on q, one q false positive
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [0, 1, 0]])
