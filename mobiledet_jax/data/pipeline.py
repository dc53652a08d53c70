"""Per-process tf.data pipelines: decode, augment, resize, scale, pad (docs/reference/recipe.md).

Training examples: crowd boxes removed, then ``augment.sample`` (flip + ssd_random_crop), only the
crop window decoded, resized to the model size with bilinear interpolation (TF1
``resize_bilinear`` by default, aspect ratio not kept), scaled to [-1, 1] as 2/255*x - 1, and the
boxes padded (or truncated) to ``max_boxes`` with a mask. Evaluation examples skip augmentation and
carry the image id, the original size and the crowd flags; the last batch is padded with masked
examples so that every process yields the same number of batches and each image counts once.

Per-example randomness is a stateless function of (seed, data shard, position in the stream),
so the batches depend only on the seed, and a restored tf.data iterator continues exactly.
"""

import math

import tensorflow as tf

from mobiledet_jax import pixels as pixels_lib
from mobiledet_jax.data import augment

AUTOTUNE = tf.data.AUTOTUNE


def resize_and_scale(
    image: tf.Tensor, size: tuple, half_pixel_centers: bool, pixels: bool = False
) -> tf.Tensor:
    """uint8 [h, w, 3] -> float32 [H, W, 3] in [-1, 1] (bilinear, aspect ratio not kept).

    ``pixels=True`` stops before the normalization: float32 pixels in [0, 255], the input of an
    exported file (``mobiledet_jax.pixels`` defines the normalization once)."""
    resized = tf.raw_ops.ResizeBilinear(
        images=image[tf.newaxis],
        size=tf.constant(size, tf.int32),
        align_corners=False,
        half_pixel_centers=half_pixel_centers,
    )[0]
    return resized if pixels else pixels_lib.normalize(resized)


def pad_boxes(max_boxes: int, boxes: tf.Tensor, *fields: tf.Tensor) -> tuple:
    """Pads or truncates [N, 4] boxes and [N] fields to max_boxes; returns (boxes, *fields, mask)."""
    n = tf.minimum(tf.shape(boxes)[0], max_boxes)
    pad = max_boxes - n
    out = [tf.ensure_shape(tf.pad(boxes[:max_boxes], [[0, pad], [0, 0]]), [max_boxes, 4])]
    out += [tf.ensure_shape(tf.pad(f[:max_boxes], [[0, pad]]), [max_boxes]) for f in fields]
    return (*out, tf.range(max_boxes) < n)


def preprocess_train(
    example: dict, seed: tf.Tensor, image_size: tuple, cfg, pixels: bool = False
) -> dict:
    """One training example (standard dict, see records.py) -> model inputs and padded targets."""
    train = tf.logical_not(example["is_crowd"])
    boxes = tf.boolean_mask(example["boxes"], train)
    classes = tf.boolean_mask(example["classes"], train)
    a = cfg.augment
    aug = augment.sample(
        seed,
        example["image/height"],
        example["image/width"],
        boxes,
        horizontal_flip=a.horizontal_flip,
        flip_probability=a.flip_probability,
        ssd_random_crop=a.ssd_random_crop,
        keep_original_probability=a.keep_original_probability,
    )
    image = augment.decode_crop_flip(example["image/encoded"], aug)
    image = resize_and_scale(image, image_size, cfg.half_pixel_centers, pixels)
    gt_boxes, gt_classes, gt_mask = pad_boxes(
        cfg.max_boxes, aug["boxes"], tf.boolean_mask(classes, aug["keep"])
    )
    return {
        "image": tf.ensure_shape(image, [*image_size, 3]),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_mask": gt_mask,
        "image_id": tf.cast(example["image/id"], tf.int32),
    }


