"""Training augmentation with TF Object Detection API semantics (docs/reference/recipe.md), graph mode.

``random_horizontal_flip`` (p=0.5) followed by ``ssd_random_crop`` with its defaults, as in
tensorflow/models research/object_detection/core/preprocessor.py:

- one of 7 options picked uniformly; option k has min_object_covered = overlap_thresh =
  (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)[k], aspect ratio range (0.5, 2.0), area range (0.1, 1.0);
- with probability 0.15 (``random_coef``) the image and boxes are kept unchanged;
- otherwise the window comes from ``sample_distorted_bounding_box`` over the boxes clipped to
  [0, 1] (max_attempts 100, the whole image when no box or no attempt fits);
- box rule (``_strict_random_crop_image``): drop boxes completely outside the window
  (ymin >= wymax, xmin >= wxmax, ymax <= wymin or xmax <= wxmin), then keep a box iff its
  intersection with the window divided by the box's own area (IoA) is >= overlap_thresh; kept
  boxes move to the window frame and are clipped to [0, 1]. The box centre plays no role.

Randomness is stateless (a seed per example), so a pipeline is a pure function of its seed.
The flip is applied to the boxes first and the crop window is mirrored back to the unflipped
image, so pixels can be decoded with ``decode_and_crop_jpeg`` (only the window is decoded) and
flipped afterwards: identical pixels to flip-then-crop, at a fraction of the decode cost.
Boxes are normalized [ymin, xmin, ymax, xmax] float32 [N, 4] throughout.
"""

import tensorflow as tf

MIN_OBJECT_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # also the overlap thresholds
ASPECT_RATIO_RANGE = (0.5, 2.0)
AREA_RANGE = (0.1, 1.0)
MAX_ATTEMPTS = 100


def flip_boxes_left_right(boxes: tf.Tensor) -> tf.Tensor:
    """[N, 4] -> [N, 4]: x -> 1 - x."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=1)


def prune_and_reframe(boxes: tf.Tensor, window: tf.Tensor, overlap_thresh) -> tuple:
    """The crop's box rule. boxes [N, 4], window [4] -> (kept boxes [M, 4] in window frame, keep [N])."""
    wy0, wx0, wy1, wx1 = tf.unstack(window)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    outside = (ymin >= wy1) | (xmin >= wx1) | (ymax <= wy0) | (xmax <= wx0)
    inter_h = tf.maximum(0.0, tf.minimum(ymax, wy1) - tf.maximum(ymin, wy0))
    inter_w = tf.maximum(0.0, tf.minimum(xmax, wx1) - tf.maximum(xmin, wx0))
    area = (ymax - ymin) * (xmax - xmin)
    ioa = tf.math.divide_no_nan(inter_h * inter_w, area)
    keep = tf.logical_not(outside) & (ioa >= overlap_thresh)
    kept = tf.boolean_mask(boxes, keep)
    origin = tf.stack([wy0, wx0, wy0, wx0])
    scale = tf.stack([wy1 - wy0, wx1 - wx0, wy1 - wy0, wx1 - wx0])
    return tf.clip_by_value((kept - origin) / scale, 0.0, 1.0), keep


def sample(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    boxes: tf.Tensor,
    *,
    horizontal_flip: bool = True,
    flip_probability: float = 0.5,
    ssd_random_crop: bool = True,
    keep_original_probability: float = 0.15,
) -> dict:
    """Draws one example's augmentation and applies it to its boxes.

    Args:
      seed: int32/int64 [2] stateless seed of this example.
      height, width: int32 scalars, the stored image size in pixels.
      boxes: float32 [N, 4] normalized boxes of the original image.

    Returns a dict: ``flip`` (bool), ``crop`` (int32 [4]: y, x, h, w in pixels of the original,
    unflipped image, for ``decode_and_crop_jpeg``), ``boxes`` (float32 [M, 4] in the output
    frame), ``keep`` (bool [N], which input boxes survive, to gather labels with), ``cropped``
    (bool, False when the original was kept) and ``overlap_thresh`` (float32, the option's).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    flip = tf.constant(False)
    if horizontal_flip:
        flip = tf.random.stateless_uniform([], seeds[0]) < flip_probability
        boxes = tf.cond(flip, lambda: flip_boxes_left_right(boxes), lambda: boxes)
    keep_all = tf.ones([tf.shape(boxes)[0]], tf.bool)
    full = tf.stack([0, 0, height, width])
    if not ssd_random_crop:
        return {
            "flip": flip,
            "crop": full,
            "boxes": boxes,
            "keep": keep_all,
            "cropped": tf.constant(False),
            "overlap_thresh": tf.constant(0.0),
        }

    option = tf.random.stateless_uniform([], seeds[1], 0, len(MIN_OBJECT_COVERED), tf.int32)
    covered = tf.gather(tf.constant(MIN_OBJECT_COVERED, tf.float32), option)
    do_crop = tf.random.stateless_uniform([], seeds[2]) > keep_original_probability

    def crop():
        begin, size, window = tf.image.stateless_sample_distorted_bounding_box(
            image_size=tf.stack([height, width, 3]),
            bounding_boxes=tf.clip_by_value(boxes, 0.0, 1.0)[tf.newaxis],
            seed=seeds[3],
            min_object_covered=covered,
            aspect_ratio_range=ASPECT_RATIO_RANGE,
            area_range=AREA_RANGE,
            max_attempts=MAX_ATTEMPTS,
            use_image_if_no_bounding_boxes=True,
        )
        new_boxes, keep = prune_and_reframe(boxes, tf.reshape(window, [4]), covered)
        y, x, h, w = begin[0], begin[1], size[0], size[1]
        x = tf.where(flip, width - x - w, x)  # the window in the unflipped image
        return tf.stack([y, x, h, w]), new_boxes, keep

    window, boxes, keep = tf.cond(do_crop, crop, lambda: (full, boxes, keep_all))
    thresh = tf.where(do_crop, covered, 0.0)
    return {
        "flip": flip,
        "crop": window,
        "boxes": boxes,
        "keep": keep,
        "cropped": do_crop,
        "overlap_thresh": thresh,
    }


def decode_crop_flip(encoded: tf.Tensor, aug: dict) -> tf.Tensor:
    """JPEG bytes -> uint8 [h, w, 3]: decodes only ``aug['crop']``, then applies ``aug['flip']``."""
    image = tf.image.decode_and_crop_jpeg(encoded, aug["crop"], channels=3)
    return tf.cond(aug["flip"], lambda: tf.reverse(image, axis=[1]), lambda: image)
