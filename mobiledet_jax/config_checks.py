"""Every setting checked in one place, before any data is prepared or anything is compiled.

Why: a bad value used to surface late and far from its cause: an eval batch that does not divide
over the devices at the first evaluation (hours in), ``checkpoint.every_steps=0`` as a division by
zero after compiling, ``image_size=7`` or a negative learning rate training to nonsense and exiting
0, ``num_steps=0`` "evaluating" an untrained model. Here each is a ``ConfigError`` of one line naming
the field and what it must be (the commands exit 2), raised by:

- ``check_train_config(config, device_count, workdir)``: ``train`` calls it first thing;
- ``check_eval_config(config, device_count)``: the evaluation settings (``evaluate``, and training
  when it evaluates);
- ``check_export(opts, output)``: an export's counts and its output file;
- ``check_writable(path, what)``: a folder or file that will be written (workdir, ``--output``);
- ``check_workdir(config, workdir)``: what a workdir holds must be what the run trains. A rerun
  whose model, data or anchor settings differ from the checkpoint's is refused naming the fields
  (``model.image_size: 96 -> 128``) and the fix, and so is training on an imported workdir (a
  checkpoint without training state); nothing is written before this check.

Intervals (``train.log_every``, ``checkpoint.every_steps``) are at least 1; ``0`` means "never"
only where ``config.py`` says so (``eval.every_steps``, ``train.nan_check_every``).
"""

import json
import math
import os
from typing import Any

from etils import epath

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.config import ConfigError

MIN_INPUT_SIZE = 32  # the input side of the stride-32 C5 map's one cell; smaller is not a detector
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
CONV_FORMS = ("auto", "conv", "shifted")  # models.layers.CONV_FORMS (a test holds them equal)
EVAL_SPLITS = ("train", "val")

# What a workdir's checkpoints are made of: a rerun must not change these (config.json + meta).
HELD_PREFIXES = ("model.", "data.", "detection.anchors.", "train.qat")
# fields that only say where files are cached, how fast they are read, or how the same
# parameters are computed
NOT_HELD = frozenset(
    {
        "data.cache_dir",
        "data.prefetch",
        "data.num_parallel_calls",
        "data.coco_json.prepared_dir",
        "data.tfds.data_dir",
        "data.tfds.manual_dir",
        "data.tfds.download",
        # how the same parameters are computed: a resumed run may change them
        "model.compute_dtype",
        "model.bn_one_pass_min_pixels",
        "model.conv_form",
    }
)
MAX_LISTED = 6  # differing fields named in the message


def _fail(message: str) -> None:
    raise ConfigError(message)


def _int(config, field: str, minimum: int, meaning: str = "") -> int:
    """``config.<field>`` as an int >= ``minimum`` (ConfigError otherwise)."""
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f" ({meaning})" if meaning else ""
        _fail(f"config.{field} is {value!r}: it must be an integer >= {minimum}{extra}")
    return value


def _number(config, field: str, minimum: float, *, strict: bool = False, maximum=None) -> float:
    value = _get(config, field)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        bound += f" and <= {maximum}" if maximum is not None else ""
        _fail(f"config.{field} is {value!r}: it must be a finite number {bound}")
    return float(value)


def _choice(config, field: str, choices) -> str:
    value = _get(config, field)
    if value not in choices:
        _fail(f"config.{field} is {value!r}: expected one of {', '.join(map(str, choices))}")
    return value


def _get(config, field: str) -> Any:
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def data_devices(config, device_count: int) -> int:
    """Devices along the ``data`` axis (``mesh.data``; -1: all), checked against the machine."""
    n = config.mesh.data
    if n == -1:
        return device_count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or device_count % n:
        _fail(
            f"config.mesh.data is {n!r}: it must be -1 (all) or divide the {device_count} devices"
        )
    return n


def _divides(config, field: str, devices: int) -> None:
    batch = _int(config, field, 1)
    if batch % devices:
        low, high = batch // devices * devices, (batch // devices + 1) * devices
        hint = f"{low} or {high}" if low else f"{high}"
        _fail(f"config.{field}={batch} does not divide over the {devices} devices: use {hint}")


def _check_arch(m) -> None:
    """``model.arch`` is a backbone table (JSON with rows) exactly when the model is "searched"."""
    arch = m.get("arch", "")
    if m.name != config_lib.SEARCHED_MODEL:
        if arch:
            _fail(
                f'config.model.arch is set but config.model.name is {m.name!r}: it is read only for "searched"'
            )
        return
    if not arch:
        _fail(
            'config.model.name is "searched" but config.model.arch is empty: use '
            "--config=configs/searched.py:<search workdir>/arch.json"
        )
    try:
        table = json.loads(arch)
    except ValueError as e:
        _fail(f"config.model.arch is not JSON ({e})")
    if not isinstance(table, dict) or not table.get("blocks"):
        _fail(
            "config.model.arch holds no backbone rows (expected models.specs.spec_to_json output)"
        )