def preprocess_eval(example: dict, image_size: tuple, cfg, pixels: bool = False) -> dict:
    """One evaluation example: no augmentation; crowd boxes kept and flagged."""
    image = tf.io.decode_jpeg(example["image/encoded"], channels=3)
    image = resize_and_scale(image, image_size, cfg.half_pixel_centers, pixels)
    gt_boxes, gt_classes, gt_is_crowd, gt_mask = pad_boxes(
        cfg.max_boxes, example["boxes"], example["classes"], example["is_crowd"]
    )
    return {
        "image": tf.ensure_shape(image, [*image_size, 3]),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_mask": gt_mask,
        "image_id": tf.cast(example["image/id"], tf.int32),
        "gt_is_crowd": gt_is_crowd,
        "original_size": tf.stack([example["image/height"], example["image/width"]]),
        "example_mask": tf.constant(True),
    }


HOLDOUT_PARTS = ("held_out", "rest")


def in_holdout(image_id: tf.Tensor, fraction: float) -> tf.Tensor:
    """Whether an image belongs to the held-out ``fraction`` of a split: a fixed multiplicative
    hash of its id (Knuth's 2654435761 mod 2^32), so the same images on every host, epoch and
    resume, whatever the shard or shuffle order."""
    h = tf.math.floormod(tf.cast(image_id, tf.int64) * 2654435761, 2**32)
    return tf.cast(h, tf.float64) < fraction * 2.0**32


def train_dataset(
    split,
    *,
    shard_index: int,
    num_shards: int,
    batch_size: int,
    image_size: tuple,
    cfg,
    seed: int,
    pixels: bool = False,
    holdout: tuple[str, float] | None = None,
) -> tf.data.Dataset:
    """Infinite, shuffled, augmented batches of this data shard (``batch_size`` = local batch).

    ``holdout=(part, fraction)``: only the images of one part of a fixed split of the training
    images by id (``in_holdout``): ``"held_out"`` (a ``fraction`` of them) or ``"rest"``."""
    ds = split.dataset(shard_index, num_shards, training=True, seed=seed)
    if holdout is not None:
        part, fraction = holdout
        if part not in HOLDOUT_PARTS or not 0.0 < fraction < 1.0:
            raise ValueError(
                f"holdout must be ({' or '.join(HOLDOUT_PARTS)}, 0 < f < 1), got {holdout}"
            )
        want = part == "held_out"
        ds = ds.filter(lambda ex: tf.equal(in_holdout(ex["image/id"], fraction), want))
    ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    base_seed = tf.constant([seed, shard_index], tf.int64)

    def fn(index, example):
        seed = tf.random.experimental.stateless_fold_in(base_seed, index)
        return preprocess_train(example, seed, image_size, cfg, pixels)

    ds = ds.enumerate().map(fn, num_parallel_calls=_parallel(cfg), deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(cfg.prefetch)
    return ds.with_options(_options())


def eval_dataset(
    split,
    *,
    shard_index: int,
    num_shards: int,
    batch_size: int,
    image_size: tuple,
    cfg,
    pixels: bool = False,
) -> tuple[tf.data.Dataset, int]:
    """One pass over this data shard, padded to the same number of batches on every shard.

    Returns (dataset, num_batches).
    """
    counts = [split.num_examples_for(i, num_shards) for i in range(num_shards)]
    num_batches = max(1, math.ceil(max(counts) / batch_size))
    mine = counts[shard_index]
    ds = split.dataset(shard_index, num_shards, training=False).take(mine)
    ds = ds.map(
        lambda ex: preprocess_eval(ex, image_size, cfg, pixels),
        num_parallel_calls=_parallel(cfg),
        deterministic=True,
    )
    filler = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    filler["image_id"] = tf.constant(-1, tf.int32)
    filler["example_mask"] = tf.constant(False)
    padding = tf.data.Dataset.from_tensors(filler).repeat(num_batches * batch_size - mine)
    ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True)
    return ds.prefetch(cfg.prefetch).with_options(_options()), num_batches


def _parallel(cfg) -> int:
    return AUTOTUNE if cfg.num_parallel_calls in (-1, None) else int(cfg.num_parallel_calls)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options
