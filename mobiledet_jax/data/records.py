"""The record format of prepared splits: one ``tf.train.Example`` per image.

Every source (prepared COCO-format data, the synthetic set, TFDS) is turned into the same
per-example dict before preprocessing (:data:`EXAMPLE_KEYS`):

- ``image/encoded``: scalar string, RGB JPEG bytes;
- ``image/id``: int64; ``image/height``, ``image/width``: int32 size of the stored image;
- ``boxes``: float32 [N, 4] normalized ymin, xmin, ymax, xmax (crowd boxes included);
- ``classes``: int32 [N] contiguous class indices; ``is_crowd``: bool [N].
"""

import numpy as np
import tensorflow as tf

EXAMPLE_KEYS = (
    "image/encoded",
    "image/id",
    "image/height",
    "image/width",
    "boxes",
    "classes",
    "is_crowd",
)

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "object/bbox": tf.io.VarLenFeature(tf.float32),
    "object/class": tf.io.VarLenFeature(tf.int64),
    "object/is_crowd": tf.io.VarLenFeature(tf.int64),
}


def encode_example(
    encoded: bytes,
    image_id: int,
    height: int,
    width: int,
    boxes: np.ndarray,
    classes: np.ndarray,
    is_crowd: np.ndarray,
) -> bytes:
    """Serializes one image (see the module docstring for the fields)."""

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/id": ints([image_id]),
        "image/height": ints([height]),
        "image/width": ints([width]),
        "object/bbox": tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(boxes, np.float32).reshape(-1))
        ),
        "object/class": ints(classes),
        "object/is_crowd": ints(is_crowd),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialized record into the standard example dict (graph mode)."""
    f = tf.io.parse_single_example(serialized, _FEATURES)
    return {
        "image/encoded": f["image/encoded"],
        "image/id": f["image/id"],
        "image/height": tf.cast(f["image/height"], tf.int32),
        "image/width": tf.cast(f["image/width"], tf.int32),
        "boxes": tf.reshape(tf.sparse.to_dense(f["object/bbox"]), [-1, 4]),
        "classes": tf.cast(tf.sparse.to_dense(f["object/class"]), tf.int32),
        "is_crowd": tf.cast(tf.sparse.to_dense(f["object/is_crowd"]), tf.bool),
    }
