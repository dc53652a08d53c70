"""TFDS ``coco/2017`` (or another TFDS dataset with the same features) as a data source.

The dataset is read from ``data.tfds.data_dir``. When it is not built yet and ``data.tfds.download``
is set, TFDS builds it; on machines without internet put ``train2017.zip``, ``val2017.zip`` and
``annotations_trainval2017.zip`` in ``data.tfds.manual_dir`` and TFDS takes them from there.
Each process reads only its part of the split (``tfds.even_splits``), images stay encoded
(``SkipDecoding``) so training decodes just the crop window.

Boxes from TFDS are sanitized in the graph (clipped to [0, 1], empty boxes dropped) but, unlike
prepared COCO-format data, those repairs are not counted; run ``python -m
mobiledet_jax.validate_data`` on the instances JSON to see them.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobiledet_jax.data import validate

# The 80 COCO category ids, in the order of TFDS coco's ClassLabel (categories sorted by id).
COCO_CATEGORY_IDS = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)


def class_table(num_labels: int, label_map: str) -> np.ndarray:
    """TFDS coco label (0..79) -> class index: itself ("dataset") or category id - 1 ("coco90")."""
    if label_map == "dataset":
        return np.arange(num_labels)
    if label_map == "coco90":
        return np.asarray(COCO_CATEGORY_IDS[:num_labels]) - 1
    raise ValueError(f"unknown label_map {label_map!r}")


def standard_example(ex: dict, table: tf.Tensor) -> dict:
    """A TFDS coco example (image not decoded) -> the standard example dict (records.py).

    Boxes are clipped to [0, 1] and empty ones dropped (not counted, see the module docstring).
    """
    shape = tf.image.extract_jpeg_shape(ex["image"])
    objects = ex["objects"]
    boxes = tf.clip_by_value(tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4]), 0.0, 1.0)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    classes = tf.gather(table, tf.cast(objects["label"], tf.int32))
    return {
        "image/encoded": ex["image"],
        "image/id": tf.cast(ex["image/id"], tf.int64),
        "image/height": tf.cast(shape[0], tf.int32),
        "image/width": tf.cast(shape[1], tf.int32),
        "boxes": tf.boolean_mask(boxes, valid),
        "classes": tf.boolean_mask(classes, valid),
        "is_crowd": tf.boolean_mask(tf.cast(objects["is_crowd"], tf.bool), valid),
    }


class TfdsSplit:
    """One split of a TFDS detection dataset, served as standard example dicts (records.py)."""

    def __init__(self, tfds_config, split: str, label_map: str = "dataset"):
        self._builder = tfds.builder(tfds_config.name, data_dir=tfds_config.data_dir or None)
        if not self._builder.is_prepared():
            if not tfds_config.download:
                raise validate.DataError(
                    f"TFDS dataset {tfds_config.name} is not built in "
                    f"{self._builder.data_dir}; set data.tfds.download=True to build it (with "
                    "data.tfds.manual_dir holding the downloaded archives when offline)"
                )
            config = tfds.download.DownloadConfig(manual_dir=tfds_config.manual_dir or None)
            self._builder.download_and_prepare(download_config=config)
        self.split = split
        names = tuple(self._builder.info.features["objects"]["label"].names)
        self._class_table = tf.constant(class_table(len(names), label_map), tf.int32)
        if label_map == "dataset":
            self.category_ids = COCO_CATEGORY_IDS[: len(names)]
            self.category_names = names
        else:
            self.category_ids = tuple(range(1, 91))
            by_id = dict(zip(COCO_CATEGORY_IDS, names, strict=False))
            self.category_names = tuple(by_id.get(i, f"unused_{i}") for i in self.category_ids)

    @property
    def num_examples(self) -> int:
        return self._builder.info.splits[self.split].num_examples

    def num_examples_for(self, shard_index: int, num_shards: int) -> int:
        sub = tfds.even_splits(self.split, n=num_shards)[shard_index]
        return self._builder.info.splits[sub].num_examples

    def dataset(self, shard_index: int, num_shards: int, *, training: bool, seed: int = 0):
        """Standard example dicts of this process's part; shuffled and repeated when training."""
        sub = tfds.even_splits(self.split, n=num_shards)[shard_index]
        read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True)
        ds = self._builder.as_dataset(
            split=sub,
            shuffle_files=training,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        if training:
            ds = ds.repeat()
        return ds.map(self._to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _to_example(self, ex: dict) -> dict:
        return standard_example(ex, self._class_table)

    def ground_truth(self) -> dict:
        """COCO-format ground truth of the split (one pass over it, images not decoded)."""
        images, annotations = [], []
        ds = self._builder.as_dataset(
            split=self.split, decoders={"image": tfds.decode.SkipDecoding()}
        ).map(
            lambda ex: {
                "id": ex["image/id"],
                "file_name": ex["image/filename"],
                "shape": tf.image.extract_jpeg_shape(ex["image"]),
                "objects": ex["objects"],
            }
        )
        for ex in tfds.as_numpy(ds):
            height, width = int(ex["shape"][0]), int(ex["shape"][1])
            image_id = int(ex["id"])
            images.append(
                {
                    "id": image_id,
                    "file_name": ex["file_name"].decode(),
                    "height": height,
                    "width": width,
                }
            )
            objects = ex["objects"]
            for k in range(len(objects["label"])):
                ymin, xmin, ymax, xmax = (float(v) for v in objects["bbox"][k])
                annotations.append(
                    {
                        "id": int(objects["id"][k]),
                        "image_id": image_id,
                        "category_id": COCO_CATEGORY_IDS[int(objects["label"][k])],
                        "bbox": [
                            xmin * width,
                            ymin * height,
                            (xmax - xmin) * width,
                            (ymax - ymin) * height,
                        ],
                        "area": float(objects["area"][k]),
                        "iscrowd": int(objects["is_crowd"][k]),
                    }
                )
        names = self._builder.info.features["objects"]["label"].names
        categories = [
            {"id": cid, "name": n} for cid, n in zip(COCO_CATEGORY_IDS, names, strict=False)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}