def check_model(config) -> None:
    m = config.model
    _choice(config, "model.name", config_lib.MODEL_NAMES)
    _check_arch(m)
    _int(config, "model.num_classes", 1, "foreground classes")
    _number(config, "model.width_multiplier", 0.0, strict=True)
    _choice(config, "model.compute_dtype", COMPUTE_DTYPES)
    _choice(config, "model.conv_form", CONV_FORMS)
    for field, value in (("image_height", m.image_height), ("image_width", m.image_width)):
        if value <= 0:
            value, field = m.image_size, "image_size"
        if not isinstance(value, int) or value < MIN_INPUT_SIZE:
            _fail(
                f"config.model.{field} is {value!r}: the input must be at least "
                f"{MIN_INPUT_SIZE} pixels on each side"
            )


def _exists(path: str) -> bool:
    return epath.Path(path).exists() if "://" in path else os.path.exists(path)


def _path(config, field: str, what: str, patterns: bool = False) -> None:
    value = _get(config, field)
    if not value:
        _fail(f"config.data.source={config.data.source!r} needs config.{field} ({what})")
    parts = [p.strip() for p in value.split(",") if p.strip()] if patterns else [value]
    for part in parts:
        if not any(c in part for c in "*?[") and not _exists(part):
            _fail(f"config.{field}: {part} does not exist ({what})")


def check_data(config, splits=("train", "val")) -> None:
    """The data source, its options and the paths of ``splits``."""
    d = config.data
    source = _choice(config, "data.source", config_lib.SOURCES)
    _choice(config, "data.label_map", config_lib.LABEL_MAPS)
    _int(config, "data.max_boxes", 1)
    _int(config, "data.num_shards", 1)
    _int(config, "data.shuffle_buffer", 1)
    if source == "synthetic":
        for split in splits:
            _int(config, f"data.synthetic.num_{split}", 1, "synthetic images")
    elif source == "coco_json":
        for split in splits:
            _path(config, f"data.coco_json.{split}_annotations", "a COCO instances JSON")
            _path(config, f"data.coco_json.{split}_images", "the folder of its images")
    elif source == "yolo":
        _path(config, "data.yolo.data_yaml", "an Ultralytics data.yaml")
    elif source == "voc":
        _path(config, "data.voc.root", "a Pascal VOC folder")
    elif source == "tfod_tfrecord":
        _path(config, "data.tfod_tfrecord.label_map", "a label_map.pbtxt")
        for split in splits:
            _path(config, f"data.tfod_tfrecord.{split}_pattern", "TFRecord files", patterns=True)
    augment = d.augment
    if not 0.0 <= augment.flip_probability <= 1.0:
        _fail(f"config.data.augment.flip_probability is {augment.flip_probability!r}: 0..1")
    if not 0.0 <= augment.keep_original_probability <= 1.0:
        _fail(
            "config.data.augment.keep_original_probability is "
            f"{augment.keep_original_probability!r}: 0..1"
        )


def evaluates(config) -> bool:
    """Whether a training run evaluates at all (``eval.max_batches=0``: never)."""
    return config.eval.max_batches != 0


def check_eval_config(config, device_count: int | None) -> None:
    """The evaluation settings: a batch that divides over the mesh (``device_count`` None: not
    sharded, as a ``.tflite`` evaluation), a known split, thresholds."""
    e = config.eval
    _int(config, "eval.max_batches", -1, "-1: the whole split, 0: no evaluation")
    _int(config, "eval.every_steps", 0, "0: only the final evaluation")
    _choice(config, "eval.split", EVAL_SPLITS)
    _int(config, "eval.num_sample_images", 0)
    _int(config, "eval.tflite_threads", 1)
    for field in ("sample_score_threshold", "confusion_score_threshold", "confusion_iou_threshold"):
        _number(config, f"eval.{field}", 0.0, maximum=1.0)
    _int(config, "eval.batch_size", 1)
    if e.max_batches != 0 and device_count is not None:
        _divides(config, "eval.batch_size", data_devices(config, device_count))


