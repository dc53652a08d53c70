"""Opens a split of the configured source as standard example dicts (see ``records.py``).

COCO JSON, the synthetic set and users' YOLO, VOC and TF OD API data (``formats.py``) are validated
and prepared once into TFRecord shards (``coco_source.py``); TFDS is read as it is.

A source serves disjoint parts ("data shards") of a split: ``dataset(shard_index, num_shards)``.
Processes that must feed the same rows of the global batch (model-parallel replicas) use the same
shard index; all others read disjoint files.
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable

import jax
import tensorflow as tf
from jax.experimental import multihost_utils

from mobiledet_jax.config import LABEL_MAPS, SOURCES
from mobiledet_jax.data import coco_source, formats, records, synthetic, tfds_source, validate

SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training loop and the evaluator need to know about a split.

    ``category_ids[i]`` is the dataset category id of class index i (the model's class i + 1 slot,
    0 being background). ``ground_truth()`` returns the COCO-format ground truth (crowd boxes
    included, cleaned as in training) for pycocotools; ``ground_truth_path`` is its file when
    there is one.
    """

    category_ids: tuple
    category_names: tuple
    num_examples: int
    report: dict | None  # validation report of prepared data (None for TFDS)
    ground_truth_path: str | None
    _ground_truth_fn: Callable | None = dataclasses.field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def ground_truth(self) -> dict:
        if self.ground_truth_path:
            return json.loads(pathlib.Path(self.ground_truth_path).read_text())
        return self._ground_truth_fn()


class RecordSplit:
    """A prepared split (``coco_source.prepare``) read from its TFRecord shards."""

    def __init__(self, prepared: coco_source.PreparedSplit):
        self.prepared = prepared
        self.info = DatasetInfo(
            category_ids=prepared.category_ids,
            category_names=prepared.category_names,
            num_examples=prepared.num_examples,
            report=prepared.report,
            ground_truth_path=str(prepared.ground_truth),
        )

    def _shard_files(self, shard_index: int, num_shards: int) -> list:
        files = self.prepared.files
        if len(files) < num_shards:
            raise validate.DataError(
                f"{self.prepared.directory} has {len(files)} record files but the batch is split "
                f"over {num_shards} process groups; prepare it with data.num_shards >= "
                f"{num_shards} (delete the folder first)"
            )
        return list(files[shard_index::num_shards])

    def num_examples_for(self, shard_index: int, num_shards: int) -> int:
        self._shard_files(shard_index, num_shards)
        return sum(self.prepared.shard_sizes[shard_index::num_shards])

    def files_for(self, shard_index: int, num_shards: int) -> list:
        """The record files this data shard reads (and no other shard does)."""
        return self._shard_files(shard_index, num_shards)

    def dataset(self, shard_index: int, num_shards: int, *, training: bool, seed: int = 0):
        """Standard example dicts; when training, files are reshuffled each epoch, repeated."""
        files = self._shard_files(shard_index, num_shards)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 16),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds.map(records.parse_example, num_parallel_calls=tf.data.AUTOTUNE)


class TfdsRecordSplit:
    """Adapts ``tfds_source.TfdsSplit`` to the RecordSplit interface."""

    def __init__(self, split: tfds_source.TfdsSplit):
        self._split = split
        self.num_examples_for = split.num_examples_for
        self.dataset = split.dataset

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            category_ids=self._split.category_ids,
            category_names=self._split.category_names,
            num_examples=self._split.num_examples,
            report=None,
            ground_truth_path=None,
            _ground_truth_fn=self._split.ground_truth,
        )


def open_split(data_config, split: str):
    """The ``train`` or ``val`` split of ``data_config.source``, preparing it on first use.

    With several processes, process 0 prepares first and the others wait at a barrier, then reuse
    its output (shared file system) or prepare their own identical copy (local disks).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if data_config.source not in SOURCES:
        raise ValueError(f"unknown data.source {data_config.source!r}; expected one of {SOURCES}")
    if data_config.label_map not in LABEL_MAPS:
        raise ValueError(f"unknown data.label_map {data_config.label_map!r}")
    if data_config.source == "tfds":
        t = data_config.tfds
        name = t.train_split if split == "train" else t.val_split
        return TfdsRecordSplit(tfds_source.TfdsSplit(t, name, data_config.label_map))
    return RecordSplit(_once_per_job(lambda: _prepare(data_config, split)))


def _prepare(data_config, split: str) -> coco_source.PreparedSplit:
    cache = pathlib.Path(data_config.cache_dir or synthetic.default_cache_dir())
    if data_config.source in formats.FORMATS:
        return formats.prepare_split(data_config, split, cache)
    if data_config.source == "synthetic":
        s = data_config.synthetic
        coco = synthetic.ensure_synthetic(cache, s.num_train, s.num_val, s.seed)[split]
        annotations, images, explicit = coco.annotations, coco.images, ""
        stem = coco.annotations.parent.parent.name
    else:
        c = data_config.coco_json
        annotations = c.train_annotations if split == "train" else c.val_annotations
        images = c.train_images if split == "train" else c.val_images
        if not annotations or not images:
            raise ValueError(
                f"data.source='coco_json' needs data.coco_json.{split}_annotations and "
                f"data.coco_json.{split}_images"
            )
        explicit, stem = c.prepared_dir, pathlib.Path(annotations).stem
    options = dict(max_boxes=data_config.max_boxes, label_map=data_config.label_map)
    if explicit:
        output = pathlib.Path(explicit) / split
    else:
        key = coco_source.fingerprint(annotations, images, **options)
        output = cache / "prepared" / f"{stem}-{split}-{key}"
    return coco_source.prepare(
        annotations, images, output, num_shards=data_config.num_shards, **options
    )


def _once_per_job(fn):
    """Runs ``fn`` on process 0 first, then (after a barrier) on every process."""
    if jax.process_count() > 1:
        error = None
        if jax.process_index() == 0:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the barrier
                error = e
        multihost_utils.sync_global_devices("mobiledet_jax.data.prepare")
        if error is not None:
            raise error
    return fn()
