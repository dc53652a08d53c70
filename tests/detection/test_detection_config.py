"""``config.detection`` holds the reference recipe, and every part of the code reads it from there."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import anchors, losses, matcher, postprocess
from mobiledet_jax.export import exporter, postprocess_op
from mobiledet_jax.models import build_model


def test_defaults_are_the_reference_recipe():
    """The values of the TF1 configs of the published MobileDets
    (ssdlite_mobiledet_*_320x320_coco_sync_4x4.config; docs/reference/head_and_anchors.md and
    docs/reference/recipe.md), written out by hand."""
    d = config_lib.detection_config()
    assert d.anchors.min_scale == 0.2 and d.anchors.max_scale == 0.95
    assert tuple(d.anchors.aspect_ratios) == (1.0, 2.0, 0.5, 3.0, 0.3333)
    assert d.anchors.interpolated_scale_aspect_ratio == 1.0
    assert d.anchors.reduce_boxes_in_lowest_layer is True
    assert tuple(map(tuple, d.anchors.lowest_layer_boxes)) == ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))
    assert (d.matcher.matched_threshold, d.matcher.unmatched_threshold) == (0.5, 0.5)
    assert d.matcher.force_match_for_each_row and d.matcher.negatives_lower_than_unmatched
    assert (d.loss.focal_alpha, d.loss.focal_gamma, d.loss.huber_delta) == (0.75, 2.0, 1.0)
    assert (d.loss.classification_weight, d.loss.localization_weight) == (1.0, 1.0)
    assert (d.nms.score_threshold, d.nms.iou_threshold) == (1e-8, 0.6)
    assert (d.nms.max_per_class, d.nms.max_total) == (100, 100)
    t = config_lib.train_config("long")
    assert (t.momentum, t.l2_weight) == (0.9, 4e-5)


def test_settings_objects_read_the_config():
    d = config_lib.detection_config()
    assert anchors.AnchorSettings.reference() == anchors.AnchorSettings.from_config(d.anchors)
    assert anchors.anchors_per_location() == (3, 6, 6, 6, 6, 6)
    assert anchors.num_anchors(320, 320) == 2034
    assert matcher.MatcherSettings.reference().matched_threshold == 0.5
    assert losses.LossSettings.reference().focal_alpha == 0.75
    nms = postprocess.NmsSettings.reference()
    assert (nms.iou_threshold, nms.max_total, nms.candidates_per_class) == (0.6, 100, (128, 512))
    op = postprocess_op.NmsConfig.from_settings()
    assert (op.iou_threshold, op.max_detections, op.detections_per_class) == (0.6, 100, 100)
    e = config_lib.export_config()
    opts = exporter.ExportOptions.from_config(e)
    assert opts == dataclasses.replace(exporter.ExportOptions(), format=None)
    assert exporter.ExportOptions.from_config(e, target="edgetpu", format=None).target == "edgetpu"


def test_a_base_config_carries_the_blocks_and_accepts_overrides():
    c = config_lib.base_config()
    c.lock()
    c.detection.matcher.matched_threshold = 0.6  # what --config.detection.matcher... sets
    c.export.target = "edgetpu"
    assert c.detection.matcher.matched_threshold == 0.6 and c.export.target == "edgetpu"


def test_changed_anchor_types_resize_the_head_and_the_anchors():
    """Fewer aspect ratios: the predictor emits as many boxes as the anchor generator makes."""
    c = config_lib.base_config("mobiledet_edgetpu")
    c.model.num_classes = 3
    c.model.width_multiplier = 0.25
    c.detection.anchors.aspect_ratios = (1.0, 2.0, 0.5)  # 4 types per location on maps 1..5
    settings = anchors.AnchorSettings.from_config(c.detection.anchors)
    assert anchors.anchors_per_location(settings) == (3, 4, 4, 4, 4, 4)
    model = build_model(c.model, c.detection.anchors)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3))), shapes)
    n = anchors.num_anchors(64, 64, settings)
    assert out["box_encodings"].shape == (1, n, 4)
    assert out["class_logits"].shape == (1, n, 4)
    assert anchors.anchors_for_image(64, 64, settings).shape == (n, 4)
    reference = anchors.anchors_for_image(64, 64)
    assert reference.shape[0] > n and np.all(np.isfinite(reference))


def test_changed_matcher_threshold_changes_the_targets():
    from mobiledet_jax.detection import target_assigner

    anchor_boxes = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.55]], jnp.float32)
    gt = jnp.array([[0.0, 0.0, 0.5, 0.5]], jnp.float32)
    args = (anchor_boxes, gt, jnp.array([1]), jnp.array([True]), 3)
    # anchor 1 has IoU 0.5 / 0.55 = 0.909 with the box: positive at 0.5, negative at 0.95
    loose = target_assigner.assign_targets(*args)
    strict = target_assigner.assign_targets(
        *args, matcher.MatcherSettings(0.95, 0.95, force_match_for_each_row=False)
    )
    assert loose.positive.tolist() == [True, True]
    assert strict.positive.tolist() == [True, False]