def check_train_config(config, device_count: int, workdir: str | None = None) -> None:
    """Every setting of a training run (see the module docstring); ConfigError on the first bad
    one. Reads nothing but the given paths' existence; writes nothing."""
    check_model(config)
    t = config.train
    steps = _int(config, "train.num_steps", 1, "the total steps of the run")
    devices = data_devices(config, device_count)
    _divides(config, "train.batch_size", devices)
    _int(config, "train.log_every", 1, "steps between metric lines")
    _int(config, "train.nan_check_every", 0, "0: only with each metric line, save and evaluation")
    _int(config, "checkpoint.every_steps", 1, "steps between checkpoints; the last step is saved")
    _int(config, "checkpoint.keep", 1, "checkpoints kept")
    base = _number(config, "train.base_lr", 0.0, strict=True)
    warmup_lr = _number(config, "train.warmup_lr", 0.0)
    warmup = _int(config, "train.warmup_steps", 0)
    hold = _int(config, "train.hold_steps", 0)
    if warmup and warmup_lr > base:
        _fail(
            f"config.train.warmup_lr ({warmup_lr:g}) is above the peak config.train.base_lr "
            f"({base:g}): the warmup must ramp up to the peak"
        )
    if warmup + hold >= steps and (warmup or hold):
        _fail(
            f"config.train.warmup_steps + hold_steps ({warmup} + {hold}) must be shorter than the "
            f"run (config.train.num_steps={steps}): lower train.warmup_steps"
        )
    _number(config, "train.momentum", 0.0, maximum=1.0)
    _number(config, "train.l2_weight", 0.0)
    _number(config, "train.grad_clip_norm", 0.0)
    if not isinstance(t.qat, bool):
        _fail(f"config.train.qat is {t.qat!r}: True or False")
    delay = t.get("qat_bn_freeze_delay", 0)
    if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
        _fail(f"config.train.qat_bn_freeze_delay is {delay!r}: a number of steps >= 0")
    if delay and not (t.qat and t.qat_fold_bn):
        _fail(
            "config.train.qat_bn_freeze_delay needs QAT with folded BatchNorm "
            "(config.train.qat=True, config.train.qat_fold_bn=True)"
        )
    check_data(config, ("train", "val") if evaluates(config) else ("train",))
    check_eval_config(config, device_count)
    if config.checkpoint.init_from:
        try:
            workdir_lib.parse_step(config.checkpoint.init_from_step)
        except ValueError as e:
            _fail(f"config.checkpoint.init_from_step: {e}")
        if not _exists(config.checkpoint.init_from):
            _fail(f"config.checkpoint.init_from: {config.checkpoint.init_from} does not exist")
    if workdir is not None:
        check_writable(workdir, "--workdir")


def check_export(opts, output: str) -> None:
    """An export's options (``export.exporter.ExportOptions``: ``config.export`` and the flags)
    and its output file, before the checkpoint is read or anything converted."""
    for name, minimum in (
        ("representative_images", 0),  # int8 without any: export.inputs names the fix
        ("parity_images", 0),
        ("eval_images", -1),
        ("eval_batch_size", 1),
        ("latency_runs", 0),
    ):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(
                f"--{name} (config.export.{name}) is {value!r}: it must be an integer >= {minimum}"
            )
    if not output or output.endswith(("/", os.sep)) or os.path.isdir(output):
        _fail(f"--output={output!r} must be a file path (e.g. model.tflite)")
    check_writable(output, "--output")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """``path`` (a folder or a file, existing or not) can be written: its nearest existing folder
    is writable. URLs (``gs://``) are not checked here."""
    text = os.fspath(path)
    if "://" in text:
        return
    probe = os.path.abspath(text)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.isfile(probe) and probe != os.path.abspath(text):
        _fail(f"{what} {text} cannot be created: {probe} is a file")
    folder = probe if os.path.isdir(probe) else os.path.dirname(probe)
    if not os.access(folder, os.W_OK | os.X_OK):
        _fail(f"{what} {text} is not writable ({folder} is read-only)")


# --- what a workdir holds ---------------------------------------------------------------------


def _flatten(d, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _held(key: str) -> bool:
    return key.startswith(HELD_PREFIXES) and key not in NOT_HELD


def _read_json(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def held_settings(workdir: str) -> tuple[int | None, bool, dict[str, Any]]:
    """(latest checkpoint step or None, whether it has training state, the held settings: the
    saved config.json's model/data/anchor fields, the checkpoint meta's model on top)."""
    step = workdir_lib.latest_step(workdir)
    if step is None:
        return None, False, {}
    folder = workdir_lib.checkpoint_dir(workdir) / str(step)
    trained = (folder / "train").exists()
    saved = _read_json(workdir_lib.workdir_path(workdir) / workdir_lib.CONFIG_FILE) or {}
    held = {k: v for k, v in _flatten(saved).items() if _held(k)}
    meta = _read_json(folder / "meta" / "metadata") or {}
    if isinstance(meta.get("model"), dict):
        held.update(_flatten(meta["model"], "model."))
    return step, trained, held


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def check_workdir(config, workdir: str) -> None:
    """Refuses a workdir whose checkpoints are not this run's (see the module docstring)."""
    step, trained, held = held_settings(workdir)
    if step is None:
        return
    where = workdir_lib.workdir_path(workdir)
    start_from = f"--config.checkpoint.init_from={where}"
    if not trained:
        _fail(
            f"workdir {where} holds an imported model (checkpoint {step}, no training state): "
            f"train it in a new --workdir with {start_from}"
        )
    new = _flatten(json.loads(config.to_json()))
    diffs = [
        f"{key}: {_show(held[key])} -> {_show(new[key])}"
        for key in sorted(held)
        if key in new and _held(key) and held[key] != new[key]
    ]
    if diffs:
        listed = ", ".join(diffs[:MAX_LISTED])
        more = f" (+{len(diffs) - MAX_LISTED} more)" if len(diffs) > MAX_LISTED else ""
        _fail(
            f"workdir {where} holds checkpoints (step {step}) of another setting: {listed}{more}; "
            f"use a new --workdir, or start one from them with {start_from}"
        )
