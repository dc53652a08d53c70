"""Default experiment configuration (ml_collections), shared by the files in ``configs/``.

Every default lives here; each file under ``configs/`` picks a model and overrides a few fields, and the
command line overrides any field with ``--config.<field>=<value>``. The returned ConfigDict is locked,
so a mistyped key (in a config file or on the command line) is an error, never silently ignored.
"""

import ml_collections


class ConfigError(ValueError):
    """A setting that cannot work (or a config that does not fit its data): the commands report it
    in one line and exit 2, before anything is prepared or compiled."""


# Input sources understood by ``mobiledet_jax.data`` and label maps of ``config.data.label_map``.
SOURCES = ("synthetic", "coco_json", "tfds", "yolo", "voc", "tfod_tfrecord")
LABEL_MAPS = ("dataset", "coco90")

# The published architectures (each has configs/<name>.py) and, with them, the model names
# understood by ``mobiledet_jax.models.build_model``: "searched" is a backbone table held in
# ``config.model.arch`` (the result of ``python -m mobiledet_jax.search``; configs/searched.py).
PUBLISHED_MODELS = (
    "mobiledet_cpu",
    "mobiledet_dsp",
    "mobiledet_edgetpu",
    "mobiledet_gpu",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)
SEARCHED_MODEL = "searched"
MODEL_NAMES = (*PUBLISHED_MODELS, SEARCHED_MODEL)


