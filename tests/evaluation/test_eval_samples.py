"""An evaluation keeps the split's first K images as the model saw them, with their ground truth
and detections (``evaluation.samples``), for the pictures."""

import numpy as np

from mobiledet_jax import data
from mobiledet_jax.evaluation import evaluator as evaluator_lib
from mobiledet_jax.evaluation.samples import SampleCollector, to_display_pixels
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.models.random_weights import random_variables
from mobiledet_jax.sharding import make_mesh
from tests.helpers.tiny_configs import tiny_config


def small_config(cache_dir):
    c = tiny_config(cache_dir, num_train=8, num_val=12, num_shards=1)
    c.eval.num_sample_images = 10  # more than one batch
    return c


def test_samples_are_the_first_images_as_pixels(tmp_path):
    config = small_config(tmp_path)
    model = build_model(config.model)
    variables = random_variables(model, input_size(config.model), seed=0, class_logit_scale=10.0)
    mesh = make_mesh(config.mesh)
    ev = evaluator_lib.Evaluator(config, mesh, model=model)  # [-1, 1] batches
    metrics = ev.evaluate(variables)
    result = ev.take_result()
    assert ev.last_result is None and result.metrics == metrics
    assert result.class_names == ("circle", "square", "triangle", "cross")
    assert result.coco.last_eval is not None  # the COCOeval behind the metrics is kept
    samples = result.samples
    assert [s.image_id for s in samples] == list(range(1, 11))
    pixels = data.build_eval_iterator(config.data, 8, (96, 96), mesh, pixels=True)
    batches = [{k: np.asarray(v) for k, v in b.items()} for b in pixels]
    images = np.concatenate([b["image"] for b in batches])[:10]
    for s, image, i in zip(samples, images, range(10), strict=True):
        assert s.image.dtype == np.uint8 and s.image.shape == (96, 96, 3)
        # mapped back from [-1, 1]: the pixels within rounding
        assert np.abs(s.image.astype(int) - np.rint(image)).max() <= 1
        b, row = divmod(i, 8)
        real = batches[b]["gt_mask"][row]
        np.testing.assert_allclose(s.gt_boxes, batches[b]["gt_boxes"][row][real])
        assert len(s.det_boxes) == len(s.det_scores) == len(s.det_classes) <= 100


def test_collector_skips_padding_rows_and_stops():
    class Det:
        boxes = np.zeros((3, 5, 4))
        scores = np.ones((3, 5))
        classes = np.zeros((3, 5), int)
        num_detections = np.array([5, 2, 0])

    gt = {
        "example_mask": np.array([True, False, True]),
        "gt_mask": np.ones((3, 2), bool),
        "gt_boxes": np.zeros((3, 2, 4)),
        "gt_classes": np.zeros((3, 2), int),
        "gt_is_crowd": np.zeros((3, 2), bool),
        "image_id": np.array([7, -1, 9]),
    }
    collector = SampleCollector(3, pixels=True)
    images = np.full((3, 4, 4, 3), 300.0)
    collector.add(images, Det, gt)
    assert [s.image_id for s in collector.samples] == [7, 9] and not collector.done
    assert collector.samples[0].image.max() == 255 and len(collector.samples[1].det_boxes) == 0
    collector.add(images, Det, gt)
    assert collector.done and [s.image_id for s in collector.samples] == [7, 9, 7]
    normalized = np.array([-1.0, 2 * 100 / 255 - 1, 1.0])
    assert to_display_pixels(normalized, pixels=False).tolist() == [0, 100, 255]
