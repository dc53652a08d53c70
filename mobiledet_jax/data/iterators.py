"""Global batches as sharded ``jax.Array``s, and the train iterator's saved position.

Each process runs its own tf.data pipeline on its own data shard and contributes the rows of the
global batch that its devices hold along the mesh's data axis;
``jax.make_array_from_process_local_data`` assembles the global array. Processes whose devices
hold the same rows (e.g. a model axis across hosts) read the same data shard.

Resume: the train iterator's position is the tf.data iterator state, saved with
``tf.train.Checkpoint(iterator=...)`` (shuffle buffer and file positions included), one file set
per process. Restoring continues with exactly the batch that would have come next, without
replaying the data; it requires the same process count, batch size and data config (checked).
"""

import json
import pathlib

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from mobiledet_jax.data import pipeline, sources
from mobiledet_jax.sharding import DATA_AXIS

try:  # tf.data only needs the host CPU: never let TensorFlow claim accelerator memory.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow devices already initialized by the caller
    pass


def data_shard(mesh: jax.sharding.Mesh, data_axis, global_batch_size: int) -> tuple:
    """(shard index, number of shards, local batch size) of this process along ``data_axis``."""
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"global batch size must be a positive int, got {global_batch_size!r}")
    axes = data_axis if isinstance(data_axis, tuple | list) else (data_axis,)
    for axis in axes:
        if axis not in mesh.shape:
            raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
    size = int(np.prod([mesh.shape[a] for a in axes]))
    if global_batch_size % size:
        raise ValueError(
            f"global batch {global_batch_size} is not divisible by the data axis size {size}"
        )
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    rows = sorted(
        {
            (idx[0].start or 0, global_batch_size if idx[0].stop is None else idx[0].stop)
            for idx in sharding.addressable_devices_indices_map((global_batch_size,)).values()
        }
    )
    start, stop = rows[0][0], rows[-1][1]
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:], strict=False)):
        raise ValueError(f"this process's batch rows are not contiguous: {rows}")
    local = stop - start
    return start // local, global_batch_size // local, local


def _to_global(local: dict, sharding, global_batch_size: int) -> dict:
    out = {}
    for key, value in local.items():
        # np.asarray views the tf.Tensor's (64-byte aligned) buffer without a copy, which a CPU
        # backend can then use as is; Tensor.numpy() would copy it first.
        value = np.asarray(value)
        shape = (global_batch_size, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


class TrainIterator:
    """Infinite iterator of global training batches.

    Each batch is a dict of ``jax.Array`` sharded along the data axis: ``image`` float32
    [B, H, W, 3] in [-1, 1], ``gt_boxes`` float32 [B, N, 4] normalized ymin/xmin/ymax/xmax,
    ``gt_classes`` int32 [B, N] (0-based class indices), ``gt_mask`` bool [B, N], ``image_id`` int32
    [B]. ``step`` counts batches taken; ``save``/``restore`` keep the position.
    """

    def __init__(self, dataset: tf.data.Dataset, sharding, global_batch_size: int, source, meta):
        self._source = source
        self.global_batch_size = global_batch_size
        self.step = 0
        self._sharding = sharding
        self._meta = meta
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    @property
    def info(self) -> sources.DatasetInfo:
        """Category mapping and size of the training split."""
        return self._source.info

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        local = next(self._iterator)
        self.step += 1
        return _to_global(local, self._sharding, self.global_batch_size)

    def _prefix(self, directory) -> pathlib.Path:
        index, count = jax.process_index(), jax.process_count()
        return pathlib.Path(directory) / f"input_process_{index:05d}_of_{count:05d}"

    def save(self, directory) -> None:
        """Writes this process's iterator state under ``directory`` (every process calls it)."""
        prefix = self._prefix(directory)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self._checkpoint.write(str(prefix))
        meta = {**self._meta, "step": self.step}
        prefix.with_suffix(".json").write_text(json.dumps(meta))

    def restore(self, directory) -> None:
        """Continues from a state written by ``save`` with the same setup."""
        prefix = self._prefix(directory)
        meta_file = prefix.with_suffix(".json")
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"no input state {meta_file}: it was saved with a different process count, or "
                "not saved at all"
            )
        meta = json.loads(meta_file.read_text())
        if {k: v for k, v in meta.items() if k != "step"} != self._meta:
            raise ValueError(f"input state {meta_file} was saved with {meta}, now {self._meta}")
        self._checkpoint.read(str(prefix)).assert_consumed()
        self.step = meta["step"]