def model_config(name: str = "mobiledet_edgetpu") -> ml_collections.ConfigDict:
    """The ``config.model`` block: architecture and numerics."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    m = ml_collections.ConfigDict()
    m.name = name
    m.num_classes = (
        90  # foreground classes; the head predicts num_classes + 1 slots (0 = background)
    )
    m.image_size = 320  # square input; (height, width) sizes are set with image_height/image_width
    m.image_height = -1  # > 0 overrides image_size for the height
    m.image_width = -1  # > 0 overrides image_size for the width
    m.width_multiplier = 1.0  # the TF1 depth_multiplier, applied with the round8 rule
    # The backbone's BatchNorm momentum (TF decay) is the table's (MobileDets 0.99, MobileNetV3
    # 0.97, MobileNetV2 0.9997 as the TF1 configs) capped at this. The moving averages need
    # ~1 / (1 - momentum) steps to forget their initial values: at 0.9997 they still hold 79% of
    # them after 800 steps, and the quickstart's MobileNetV2 evaluated at AP 0.001; short recipes
    # cap it.
    m.bn_momentum_max = 1.0
    # DSP block 20 (Fused 160->160): residual in TF1 (the published checkpoints), not in TF2.
    m.dsp_block20_residual = True
    # "float32", "bfloat16" or "auto" (bfloat16 on TPU, float32 elsewhere); parameters, BN
    # statistics, optimizer state and the loss stay float32. "auto": the quickstart over three
    # seeds trains as well in bfloat16 as in float32 (benchmarks/dtype_parity.py, README)
    m.compute_dtype = "auto"
    # > 0: backbone BatchNorms over maps of at least this many pixels (e.g. 1600 = 40x40) compute
    # their train-mode statistics in one shifted pass that XLA fuses into the conv (fewer HBM
    # bytes on TPU; models.layers.OnePassBatchNorm); 0: two passes everywhere, as TF
    m.bn_one_pass_min_pixels = 0
    # how convolutions compute (models.layers.CONV_FORMS): "auto" picks by the backend the program
    # is compiled for: on a CPU, regular convs as a matmul over strided views and depthwise convs
    # as per-channel multiply-adds (MobileDet-EdgeTPU's 320x320 train step 2.8x faster on 2 cores,
    # benchmarks/train_step_vs_tf.py; compiles take about 2x longer); elsewhere XLA's convolution.
    # "conv" / "shifted" force one; the same parameters and outputs (export and QAT use "conv")
    m.conv_form = "auto"
    # name == "searched": the backbone table as JSON (models.specs.spec_to_json; the "rows" of a
    # search's arch.json, read by configs/searched.py); "" for the published models
    m.arch = ""
    # int8 files and QAT (models/qat.py): "asymmetric" is TFLite's scheme (per-channel weights,
    # activations with zero points); "symmetric": zero-point-0 activations and per-tensor weights,
    # for DSP / NNAPI delegates that require them (post-training through qwix, and QAT)
    m.int8_scheme = "asymmetric"
    return m


# The paper's two standalone-training schedules (docs/reference/recipe.md).
SCHEDULES = {
    # 400K steps, global batch 512, peak 0.8, linear warmup over 2000 steps from 0.13333.
    "long": dict(num_steps=400_000, batch_size=512, base_lr=0.8, warmup_steps=2000,
                 warmup_lr=0.13333),
    # 50K steps, global batch 1024, peak 4.0. The paper gives no warmup for it; we keep the long
    # schedule's shape: 2000 warmup steps from the same 1/6 of the peak.
    "short": dict(num_steps=50_000, batch_size=1024, base_lr=4.0, warmup_steps=2000,
                  warmup_lr=4.0 / 6),
}  # fmt: skip


def train_config(schedule: str = "long") -> ml_collections.ConfigDict:
    """The ``config.train`` block: optimizer, schedule, loop."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    t = ml_collections.ConfigDict()
    t.schedule = schedule
    for k, v in SCHEDULES[schedule].items():
        setattr(t, k, v)
    t.hold_steps = 0
    t.momentum = 0.9  # SGD with (non-Nesterov) momentum
    t.l2_weight = 4e-5  # slim convention: l2_weight * 0.5 * sum(w^2) over conv kernels
    t.grad_clip_norm = 0.0  # 0: none (the reference config sets none)
    t.log_every = 100  # steps between metric lines (>= 1; every setting: config_checks.py)
    # NaN/Inf guard: the loss, gradient norm and update norm of every step are checked on the host
    # with each log window and before every checkpoint save and evaluation, so nothing non-finite
    # is ever saved. N > 0 also checks every N steps (each check waits for the device); 0: only then.
    t.nan_check_every = 0
    # Quantization-aware training (models/qat.py, qwix): fake int8 quantization as TFLite does it
    # (per-channel symmetric weights, per-tensor activation ranges in the `quant_stats` collection,
    # BN folded, ReLU6 fused), calibrated on the first batch and saved in checkpoints; evaluation
    # runs the fake-quant model, and `export --format=int8` converts it instead of PTQ. Usually
    # with checkpoint.init_from=<float workdir> and a lower learning rate. A conv that qwix would
    # leave float is an error (QatError).
    t.qat = False
    # QAT: fold BatchNorm into the conv kernels at the start (the starting model's moving
    # statistics, models.qat.fold_batch_norms) and keep it frozen, so the fake quantization sees
    # the folded kernels the int8 file holds (needed for per-tensor weights, int8_scheme
    # "symmetric", where BN's scale stays 1 too). False: BN trains on batch statistics, unfolded.
    t.qat_fold_bn = True
    # QAT with qat_fold_bn: steps before BN's statistics freeze (TF's freeze_bn_delay). 0: fold and
    # freeze at the start. N > 0: for the first N steps the conv is the folded one with TF's
    # correction to batch statistics while the moving statistics still learn
    # (models/bn_folding.py); at step N they are folded into the kernels and frozen.
    t.qat_bn_freeze_delay = 0
    return t


def base_config(model_name: str = "mobiledet_edgetpu", schedule: str = "long"):
    """A complete, unlocked experiment config. Config files lock it before returning."""
    c = ml_collections.ConfigDict()
    c.model = model_config(model_name)
    c.train = train_config(schedule)
    c.data = data_config()
    c.detection = detection_config()
    c.export = export_config()
    c.visualization = visualization_config()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data axis; -1 = all devices (parameters replicated)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 2000  # steps between checkpoints (>= 1; the last step is saved)
    c.checkpoint.keep = 3  # most recent checkpoints kept (the best-by-mAP one is kept apart)
    c.checkpoint.async_save = True
    c.checkpoint.init_from = ""  # workdir of a checkpoint to fine-tune from ("" = from scratch)
    # its checkpoint: "latest", "best" (<init_from>/best, kept by training) or a step number
    c.checkpoint.init_from_step = "latest"
    c.checkpoint.restore_scopes = ("backbone", "neck")  # must restore completely from init_from

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 10_000  # 0 disables periodic evaluation (the final one still runs)
    c.eval.batch_size = 64
    c.eval.split = "val"
    c.eval.max_batches = -1  # -1 = the whole split; 0 = no evaluation at all
    # LiteRT threads for scoring .tflite files; 1 = the export report's numbers (the NMS op's tie
    # order among equal uint8 scores depends on the thread count)
    c.eval.tflite_threads = 1
    # Figures of an evaluation (evaluation/visual_report.py): TensorBoard images and PR curves at
    # every evaluation of a training run, and <workdir>/eval_<step>/ (PNGs, sample images,
    # metrics.json) after the final one and from `evaluate`. False: metrics only.
    c.eval.figures = True
    c.eval.num_sample_images = 8  # the split's first K images: ground truth beside detections
    c.eval.sample_score_threshold = 0.3  # detections drawn on the sample images
    # Confusion matrix (evaluation/confusion.py): detections at or above this score, matched to
    # ground truth at IoU >= confusion_iou_threshold whatever their classes.
    c.eval.confusion_score_threshold = 0.3
    c.eval.confusion_iou_threshold = 0.5

    c.seed = 0
    return c


