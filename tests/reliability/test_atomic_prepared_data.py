"""Prepared data (``data.coco_source``): keyed on the images too (names, sizes, modification
times), so a changed image prepares the split again; a reuse is logged; a preparation that fails
midway leaves no folder under the final name."""

import logging
import os

import pytest

from mobiledet_jax.data import coco_source, records, sources
from tests.helpers.tiny_coco import write_tiny_coco
from tests.helpers.tiny_configs import tiny_config


@pytest.fixture
def coco(tmp_path):
    annotations, images = write_tiny_coco(tmp_path / "coco")
    config = tiny_config(tmp_path / "cache")
    d = config.data
    d.source, d.num_shards = "coco_json", 1
    d.coco_json.train_annotations, d.coco_json.train_images = str(annotations), str(images)
    return annotations, images, d


def _key(annotations, images):
    return coco_source.fingerprint(annotations, images, max_boxes=100, label_map="dataset")


def test_the_key_follows_the_images(coco):
    annotations, images, _ = coco
    key = _key(annotations, images)
    assert _key(annotations, images) == key
    image = images / "1.jpg"
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # edited in place
    touched = _key(annotations, images)
    assert touched != key
    image.write_bytes(image.read_bytes() + b"\0")  # another size
    assert _key(annotations, images) not in (key, touched)


def test_a_changed_image_prepares_again_and_a_reuse_is_logged(coco, caplog):
    annotations, images, data_config = coco
    first = sources._prepare(data_config, "train")
    with caplog.at_level(logging.INFO):
        again = sources._prepare(data_config, "train")
    assert again.directory == first.directory
    reuse = [r.getMessage() for r in caplog.records if "reusing prepared data" in r.getMessage()]
    assert reuse == [
        f"reusing prepared data at {first.directory} ({first.num_examples} images, sources unchanged)"
    ]
    image = images / "2.jpg"
    image.write_bytes(image.read_bytes())  # rewritten: a new modification time
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        changed = sources._prepare(data_config, "train")
    assert changed.directory != first.directory  # prepared again, not the stale shards
    assert not any("reusing" in r.getMessage() for r in caplog.records)


def test_a_preparation_failing_midway_leaves_nothing_under_the_final_name(
    coco, tmp_path, monkeypatch
):
    annotations, images, _ = coco
    out = tmp_path / "prepared" / "train"
    calls = []

    def encode_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    real = records.encode_example
    monkeypatch.setattr(records, "encode_example", encode_then_fail)
    with pytest.raises(OSError, match="No space"):
        coco_source.prepare(annotations, images, out, num_shards=1, progress=False)
    assert not out.exists() and list(out.parent.iterdir()) == []  # temporary folder removed
    monkeypatch.undo()
    split = coco_source.prepare(annotations, images, out, num_shards=1, progress=False)
    assert split.num_examples >= 2 and (out / coco_source.METADATA).is_file()