class EvalIterable:
    """One pass over the evaluation split per ``iter()``; ``len()`` batches on every process.

    Batches hold the train keys plus ``gt_is_crowd`` bool [B, N], ``original_size`` int32 [B, 2]
    (height, width of the stored image) and ``example_mask`` bool [B] (False on padding rows,
    whose ``image_id`` is -1). ``info`` carries the category mapping and the COCO ground truth.
    """

    def __init__(
        self, dataset: tf.data.Dataset, num_batches: int, sharding, global_batch_size, info
    ):
        self.info = info
        self.num_batches = num_batches
        self.global_batch_size = global_batch_size
        self._dataset = dataset
        self._sharding = sharding

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        iterator = iter(self._dataset)
        for i in range(self.num_batches):
            try:
                local = next(iterator)
            except StopIteration:
                raise RuntimeError(
                    f"evaluation data ended after {i} of {self.num_batches} batches; the split's "
                    "metadata disagrees with its files"
                ) from None
            yield _to_global(local, self._sharding, self.global_batch_size)


def _image_size(image_size) -> tuple:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return tuple(int(s) for s in size)


def build_train_iterator(
    data_config,
    global_batch_size: int,
    image_size,
    mesh,
    seed: int,
    *,
    data_axis=DATA_AXIS,
    pixels: bool = False,
    holdout: tuple[str, float] | None = None,
) -> TrainIterator:
    """Training batches of ``data_config`` as global arrays sharded over ``mesh[data_axis]``.

    ``pixels=True``: images as float32 [0, 255] pixels (int8 calibration of an export).
    ``holdout=("held_out" | "rest", fraction)``: one part of a fixed split of the training images
    (``pipeline.in_holdout``; the architecture search's reward images and the rest)."""
    size = _image_size(image_size)
    split = sources.open_split(data_config, "train")
    shard_index, num_shards, local = data_shard(mesh, data_axis, global_batch_size)
    ds = pipeline.train_dataset(
        split,
        shard_index=shard_index,
        num_shards=num_shards,
        batch_size=local,
        image_size=size,
        cfg=data_config,
        seed=seed,
        pixels=pixels,
        holdout=holdout,
    )
    meta = {
        "seed": seed,
        "global_batch_size": global_batch_size,
        "image_size": list(size),
        "shard": [shard_index, num_shards],
        "data": data_config.to_json(sort_keys=True),
    }
    if pixels:
        meta["pixels"] = True
    if holdout is not None:
        meta["holdout"] = list(holdout)
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    return TrainIterator(ds, sharding, global_batch_size, split, meta)


def build_eval_iterator(
    data_config,
    global_batch_size: int,
    image_size,
    mesh,
    *,
    split="val",
    data_axis=DATA_AXIS,
    pixels: bool = False,
) -> EvalIterable:
    """Evaluation batches (each image once, padded last batch) over ``mesh[data_axis]``.

    ``pixels=True``: images as float32 [0, 255] pixels (the input an exported file takes)."""
    size = _image_size(image_size)
    source = sources.open_split(data_config, split)
    shard_index, num_shards, local = data_shard(mesh, data_axis, global_batch_size)
    ds, num_batches = pipeline.eval_dataset(
        source,
        shard_index=shard_index,
        num_shards=num_shards,
        batch_size=local,
        image_size=size,
        cfg=data_config,
        pixels=pixels,
    )
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    return EvalIterable(ds, num_batches, sharding, global_batch_size, source.info)
