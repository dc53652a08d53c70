"""What an export reads besides the checkpoint: label names, calibration images, the evaluation
split, each from a stated source, checked against the model before anything is converted.

- **Labels** (metadata, ``<file>.labels.txt``, report): ``--labels=<file>``; else the workdir's
  label record (``<workdir>/labels.txt``, written by ``import_tf1`` for the COCO-90 map); else
  the data config's categories when their number is the model's. Nothing else: a model without
  names is an error naming ``--labels``.
- **int8 calibration** (post-training quantization): ``--calibration_images=<folder or glob>``
  (raw images, ``inference.images.model_pixels``; spread over the sorted files, unreadable ones
  skipped and listed); else the data config's augmented training input. A QAT checkpoint needs
  none (its trained ranges).
- **The evaluation split**, opened once: the whole split gives the COCO comparison, its first
  images the parity check (the ``--calibration_images`` do when the split's classes are not the
  model's; parity needs pixels only).

The data config is ``--config``'s, else the workdir's saved ``config.json``, else the defaults
(the embedded synthetic dataset). A data config whose classes are not the model's is an error
wherever it would calibrate or score the model; the defaults are then only left unused, with the
reason in the report (an imported model exports with ``--calibration_images`` and no data).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from mobiledet_jax import data
from mobiledet_jax import labels as labels_lib
from mobiledet_jax.inference import images as images_lib
from mobiledet_jax.sharding import host_mesh

DEFAULT_ORIGIN = "the default data config (synthetic shapes; the workdir has no config.json)"


@dataclasses.dataclass
class ExportInputs:
    names: list[str]
    labels_source: str
    calibration: list[np.ndarray] | None  # uint8 [H, W, 3] pixels for int8 PTQ, else None
    calibration_info: dict | None  # {"source", "images", ...} for the report
    eval_iterable: object | None  # the evaluation split as pixels, opened once
    parity_pixels: list[np.ndarray]
    parity_source: str
    coco_skipped: str | None  # why the COCO comparison does not run (None: it runs)


def _uint8(images) -> np.ndarray:
    """Float pixels as a camera delivers them: rounded uint8 (what a uint8 file takes)."""
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)


def training_pixels(data_config, n: int, size, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 ``[H, W, 3]`` images of the (augmented) training input."""
    if n <= 0:
        return []
    it = data.build_train_iterator(data_config, min(n, 16), size, host_mesh(), seed, pixels=True)
    out = []
    while len(out) < n:
        out += list(_uint8(next(it)["image"]))
    return out[:n]


def first_pixels(eval_iterable, n: int) -> list[np.ndarray]:
    """The first ``n`` real (unpadded) images of a pixel evaluation iterable, as uint8."""
    out = []
    for batch in eval_iterable:
        if len(out) >= n:
            break
        out += list(_uint8(np.asarray(batch["image"])[np.asarray(batch["example_mask"])]))
    return out[:n]


def folder_pixels(source: str, n: int, size, half_pixel_centers: bool) -> tuple[list, dict]:
    """Up to ``n`` raw images of a folder or glob, spread over the sorted files, as the model's
    uint8 input; the report's description of them."""
    files = images_lib.list_images(source)
    picked = images_lib.spread(files, n)
    pixels, skipped = [], []
    for f in picked:
        try:
            pixels.append(images_lib.model_pixels(images_lib.load_rgb(f), size, half_pixel_centers))
        except OSError as e:
            skipped.append(f"{f.name}: {' '.join(str(e).split())}")
    if not pixels:
        raise ValueError(
            f"none of the {len(picked)} images of {source} could be read: {skipped[0]}"
        )
    info = {
        "source": f"--calibration_images={source}",
        "kind": "images",
        "images": len(pixels),
        "found": len(files),
        "skipped": skipped,
    }
    return pixels, info


def _data_label(data_config, origin: str) -> str:
    return f"{origin}: data.source={data_config.source!r}, label_map={data_config.label_map!r}"


def _mismatch(num_classes: int, info, data_config, origin: str, uses: list[str]) -> ValueError:
    fix = ["a data config with the model's classes (--config=<file.py>; for a COCO-90 model "
           "e.g. --config.data.source=tfds --config.data.label_map=coco90)"]  # fmt: skip
    if "int8 calibration" in uses:
        fix.append("--calibration_images=<folder or glob of deployment images>")
    if "the COCO comparison" in uses:
        fix.append("--eval_images=0 (no COCO comparison)")
    return ValueError(
        f"the model has {num_classes} classes but {_data_label(data_config, origin)} has "
        f"{info.num_classes}; it cannot serve {' and '.join(uses)}: pass " + ", or ".join(fix)
    )


