"""The dataset browser (``visualization.browse``, ``python -m mobiledet_jax.browse_data``): tiles at
the model's input size with the batch's boxes drawn where the batch has them."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mobiledet_jax.visualization import browse, draw, mosaic
from tests.helpers.png_checks import assert_outlined, assert_png_with_content
from tests.helpers.tiny_configs import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def browse_config(cache_dir):
    c = tiny_config(cache_dir, num_train=16, num_val=8, num_shards=1, eval_batch_size=None)
    c.visualization.mosaic_rows = 2
    c.visualization.mosaic_columns = 3
    return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("browse_cache")


def test_drawn_boxes_are_the_batch_boxes(cache):
    """Pixel check: the batch's boxes drawn on a flat synthetic image outline exactly the
    batch's box coordinates, in their class colours."""
    config = browse_config(cache)
    stream, names = browse.examples(config, "train", False, 4, batch_size=4)
    examples = list(stream)
    assert len(examples) == 4 and names == ("circle", "square", "triangle", "cross")
    checked = 0
    for ex in examples:
        assert ex["image"].shape == (96, 96, 3)  # the model's input size
        real = ex["gt_mask"]
        for box, c in zip(ex["gt_boxes"][real], ex["gt_classes"][real], strict=True):
            flat = dict(ex, image=np.full((96, 96, 3), 128.0, np.float32))
            one = dict(flat, gt_boxes=box[None], gt_classes=c[None], gt_mask=np.ones(1, bool))
            assert_outlined(browse.render_tile(one, names), box, draw.class_color(int(c)))
            checked += 1
    assert checked >= 4


def test_mosaics_hold_the_rendered_tiles(cache, tmp_path):
    config = browse_config(cache)
    files = browse.write_mosaics(config, tmp_path, "train", augmented=True, num=8)
    assert [f.name for f in files] == ["mosaic_000.png", "mosaic_001.png"]  # 6 + 2 tiles
    pixels = [assert_png_with_content(f) for f in files]
    assert pixels[0].shape == (2 * 96 + mosaic.GAP, 3 * 96 + 2 * mosaic.GAP, 3)
    # the same stream again: tile i of the mosaic is example i with its boxes, pixel for pixel
    stream, names = browse.examples(config, "train", True, 8, batch_size=6)
    for i, ex in enumerate(stream):
        y, x = mosaic.tile_origin(i % 6, 3, (96, 96))
        tile = pixels[i // 6][y : y + 96, x : x + 96]
        np.testing.assert_array_equal(tile, browse.render_tile(ex, names))


def test_augmentation_switch_and_val_split(cache, tmp_path):
    config = browse_config(cache)
    plain = browse.browse_data_config(config, augmented=False)
    assert not plain.augment.horizontal_flip and not plain.augment.ssd_random_crop
    assert config.data.augment.horizontal_flip  # the caller's config is untouched
    assert browse.browse_data_config(config, augmented=True).augment.ssd_random_crop
    files = browse.write_mosaics(config, tmp_path, "val", num=5)
    assert len(files) == 1
    assert_png_with_content(files[0])
    with pytest.raises(ValueError, match="split"):
        browse.write_mosaics(config, tmp_path, "test")


def test_command(cache, tmp_path):
    out = tmp_path / "mosaics"
    overrides = {
        "model.image_size": 96,
        "data.cache_dir": cache,
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 8,
        "data.num_shards": 1,
    }
    cmd = [
        sys.executable, "-m", "mobiledet_jax.browse_data", "--config=configs/quickstart.py",
        f"--output={out}", "--num=3", "--split=val",
        *[f"--config.{k}={v}" for k, v in overrides.items()],
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mosaic_000.png" in done.stdout
    assert_png_with_content(out / "mosaic_000.png")
