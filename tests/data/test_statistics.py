"""Dataset statistics of validated data (``data.statistics``) on a hand-made COCO dataset."""

import json

import numpy as np
import pytest

from mobiledet_jax.data import statistics
from tests.helpers.tiny_coco import write_tiny_coco


def test_counts_of_the_training_boxes(tmp_path):
    path, images = write_tiny_coco(tmp_path)
    report, table = statistics.validate_with_boxes(path, images)
    assert report.usable and report.counts["zero_area_box"] == 1
    assert table.class_names == ("cat", "dog")
    assert table.num_images == 3
    np.testing.assert_array_equal(table.boxes_per_class(), [2, 1])  # the crowd dog is left out
    np.testing.assert_array_equal(table.images_per_class(), [1, 1])
    np.testing.assert_array_equal(table.boxes_per_image(), [2, 1, 0])
    heights, widths = table.input_pixels((320, 320))
    np.testing.assert_allclose(heights, [160, 128, 192], rtol=1e-5)  # 50, 40, 60 % of 320
    np.testing.assert_allclose(widths, [160, 32, 96], rtol=1e-5)  # 50, 10, 30 % of 320
    s = table.summary((320, 320))
    assert s["num_boxes"] == 3 and s["num_images"] == 3
    assert s["classes"] == [
        {"name": "cat", "images": 1, "boxes": 2},
        {"name": "dog", "images": 1, "boxes": 1},
    ]
    assert s["boxes_per_image"] == {"mean": 1.0, "max": 2, "histogram": {0: 1, 1: 1, 2: 1}}
    assert s["box_aspect_ratio_w_over_h"]["p0"] == pytest.approx(0.25)
    json.dumps(s)


def test_unreadable_data_gives_no_table(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    report, table = statistics.validate_with_boxes(tmp_path / "bad.json", tmp_path)
    assert table is None and not report.usable