def _names(num_classes, opts, workdir_names, info, matched) -> tuple[list[str], str]:
    if opts.labels:
        return labels_lib.read_labels(opts.labels, num_classes), f"--labels={opts.labels}"
    if workdir_names is not None:
        names, where = workdir_names
        if len(names) != num_classes:
            raise ValueError(f"{where} has {len(names)} names, the model {num_classes} classes")
        return list(names), where
    if matched:
        return [str(n) for n in info.category_names], "the data config's categories"
    found = f"the data config has {info.num_classes} classes" if info else "no data config"
    raise ValueError(
        f"no label names for the model's {num_classes} classes ({found}, the workdir has no "
        "labels.txt): pass --labels=<file> (one name per line) or --config=<its data config>"
    )


def resolve(model_config, size, quantization, opts, data_config, origin, workdir_names):
    """The ``ExportInputs`` of one export (ValueError, before any conversion, on a mismatch).

    ``quantization``: None (float), ``"ptq"`` or ``"qat"``; ``origin``: where ``data_config``
    came from (``DEFAULT_ORIGIN`` for the defaults); ``workdir_names``: ``(names, path)`` of the
    workdir's label record, or None."""
    num_classes = int(model_config.num_classes)
    calib_from_data = quantization == "ptq" and not opts.calibration_images
    names_from_data = not opts.labels and workdir_names is None
    wanted = opts.parity_images > 0 or opts.eval_images != 0
    eval_iterable, info = None, None
    if wanted or names_from_data or calib_from_data:
        eval_iterable = data.build_eval_iterator(
            data_config, opts.eval_batch_size, size, host_mesh(), split=opts.eval_split, pixels=True
        )
        info = eval_iterable.info
    matched = info is not None and info.num_classes == num_classes
    uses = (["int8 calibration"] if calib_from_data else []) + (
        ["the COCO comparison"] if opts.eval_images != 0 else []
    )
    coco_skipped = None if opts.eval_images != 0 else "eval_images=0"
    if info is not None and not matched:
        if origin != DEFAULT_ORIGIN and uses:
            raise _mismatch(num_classes, info, data_config, origin, uses)
        if calib_from_data:
            raise ValueError(
                f"int8 calibration needs images, and {DEFAULT_ORIGIN} has {info.num_classes} "
                f"classes, not the model's {num_classes}: pass --calibration_images=<folder or "
                "glob> (frames from the deployment camera are best) or --config=<its data config>"
            )
        if opts.eval_images != 0:
            coco_skipped = (
                f"no data config with the model's {num_classes} classes ({DEFAULT_ORIGIN} has "
                f"{info.num_classes}); pass --config=<file.py> to compare"
            )
    names, labels_source = _names(num_classes, opts, workdir_names, info, matched)
    calibration, calibration_info = None, None
    if quantization == "qat":
        calibration_info = {"source": "the QAT checkpoint's trained ranges", "kind": "qat"}
    elif quantization == "ptq" and opts.calibration_images:
        hpc = bool(data_config.half_pixel_centers)
        calibration, calibration_info = folder_pixels(
            opts.calibration_images, opts.representative_images, size, hpc
        )
    elif quantization == "ptq":
        calibration = training_pixels(data_config, opts.representative_images, size, opts.seed)
        calibration_info = {
            "source": f"{_data_label(data_config, origin)}, train split (augmented training input)",
            "kind": "data",
            "images": len(calibration),
        }
    parity_pixels, parity_source = [], "none"
    if opts.parity_images > 0 and calibration and opts.calibration_images and not matched:
        parity_pixels = calibration[: opts.parity_images]
        parity_source = "calibration images"
    elif opts.parity_images > 0 and eval_iterable is not None:  # pixels only: any classes do
        parity_pixels = first_pixels(eval_iterable, opts.parity_images)
        parity_source = f"{data_config.source} {opts.eval_split} split"
    return ExportInputs(
        names=names,
        labels_source=labels_source,
        calibration=calibration,
        calibration_info=calibration_info,
        eval_iterable=eval_iterable if coco_skipped is None else None,
        parity_pixels=parity_pixels,
        parity_source=parity_source,
        coco_skipped=coco_skipped,
    )


def workdir_label_record(workdir: str):
    """``(names, path)`` of ``<workdir>/labels.txt``, or None."""
    from mobiledet_jax import workdir as workdir_lib

    names = workdir_lib.load_labels(workdir)
    return None if names is None else (names, str(pathlib.Path(workdir) / workdir_lib.LABELS_FILE))
