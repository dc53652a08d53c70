"""The dataset browser behind ``python -m mobiledet_jax.browse_data``: mosaics of images exactly
as the model receives them, with their boxes and class names.

The batches come from the real input pipeline (``data.build_train_iterator`` or
``data.build_eval_iterator`` with ``pixels=True``): decoded, augmented (train split, with
``augmented``: ``config.data.augment`` as configured; without it flip and crop are switched off),
resized to the model's input size, boxes padded with their mask. Only the final normalization to
[-1, 1] is left out, so each tile shows the pixels the network would see, at their size, and the
boxes of the batch drawn where the batch has them (``draw.box_to_pixels``). The train split is
shuffled as in training (``config.seed``); the val split comes in order, padding rows skipped.
Mosaics hold ``config.visualization.mosaic_rows x mosaic_columns`` tiles:
``mosaic_000.png``, ``mosaic_001.png``, ...
"""

import logging
from collections.abc import Iterator

import ml_collections
import numpy as np
from etils import epath

from mobiledet_jax import data
from mobiledet_jax.models import input_size
from mobiledet_jax.sharding import host_mesh
from mobiledet_jax.visualization import draw, mosaic

SPLITS = ("train", "val")


def browse_data_config(
    config: ml_collections.ConfigDict, augmented: bool
) -> ml_collections.ConfigDict:
    """A copy of ``config.data``; without ``augmented``, horizontal flip and SSD crop are off."""
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    if not augmented:
        data_config.augment.horizontal_flip = False
        data_config.augment.ssd_random_crop = False
    return data_config


def examples(
    config: ml_collections.ConfigDict, split: str, augmented: bool, num: int, batch_size: int
) -> tuple[Iterator[dict], tuple[str, ...]]:
    """``num`` examples of ``split`` as host dicts (``image`` float32 pixels ``[H, W, 3]``,
    ``gt_boxes``, ``gt_classes``, ``gt_mask``, ``image_id``), and the class names."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    size = input_size(config.model)
    mesh = host_mesh()
    if split == "train":
        iterator = data.build_train_iterator(
            browse_data_config(config, augmented), batch_size, size, mesh, config.seed, pixels=True
        )
    else:
        if augmented:
            logging.warning("browse_data: the val split is never augmented (--augmented ignored)")
        iterator = data.build_eval_iterator(
            config.data, batch_size, size, mesh, split=split, pixels=True
        )

    def generate():
        taken = 0
        for batch in iterator:
            batch = {k: np.asarray(v) for k, v in batch.items()}
            rows = np.flatnonzero(batch.get("example_mask", np.ones(len(batch["image"]), bool)))
            for b in rows:
                if taken == num:
                    return
                taken += 1
                yield {k: v[b] for k, v in batch.items()}
            if taken == num:
                return

    return generate(), tuple(iterator.info.category_names)


def render_tile(example: dict, class_names) -> np.ndarray:
    """One example's image (uint8, input size) with its real boxes and class names drawn."""
    real = np.asarray(example["gt_mask"], bool)
    return draw.draw_boxes(
        draw.to_uint8(example["image"]),
        np.asarray(example["gt_boxes"])[real],
        np.asarray(example["gt_classes"])[real],
        class_names,
    )


def write_mosaics(
    config: ml_collections.ConfigDict,
    output_dir,
    split: str = "train",
    augmented: bool = False,
    num: int = 16,
) -> list[epath.Path]:
    """Writes ``num`` examples of ``split`` as mosaics into ``output_dir``; returns the files."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    vis = config.visualization
    per_mosaic = vis.mosaic_columns * vis.mosaic_rows
    stream, names = examples(config, split, augmented, num, batch_size=min(num, per_mosaic))
    out_dir = epath.Path(output_dir)
    written, tiles = [], []
    for example in stream:
        tiles.append(render_tile(example, names))
        if len(tiles) == per_mosaic:
            path = out_dir / f"mosaic_{len(written):03d}.png"
            written.append(mosaic.save_png(mosaic.grid(tiles, vis.mosaic_columns), path))
            tiles = []
    if tiles:
        path = out_dir / f"mosaic_{len(written):03d}.png"
        written.append(mosaic.save_png(mosaic.grid(tiles, vis.mosaic_columns), path))
    return written