def detection_config() -> ml_collections.ConfigDict:
    """The ``config.detection`` block: anchors, matching, loss and NMS of the reference recipe
    (the TF1 configs of the published MobileDets; docs/reference/head_and_anchors.md)."""
    d = ml_collections.ConfigDict()
    d.anchors = ml_collections.ConfigDict()
    d.anchors.min_scale = 0.2  # scale of map 1; map 0 uses lowest_layer_boxes
    d.anchors.max_scale = 0.95  # scale of map 5; scales are linear in between, then 1.0
    d.anchors.aspect_ratios = (1.0, 2.0, 0.5, 3.0, 0.3333)  # maps 1..5, + 1 interpolated
    d.anchors.interpolated_scale_aspect_ratio = 1.0  # sqrt(s_l * s_l+1) box; 0 drops it
    d.anchors.reduce_boxes_in_lowest_layer = True  # map 0: the three (scale, ratio) boxes below
    d.anchors.lowest_layer_boxes = ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))  # scale 0.2 = min_scale
    d.matcher = ml_collections.ConfigDict()
    d.matcher.matched_threshold = 0.5  # IoU >= this: positive anchor
    d.matcher.unmatched_threshold = 0.5  # IoU < this: negative; in between: ignored
    d.matcher.force_match_for_each_row = True  # every box keeps its best anchor
    d.matcher.negatives_lower_than_unmatched = True  # TF's band order
    d.loss = ml_collections.ConfigDict()
    d.loss.focal_alpha = 0.75  # weight of target-1 entries (1 - alpha for target 0)
    d.loss.focal_gamma = 2.0
    d.loss.huber_delta = 1.0  # smooth-L1 (Huber) transition point
    d.loss.classification_weight = 1.0
    d.loss.localization_weight = 1.0
    d.nms = ml_collections.ConfigDict()
    d.nms.score_threshold = 1e-8
    d.nms.iou_threshold = 0.6
    d.nms.max_per_class = 100
    d.nms.max_total = 100
    # Top-K pre-selection sizes of the exact fast NMS (speed only: results never change).
    d.nms.candidates_per_class = (128, 512)
    return d


def export_config() -> ml_collections.ConfigDict:
    """The ``config.export`` block: what ``python -m mobiledet_jax.export`` does by default (its
    flags override these fields)."""
    e = ml_collections.ConfigDict()
    e.target = "cpu"  # cpu (float32), gpu (float16), edgetpu and dsp (full int8)
    e.format = ""  # "" = the target's preset; float32, float16 or int8
    e.outputs = "postprocessed"  # or "raw" (box encodings and class logits, no NMS op)
    e.representative_images = 64  # int8 calibration images (training input or calibration_images)
    e.parity_images = 8  # evaluation images for the raw-output parity check against JAX
    e.eval_split = "val"  # split of the parity images and the COCO comparison
    e.eval_images = -1  # COCO comparison images: -1 the whole split, 0 skip
    e.eval_batch_size = 16
    e.latency_runs = 50  # timed invokes (1 thread, XNNPACK); 0 skips the latency measurement
    e.fast_nms = False  # the post-processing op's class-agnostic "fast" NMS instead of per class
    e.float_input = False  # float formats: float32 pixel input instead of uint8
    e.edgetpu_runtime_version = 14  # EdgeTPU runtime the delegate rules check against
    e.seed = 0
    # Class names, one per line ("" = <workdir>/labels.txt, else the data config's categories).
    e.labels = ""
    # int8 calibration from raw images: a folder or a glob (frames of the deployment camera are
    # best); "" = the data config's training input. The report states the source and the count.
    e.calibration_images = ""
    # "frigate": what Frigate's EdgeTPU detector takes (edgetpu int8, post-processed, uint8 input)
    e.preset = ""
    # int8 files: "mul_add" writes each HARD_SWISH as MUL, ADD, MUL and "mean" each global
    # AVERAGE_POOL_2D (squeeze-excite) as MEAN: XNNPACK's int8 kernels run those, not the converter's
    # ops (export/int8_kernels.py). "op" / "avg_pool" keep the converter's ops.
    e.int8_hard_swish = "mul_add"
    e.int8_global_pool = "mean"
    # "" = the model's config.model.int8_scheme; "symmetric" (zero-point-0 activations, per-tensor
    # weights) post-training quantizes a float model for delegates that require it
    e.int8_scheme = ""
    return e


