"""Input pipeline: sources, validation, SSD augmentation and global sharded batches.

Public API::

    from mobiledet_jax import data

    cfg = data.data_config()              # the config.data block; source='synthetic' by default
    train = data.build_train_iterator(cfg, global_batch_size=64, image_size=320, mesh=mesh, seed=0)
    batch = next(train)                   # dict of global jax.Arrays sharded over mesh['data'];
                                          # keys, dtypes, shapes: data.schema
    #   image      float32 [B, H, W, 3] in [-1, 1]
    #   gt_boxes   float32 [B, N, 4]  normalized ymin, xmin, ymax, xmax   (N = cfg.max_boxes)
    #   gt_classes int32   [B, N]     0-based class index; dataset category id = info.category_ids[c]
    #   gt_mask    bool    [B, N]     real boxes (crowd boxes never appear in training targets)
    #   image_id   int32   [B]
    train.save(ckpt_dir); train.restore(ckpt_dir)   # exact resume: the next batch, no replay
    train.step                                      # batches taken so far

    evaluation = data.build_eval_iterator(cfg, global_batch_size=64, image_size=320, mesh=mesh)
    for batch in evaluation:              # len(evaluation) batches on every process
        ...                               # + gt_is_crowd [B, N], original_size int32 [B, 2]
                                          #   (height, width), example_mask bool [B]
    evaluation.info.category_ids          # class index -> dataset category id
    evaluation.info.ground_truth()        # COCO-format dict for pycocotools (crowd included)
    evaluation.info.ground_truth_path     # the same as a JSON file, when there is one

Sources (``cfg.source``): ``synthetic`` (shapes, generated on first use, no download),
``coco_json`` (an instances JSON + image folder, validated and prepared once into TFRecord
shards), users' data as they hold it (``yolo``: an Ultralytics data.yaml; ``voc``: a Pascal VOC
folder; ``tfod_tfrecord``: TF OD API records + label_map.pbtxt; see ``formats.py``), read as COCO
data and validated and prepared the same way, and ``tfds`` (``coco/2017``).
``python -m mobiledet_jax.validate_data`` reports what the validation finds in a COCO-format
dataset; ``python -m mobiledet_jax.convert_data`` writes YOLO, VOC or TFRecord data as COCO JSON.

Names are imported lazily, so that ``validate_data`` (PIL and numpy only) starts without loading
TensorFlow or JAX.
"""

import importlib

_EXPORTS = {
    "data_config": "mobiledet_jax.config",
    "build_train_iterator": f"{__name__}.iterators",
    "build_eval_iterator": f"{__name__}.iterators",
    "TrainIterator": f"{__name__}.iterators",
    "EvalIterable": f"{__name__}.iterators",
    "DatasetInfo": f"{__name__}.sources",
    "open_split": f"{__name__}.sources",
    "DataError": f"{__name__}.validate",
    "Report": f"{__name__}.validate",
    "validate_dataset": f"{__name__}.validate",
    "batch_spec": f"{__name__}.schema",
    "TRAIN_FIELDS": f"{__name__}.schema",
    "EVAL_FIELDS": f"{__name__}.schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
