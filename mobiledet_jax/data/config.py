"""The ``config.data`` block: every input-pipeline default lives here."""

import ml_collections

SOURCES = ("synthetic", "coco_json", "tfds")
LABEL_MAPS = ("dataset", "coco90")


def data_config() -> ml_collections.ConfigDict:
    """Input pipeline defaults (ml_collections ConfigDict, unlocked).

    Paths left empty mean "the default": the cache folder is ``$MOBILEDET_DATA_CACHE`` or
    ``~/.cache/mobiledet_jax``; prepared shards of COCO-format data go under it.
    """
    d = ml_collections.ConfigDict()
    d.source = "synthetic"  # one of SOURCES
    d.cache_dir = (
        ""  # synthetic images and prepared shards; "" -> $MOBILEDET_DATA_CACHE or ~/.cache
    )
    d.max_boxes = 100  # ground truth padded/truncated to this many boxes per image, with a mask
    # "dataset": classes are the dataset's categories sorted by id, numbered 0..K-1.
    # "coco90": class = category_id - 1 (the TF1 90-slot COCO label map of the published checkpoints).
    d.label_map = "dataset"
    d.num_shards = 16  # TFRecord shards written per prepared split; processes read disjoint shards

    d.synthetic = ml_collections.ConfigDict()
    d.synthetic.num_train = 512
    d.synthetic.num_val = 128
    d.synthetic.seed = 0

    d.coco_json = ml_collections.ConfigDict()
    d.coco_json.train_annotations = ""  # instances JSON
    d.coco_json.train_images = ""  # folder the JSON's file_name entries are relative to
    d.coco_json.val_annotations = ""
    d.coco_json.val_images = ""
    d.coco_json.prepared_dir = ""  # "" -> <cache_dir>/prepared/<name>-<fingerprint>

    d.tfds = ml_collections.ConfigDict()
    d.tfds.name = "coco/2017"
    d.tfds.data_dir = ""  # "" -> TFDS default (~/tensorflow_datasets)
    d.tfds.manual_dir = (
        ""  # folder holding train2017.zip, val2017.zip, annotations_trainval2017.zip
    )
    d.tfds.download = False  # run download_and_prepare when the dataset is not built yet
    d.tfds.train_split = "train"
    d.tfds.val_split = "validation"

    d.augment = ml_collections.ConfigDict()
    d.augment.horizontal_flip = True
    d.augment.flip_probability = 0.5
    d.augment.ssd_random_crop = True
    d.augment.keep_original_probability = 0.15  # TF OD API random_coef

    # TF1 resize_bilinear (half_pixel_centers=False) matches the published checkpoints.
    d.half_pixel_centers = False
    d.shuffle_buffer = 1024  # serialized examples held per process
    d.num_parallel_calls = -1  # -1 = tf.data AUTOTUNE
    d.prefetch = 2  # batches
    return d