def visualization_config() -> ml_collections.ConfigDict:
    """The ``config.visualization`` block: mosaics (``browse_data``), dataset statistics
    (``validate_data --plots``) and the look of every figure (``mobiledet_jax/visualization``)."""
    v = ml_collections.ConfigDict()
    v.mosaic_columns = 4  # images per mosaic row
    v.mosaic_rows = 4  # rows per mosaic file (mosaic_000.png, ...)
    # Anchor coverage buckets: edges of sqrt(box area) in input pixels (detection/anchor_coverage).
    v.coverage_size_edges = (16, 32, 64, 128)
    v.max_scatter_points = 20_000  # box-size scatter plots draw a fixed random subset beyond this
    v.max_legend_classes = 12  # curves of more classes are drawn without a legend
    v.sample_min_side = 320  # evaluation sample images are enlarged (integer factor) up to this
    v.figure_dpi = 100
    return v


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

    # Users' data as they hold it (data/formats.py), validated and prepared once like COCO JSON;
    # `python -m mobiledet_jax.convert_data` writes any of them as COCO JSON files.
    d.yolo = ml_collections.ConfigDict()
    d.yolo.data_yaml = ""  # Ultralytics data.yaml: names, path, train, val (data/yolo_source.py)
    d.voc = ml_collections.ConfigDict()
    d.voc.root = ""  # folder with Annotations/, JPEGImages/, ImageSets/Main/ (data/voc_source.py)
    d.voc.train_set = "train"  # ImageSets/Main/<name>.txt of each split
    d.voc.val_set = "val"
    # () -> the 20 VOC classes when every name found is one of them, else the sorted names found.
    d.voc.class_names = ()
    # TF OD API tf.train.Example records: comma-separated globs, local or gs:// (data/tfod_source.py)
    d.tfod_tfrecord = ml_collections.ConfigDict()
    d.tfod_tfrecord.train_pattern = ""
    d.tfod_tfrecord.val_pattern = ""
    d.tfod_tfrecord.label_map = ""  # label_map.pbtxt (StringIntLabelMap)
    # VOC and TF OD API 'difficult' objects as iscrowd=1: ignored in evaluation, as the VOC protocol
    # does, and not training targets. False: ordinary boxes.
    d.difficult_as_crowd = True

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


def search_config() -> ml_collections.ConfigDict:
    """The ``config.search`` block of ``python -m mobiledet_jax.search`` (docs/search.md): the
    space, the latency model and target, the reward, and the REINFORCE controller (TuNAS'
    constants). The shared weights train with ``config.train`` (its steps are the search's)."""
    s = ml_collections.ConfigDict()
    s.space = "tiny"  # search.space.SPACES: <target>_<ibn|ibn_fused|ibn_fused_tucker>, tiny, test
    # Latency table JSON (python -m mobiledet_jax.latency_table); it must carry an accuracy report
    s.cost_model = ""
    s.c0_ms = 0.0  # latency target in ms; 0: c0_scale x the table's latency of the middle arch
    s.c0_scale = 1.0
    s.reward = (
        "abs"  # abs: Q + beta |c/c0 - 1|; mnas: Q (c/c0)^beta; mnas_hard: Q min((c/c0)^beta, 1)
    )
    s.beta = -0.10
    s.quality = "ap"  # reward quality on the reward batch: "ap" (COCO AP@[.5:.95]) or "ap50"
    s.reward_fraction = 0.1  # training images held out for the reward (never val, never trained on)
    s.reward_batch_size = 32
    s.controller_lr = 5e-3  # Adam(b1=0, b2=0.999, eps=1e-8); 0 until rl_delay, then x10 to the end
    s.rl_delay = 0.25  # fraction of the steps before the controller learns
    s.op_warmup = 0.25  # fraction of the steps over which op decisions fade from uniform
    s.filter_warmup = 0.25  # fraction of the steps over which widths fade from the largest
    s.baseline_momentum = 0.95
    s.entropy_weight = 0.0
    s.log_logits_every = 25  # steps between controller-probability records (pictures, TensorBoard)
    # recompute each supernet branch in the backward pass instead of keeping its intermediates
    # (search.supernet, "Memory"): about one more forward pass of compute for a fraction of the
    # memory; on in the TPU configs, whose full-size train step does not fit an HBM without it
    s.remat = False
    return s


