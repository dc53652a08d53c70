"""Users' data as they hold it: Ultralytics YOLO, Pascal VOC and TF OD API TFRecords.

Each format has a reader module (``yolo_source``, ``voc_source``, ``tfod_source``) with the same
three functions of ``(data_config, split)``: ``identity`` (cheap: the source files' names, sizes and
times, so a prepared split is found again without reading them), ``name`` (for the prepared folder)
and ``read_split(..., scratch)`` (a ``validate.CocoData``: the COCO-format dict and the report of
what was found while reading). :func:`prepare_split` hands that to the COCO checks and preparation
of ``coco_source`` once; :func:`convert` writes it as COCO JSON files instead.

Readers are imported on use, so that converting YOLO or VOC data does not load TensorFlow.
"""

import dataclasses
import importlib
import json
import os
import pathlib

from mobiledet_jax import atomic_files
from mobiledet_jax.data import problems

FORMATS = {
    "yolo": "mobiledet_jax.data.yolo_source",
    "voc": "mobiledet_jax.data.voc_source",
    "tfod_tfrecord": "mobiledet_jax.data.tfod_source",
}


def reader(source: str):
    """The reader module of ``data.source``."""
    if source not in FORMATS:
        raise ValueError(f"unknown format {source!r}; expected one of {tuple(FORMATS)}")
    return importlib.import_module(FORMATS[source])


def prepare_split(data_config, split: str, cache: pathlib.Path, *, progress: bool = True):
    """The split of ``data_config.source`` prepared once under ``cache/prepared`` (reused while its
    source files and the options are unchanged); a ``coco_source.PreparedSplit``."""
    from mobiledet_jax.data import coco_source  # TensorFlow: only when shards are written

    module = reader(data_config.source)
    options = dict(max_boxes=data_config.max_boxes, label_map=data_config.label_map)
    key = coco_source.fingerprint_identity(module.identity(data_config, split), **options)
    output = cache / "prepared" / f"{module.name(data_config)}-{split}-{key}"
    return coco_source.prepare_data(
        lambda scratch: module.read_split(data_config, split, scratch),
        key,
        output,
        num_shards=data_config.num_shards,
        progress=progress,
        **options,
    )


@dataclasses.dataclass(frozen=True)
class Converted:
    """One split written by :func:`convert`."""

    split: str
    annotations: pathlib.Path  # the instances JSON
    images: pathlib.Path  # the folder its file names are relative to
    report: problems.Report  # what was found while reading (before the COCO checks)


def convert(data_config, splits, output_dir: str | os.PathLike) -> list:
    """Writes ``<output_dir>/instances_<split>.json`` per split (images of TFRecords into
    ``<output_dir>/images_<split>/``); returns a :class:`Converted` per split."""
    module = reader(data_config.source)
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits:
        data = module.read_split(data_config, split, output_dir / f"images_{split}")
        coco = {
            "info": {"description": data.report.annotations, "images": str(data.images)},
            **data.coco,
        }
        path = output_dir / f"instances_{split}.json"
        atomic_files.write_text(path, json.dumps(coco))  # a killed convert keeps the old file
        written.append(Converted(split, path, data.images, data.report))
    return written


def format_problems(report: problems.Report) -> str:
    """What reading found, one line per reason (the COCO checks come on top)."""
    lines = [
        f"  {problems.REASONS[r][0]:9s} {report.counts[r]:7d}  {r}: {problems.REASONS[r][1]}"
        + (f"  e.g. {report.examples[r]}" if report.examples.get(r) else "")
        for r in problems.REASONS
        if report.counts[r]
    ]
    return "\n".join(lines) if lines else "  nothing"
