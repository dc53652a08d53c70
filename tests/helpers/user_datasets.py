"""Small YOLO, Pascal VOC and TF OD API TFRecord datasets written in code (64x48 images), each with
broken files of its kind, and what the batches must hold.

Each ``write_*`` returns ``(config.data block, expected, counts)``: ``expected[split][stem]`` is the
list of ``(class index, [ymin, xmin, ymax, xmax] normalized, is_crowd)`` of the image whose file
name has that stem, in source order; ``counts`` the report's counts of the train split.
:func:`batch_boxes` reads the same from evaluation batches, for the tests to compare.
"""

import io
import pathlib

import numpy as np
from PIL import Image

from mobiledet_jax.config import data_config

H, W = 48, 64  # image size


def jpeg(noise: bool = False, fmt: str = "JPEG") -> bytes:
    if noise:  # a larger file, so that a truncated copy still has a readable header
        pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        image = Image.new("RGB", (W, H), (200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = jpeg(noise=True)
    return data[: 2 * len(data) // 3]


def _config(cache: pathlib.Path, source: str):
    cfg = data_config()
    cfg.source = source
    cfg.cache_dir = str(cache)
    cfg.num_shards = 2
    cfg.augment.horizontal_flip = False
    cfg.augment.ssd_random_crop = False
    return cfg


def _yolo_box(xc, yc, w, h):
    return [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]


def write_yolo(root: pathlib.Path, cache: pathlib.Path):
    """Ultralytics layout: images/{train,val}, labels/{train,val}, data.yaml (names as a dict)."""
    for d in ("images/train", "images/val", "labels/train", "labels/val"):
        (root / d).mkdir(parents=True)
    images = {
        "a.jpg": jpeg(),
        "b.png": jpeg(fmt="PNG"),  # re-encoded as JPEG
        "c.jpg": jpeg(),  # no label file: a negative example
        "d.jpg": jpeg(),  # bad lines
        "e.jpg": jpeg(),  # label file not UTF-8: skipped
        "f.jpg": b"not an image at all",  # header unreadable: its box cannot be placed
        "g.jpg": jpeg(),  # empty label file
        "h.jpg": truncated_jpeg(),  # header readable, decoding fails
    }
    labels = {
        "a": "0 0.5 0.5 0.5 0.5\n2 0.25 0.25 0.2 0.3\n",
        "b": "1 0.1 0.1 0.4 0.1 0.4 0.6 0.1 0.6\n",  # a polygon
        "d": "0 0.5 0.5\nx 0.5 0.5 0.1 0.1\n1.5 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.2 0.2\n"
        "0 32 24 10 10\n1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.2\n",
        "f": "0 0.5 0.5 0.2 0.2\n",
        "g": "",
        "h": "0 0.5 0.5 0.2 0.2\n",
    }
    for name, data in images.items():
        (root / "images/train" / name).write_bytes(data)
    for stem, text in labels.items():
        (root / "labels/train" / f"{stem}.txt").write_text(text)
    (root / "labels/train/e.txt").write_bytes(b"\xff\xfe\x00\x81 0 0.5")
    for stem, line in (("v1", "2 0.5 0.5 0.4 0.4"), ("v2", "1 0.3 0.6 0.2 0.4")):
        (root / "images/val" / f"{stem}.jpg").write_bytes(jpeg())
        (root / "labels/val" / f"{stem}.txt").write_text(line + "\n")
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n  2: bird\n"
    )
    cfg = _config(cache, "yolo")
    cfg.yolo.data_yaml = str(root / "data.yaml")
    expected = {
        "train": {
            "a": [
                (0, _yolo_box(0.5, 0.5, 0.5, 0.5), False),
                (2, _yolo_box(0.25, 0.25, 0.2, 0.3), False),
            ],
            "b": [(1, [0.1, 0.1, 0.6, 0.4], False)],
            "c": [],
            "d": [(1, _yolo_box(0.5, 0.5, 0.2, 0.2), False), (0, [0.4, 0.85, 0.6, 1.0], False)],
            "g": [],
        },
        "val": {
            "v1": [(2, _yolo_box(0.5, 0.5, 0.4, 0.4), False)],
            "v2": [(1, _yolo_box(0.3, 0.6, 0.2, 0.4), False)],
        },
    }
    counts = {
        "missing_label_file": 1,
        "unreadable_label_file": 1,
        "malformed_object": 3,
        "unknown_category": 1,
        "label_not_normalized": 1,
        "duplicate_label": 1,
        "annotation_of_skipped_image": 2,  # f (by the reader) and h (by the COCO checks)
        "corrupt_image": 2,
        "converted_non_jpeg": 1,
        "image_without_annotations": 2,
        "box_clipped": 1,
    }
    return cfg, expected, counts


def _voc_xml(filename: str, objects: list, size=(H, W)) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>"]
    parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>")
    for obj in objects:
        parts.append(f"<object>{obj}</object>")
    return "".join(parts) + "</annotation>"


def _voc_object(name: str, box=None, difficult: int = 0) -> str:
    coords = ""
    if box is not None:
        coords = (
            "<bndbox>"
            + "".join(
                f"<{k}>{v}</{k}>"
                for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
            )
            + "</bndbox>"
        )
    return f"<name>{name}</name><pose>Left</pose><difficult>{difficult}</difficult>{coords}"


def _voc_box(box):
    x0, y0, x1, y1 = box
    return [y0 / H, x0 / W, min(y1, H) / H, min(x1, W) / W]


def write_voc(root: pathlib.Path, cache: pathlib.Path):
    """VOC layout with names all among the 20 VOC classes (so classes = the 20, in their order)."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    cat, dog, person = 7, 11, 14  # indices in the 20 VOC classes
    xml = {
        "t1": _voc_xml(
            "t1.jpg", [_voc_object("dog", (10, 5, 40, 30)), _voc_object("cat", (1, 1, 20, 20), 1)]
        ),
        "t2": _voc_xml("t2.png", [_voc_object("person", (5, 6, 30, 40))]),  # a PNG: re-encoded
        "t3": "<annotation><object><name>dog</name>",  # not parseable: skipped
        # t4: no XML: skipped
        "t5": _voc_xml(
            "t5.jpg",
            [
                _voc_object("dog"),
                _voc_object("", (1, 1, 5, 5)),
                _voc_object(" cat ", (50, 40, 70, 60)),
            ],
            size=(99, 99),  # differs from the file: the file's size is used
        ),
        "t6": _voc_xml("t6.jpg", [_voc_object("person", (1, 2, 10, 12))]),  # image missing
        "w1": _voc_xml("w1.jpg", [_voc_object("person", (2, 3, 50, 40))]),
        "w2": _voc_xml("w2.jpg", [_voc_object("dog", (12.5, 4, 33, 44.5))]),
    }
    for image_id, text in xml.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    for image_id in ("t1", "t3", "t4", "t5", "w1", "w2"):
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg())
    (root / "JPEGImages" / "t2.png").write_bytes(jpeg(fmt="PNG"))
    (root / "ImageSets/Main/train.txt").write_text("t1\nt2\nt3\nt4\nt5\nt6\n")
    (root / "ImageSets/Main/val.txt").write_text("w1\nw2\n")
    cfg = _config(cache, "voc")
    cfg.voc.root = str(root)
    expected = {
        "train": {
            "t1": [(dog, _voc_box((10, 5, 40, 30)), False), (cat, _voc_box((1, 1, 20, 20)), True)],
            "t2": [(person, _voc_box((5, 6, 30, 40)), False)],
            "t5": [(cat, _voc_box((50, 40, 70, 60)), False)],
        },
        "val": {
            "w1": [(person, _voc_box((2, 3, 50, 40)), False)],
            "w2": [(dog, _voc_box((12.5, 4, 33, 44.5)), False)],
        },
    }
    counts = {
        "unreadable_label_file": 2,
        "malformed_object": 2,
        "difficult_object": 1,
        "crowd_box": 1,
        "converted_non_jpeg": 1,
        "image_size_mismatch": 1,
        "box_clipped": 1,
        "missing_image_file": 1,
        "annotation_of_skipped_image": 1,
    }
    return cfg, expected, counts


LABEL_MAP = """
# a label map as the TF OD API writes them
item {
  name: "/m/01yrx"
  id: 1
  display_name: "cat"
}
item { id: 2 name: 'dog' keypoints { id: 0 label: "nose" } }
item < id: 5, name: "bird" frequency: FREQUENT >
"""


def tf_example(encoded, boxes=(), labels=None, texts=None, size=(H, W), **lists) -> bytes:
    """A TF OD API record: ``boxes`` as (ymin, xmin, ymax, xmax) fractions."""
    import tensorflow as tf

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    def strings(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    feature = {
        "image/encoded": strings([encoded]),
        "image/format": strings([b"jpeg"]),
        "image/source_id": strings([b"7"]),
    }
    if size:
        feature["image/height"], feature["image/width"] = ints([size[0]]), ints([size[1]])
    for k, name in enumerate(("ymin", "xmin", "ymax", "xmax")):
        feature[f"image/object/bbox/{name}"] = floats(lists.pop(name, boxes[:, k]))
    if labels is not None:
        feature["image/object/class/label"] = ints(labels)
    if texts is not None:
        feature["image/object/class/text"] = strings([t.encode() for t in texts])
    for key, values in lists.items():
        feature[f"image/object/{key}"] = ints(values)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfod(root: pathlib.Path, cache: pathlib.Path):
    """Two train record files (the second corrupt after its first record), one val file."""
    import tensorflow as tf

    root.mkdir(parents=True, exist_ok=True)
    (root / "label_map.pbtxt").write_text(LABEL_MAP)
    box_a, box_b, box_c = (0.1, 0.2, 0.5, 0.6), (0.3, 0.1, 0.9, 0.4), (0.5, 0.5, 1.0, 1.0)
    nan = float("nan")
    train_0 = [
        tf_example(jpeg(), [box_a, box_b], labels=[1, 5]),  # 00000001
        tf_example(jpeg(fmt="PNG"), [box_b], texts=["dog"]),  # 00000002: by name, a PNG
        b"\xff\xff\xff\xff",  # 00000003: not an Example
        tf_example(jpeg(), [box_a], labels=[1], xmax=[]),  # 00000004: unequal lists
        tf_example(jpeg(), [box_a, box_c], labels=[9, 2], difficult=[0, 1]),  # 00000005
        tf_example(b"not an image", [box_a], labels=[1]),  # 00000006
        tf_example(jpeg(), [box_a, (nan, 0, 1, 1)], labels=[2, 1], size=(99, 99)),  # 00000007
    ]
    with tf.io.TFRecordWriter(str(root / "train-00000-of-00002.tfrecord")) as w:
        for record in train_0:
            w.write(record)
    path = root / "train-00001-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(tf_example(jpeg(), [box_c], labels=[5]))  # 00000008
        w.write(tf_example(jpeg(), [box_a], labels=[1]))  # corrupted below
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # a byte of the second record's data: its CRC fails
    path.write_bytes(bytes(data))
    with tf.io.TFRecordWriter(str(root / "val.tfrecord")) as w:
        w.write(tf_example(jpeg(), [box_b], labels=[2]))
        w.write(tf_example(jpeg(), [box_a, box_c], labels=[1, 5]))
    cfg = _config(cache, "tfod_tfrecord")
    cfg.tfod_tfrecord.train_pattern = str(root / "train-*-of-00002.tfrecord")
    cfg.tfod_tfrecord.val_pattern = str(root / "val.tfrecord")
    cfg.tfod_tfrecord.label_map = str(root / "label_map.pbtxt")
    cat, dog, bird = 0, 1, 2  # label map ids 1, 2, 5
    expected = {
        "train": {
            "00000001": [(cat, list(box_a), False), (bird, list(box_b), False)],
            "00000002": [(dog, list(box_b), False)],
            "00000005": [(dog, list(box_c), True)],
            "00000007": [(dog, list(box_a), False)],
            "00000008": [(bird, list(box_c), False)],
        },
        "val": {
            "00000001": [(dog, list(box_b), False)],
            "00000002": [(cat, list(box_a), False), (bird, list(box_c), False)],
        },
    }
    counts = {
        "corrupt_record_file": 1,
        "malformed_record": 2,
        "unknown_category": 1,
        "malformed_object": 1,
        "difficult_object": 1,
        "crowd_box": 1,
        "image_without_annotations": 1,  # 00000005: its only known box is difficult
        "annotation_of_skipped_image": 1,
        "corrupt_image": 1,
        "converted_non_jpeg": 1,
        "image_size_mismatch": 1,
    }
    return cfg, expected, counts


def batch_boxes(batches, ground_truth: dict) -> dict:
    """``{stem: [(class, box, is_crowd), ...]}`` of evaluation batches (numpy dicts)."""
    stem_of = {i["id"]: pathlib.PurePosixPath(i["file_name"]).stem for i in ground_truth["images"]}
    out = {}
    for b in batches:
        for row in np.flatnonzero(b["example_mask"]):
            mask = b["gt_mask"][row]
            out[stem_of[int(b["image_id"][row])]] = [
                (int(c), box.tolist(), bool(crowd))
                for c, box, crowd in zip(
                    b["gt_classes"][row][mask],
                    b["gt_boxes"][row][mask],
                    b["gt_is_crowd"][row][mask],
                    strict=True,
                )
            ]
    return out


def assert_same_boxes(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for stem, boxes in want.items():
        assert [(c, k) for c, _, k in got[stem]] == [(c, k) for c, _, k in boxes], stem
        np.testing.assert_allclose(
            np.reshape([b for _, b, _ in got[stem]], (-1, 4)),
            np.reshape([b for _, b, _ in boxes], (-1, 4)),
            atol=atol,
            err_msg=stem,
        )
