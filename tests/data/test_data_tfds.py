"""TFDS coco source: conversion to the standard example and the clear error when not built.

(Reading a built coco/2017 needs the 20 GB download; ``tfds.testing.mock_data`` cannot generate
coco's nested object sequences, so the conversion is tested on hand-made examples.)
"""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobiledet_jax.data import data_config, tfds_source, validate


def _tfds_example(labels, boxes):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buffer, format="JPEG")
    return {
        "image": tf.constant(buffer.getvalue()),
        "image/id": tf.constant(42, tf.int64),
        "objects": {
            "bbox": tf.constant(boxes, tf.float32),
            "label": tf.constant(labels, tf.int64),
            "is_crowd": tf.constant([False, True, False]),
        },
    }


@pytest.mark.parametrize("label_map", ["dataset", "coco90"])
def test_standard_example_from_tfds_coco(label_map):
    boxes = [[0.1, 0.2, 0.5, 0.6], [-0.1, 0.5, 0.4, 1.2], [0.3, 0.3, 0.3, 0.4]]  # last: empty
    table = tf.constant(tfds_source.class_table(80, label_map), tf.int32)
    ex = tfds_source.standard_example(_tfds_example([0, 79, 5], boxes), table)
    assert (int(ex["image/height"]), int(ex["image/width"])) == (30, 40)
    np.testing.assert_allclose(ex["boxes"], [[0.1, 0.2, 0.5, 0.6], [0.0, 0.5, 0.4, 1.0]])
    expected = [0, 79] if label_map == "dataset" else [0, 89]  # person id 1, toothbrush id 90
    assert ex["classes"].numpy().tolist() == expected
    assert ex["is_crowd"].numpy().tolist() == [False, True]


def test_coco_category_ids():
    ids = tfds_source.COCO_CATEGORY_IDS
    assert len(ids) == 80 and list(ids) == sorted(set(ids)) and ids[-1] == 90


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
    cfg = data_config().tfds
    cfg.data_dir = str(tmp_path)
    with pytest.raises(validate.DataError, match="download=True"):
        tfds_source.TfdsSplit(cfg, "validation")
