"""The batch schema: keys, dtypes and shapes of the batches ``data`` yields (``pipeline``).

Shapes are per batch, with ``B`` the batch size, ``H, W`` the model input size and ``N`` the
config's ``max_boxes``::

    image        float32 [B, H, W, 3]  in [-1, 1] (pixels=True: [0, 255])
    gt_boxes     float32 [B, N, 4]     normalized ymin, xmin, ymax, xmax
    gt_classes   int32   [B, N]        0-based class index
    gt_mask      bool    [B, N]        real boxes (crowd boxes never appear in training targets)
    image_id     int32   [B]           -1 on evaluation padding rows
  evaluation batches add:
    gt_is_crowd  bool    [B, N]        COCO iscrowd
    original_size int32  [B, 2]        (height, width) of the stored image
    example_mask bool    [B]           False on padding rows

numpy only (no TensorFlow, no JAX): ``batch_spec`` gives (shape, dtype) pairs, from which
``training.aot`` builds abstract (``jax.ShapeDtypeStruct``) batches.
"""

import numpy as np

# key -> (dtype, shape with symbolic axes)
TRAIN_FIELDS = {
    "image": (np.float32, ("B", "H", "W", 3)),
    "gt_boxes": (np.float32, ("B", "N", 4)),
    "gt_classes": (np.int32, ("B", "N")),
    "gt_mask": (np.bool_, ("B", "N")),
    "image_id": (np.int32, ("B",)),
}
EVAL_FIELDS = {
    **TRAIN_FIELDS,
    "gt_is_crowd": (np.bool_, ("B", "N")),
    "original_size": (np.int32, ("B", 2)),
    "example_mask": (np.bool_, ("B",)),
}


def batch_spec(
    batch_size: int, image_size: tuple[int, int], max_boxes: int, evaluation: bool = False
) -> dict[str, tuple[tuple[int, ...], type]]:
    """``{key: (shape, dtype)}`` of a training (or ``evaluation``) batch."""
    h, w = image_size
    axes = {"B": batch_size, "H": h, "W": w, "N": max_boxes}
    fields = EVAL_FIELDS if evaluation else TRAIN_FIELDS
    return {
        key: (tuple(axes.get(a, a) for a in shape), dtype) for key, (dtype, shape) in fields.items()
    }