def search_base_config() -> ml_collections.ConfigDict:
    """A complete, unlocked search config: the shared weights train with the quickstart's recipe
    (``apply_quickstart_recipe``) for 1500 steps unless a config file says otherwise."""
    c = base_config("searched", "long")
    apply_quickstart_recipe(c)
    c.search = search_config()
    c.train.num_steps = 1500
    c.checkpoint.every_steps = 250
    return c


def apply_quickstart_recipe(c: ml_collections.ConfigDict) -> None:
    """The quickstart's sizes and optimizer on the embedded synthetic data (configs/quickstart.py;
    also the recipe a searched architecture is compared with on a CPU): 4 classes at 160x160, 800
    steps of 16 images, SGD peak 0.2 after 50 warm-up steps, flips only, one final evaluation,
    backbone BatchNorm momentum at most 0.99."""
    c.model.num_classes = 4  # the synthetic dataset's classes
    c.model.image_size = 160
    c.model.bn_momentum_max = 0.99  # 800 steps: the moving averages must converge (config.model)
    c.data.synthetic.num_train = 4096  # generated once (~30 s), cached
    c.data.augment.ssd_random_crop = False  # flips only: faster early learning
    t = c.train
    t.num_steps = 800
    t.batch_size = 16
    t.base_lr = 0.2
    t.warmup_lr = 0.02
    t.warmup_steps = 50
    t.log_every = 25
    c.checkpoint.every_steps = 200
    c.eval.every_steps = 0  # evaluate once, at the end
    c.eval.batch_size = 32


SEARCH_VARIANTS = ("ibn", "ibn_fused", "ibn_fused_tucker")  # the paper's search-space ablations


def search_tpu_config(target: str, arg: str = "") -> ml_collections.ConfigDict:
    """The full-size MobileDets search on a TPU slice (configs/search_<target>.py), unlocked:
    COCO train2017 through TFDS (10% held out for the reward) at 320x320; the shared weights
    train with SGD peak 2.0, 2000 warm-up steps and cosine decay at batch 512; the reward batch
    is 512 too. (The paper's stand-alone short schedule uses 1024 at peak 4.0; the supernet's
    train step at 1024, 64 images a v5e chip, needs 16.7 GiB even with its branches
    rematerialized, over v5e's 16 GiB; at 512, with the linearly scaled rate, XLA's buffer
    assignment totals 8.3 GiB.) ``arg``: ``[<variant>][:final]``, variant one of SEARCH_VARIANTS (default
    ibn_fused_tucker), ``final`` for 100K steps (default 50K, the ablations' length)."""
    parts = [p for p in (arg or "").split(":") if p]
    unknown = [p for p in parts if p not in (*SEARCH_VARIANTS, "final")]
    if unknown:
        raise ValueError(
            f"unknown search option {unknown[0]!r}: use [<{'|'.join(SEARCH_VARIANTS)}>][:final]"
        )
    variant = next((p for p in parts if p in SEARCH_VARIANTS), "ibn_fused_tucker")
    c = search_base_config()
    c.search.space = f"{target}_{variant}"
    c.search.reward_batch_size = 512
    c.search.remat = True
    c.model.num_classes = 90
    c.model.image_size = 320
    c.data.source = "tfds"
    c.data.label_map = "coco90"
    c.data.augment.ssd_random_crop = True
    c.eval.every_steps = 0
    t = c.train
    t.num_steps = 100_000 if "final" in parts else 50_000
    t.batch_size = 512
    t.base_lr = 2.0
    t.warmup_lr = 2.0 / 6
    t.warmup_steps = 2000
    t.log_every = 100
    c.checkpoint.every_steps = 2000
    return c
