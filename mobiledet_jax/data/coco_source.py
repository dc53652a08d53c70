"""COCO-format data on disk (an instances JSON and an image folder), prepared once into shards.

:func:`prepare` validates and repairs every image and box in Python (see ``validate.py``) and writes
the clean examples round-robin into ``num_shards`` TFRecord files of ``tf.train.Example``
(``records.py``), plus ``metadata.json`` (shard sizes, label map, validation report) and
``ground_truth.json`` (the cleaned COCO ground truth, crowd boxes included, for the evaluator).
The tf.data graph then reads only clean data. Processes read disjoint sets of shards.

The output folder is written under a temporary name and renamed into place, so concurrent
preparers never expose a half-written split (a killed preparation leaves only its hidden temporary
folder, removed by the next start on the same host: ``temporaries``); a folder prepared from other annotations, images (their names, sizes and modification
times) or options is refused, not silently reused, and a reuse is logged.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable

import tensorflow as tf

from mobiledet_jax.data import records, temporaries, validate
from mobiledet_jax.progress import Progress

FORMAT_VERSION = 1
METADATA = "metadata.json"
GROUND_TRUTH = "ground_truth.json"


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """A prepared split: TFRecord shards and what the evaluator needs."""

    directory: pathlib.Path
    files: tuple  # shard paths (str), in shard order
    shard_sizes: tuple  # examples per shard
    category_ids: tuple  # class index i <-> dataset category id category_ids[i]
    category_names: tuple
    ground_truth: pathlib.Path  # cleaned COCO instances JSON
    report: dict  # validate.Report.to_dict()
    fingerprint: str

    @property
    def num_examples(self) -> int:
        return sum(self.shard_sizes)


def fingerprint(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    max_boxes: int,
    label_map: str,
) -> str:
    """Identifies a preparation: the annotations file's content, the name, size and modification
    time of every file under ``images`` (so replaced or edited images prepare again; a stat per
    file, no image is read) and the options."""
    if not pathlib.Path(annotations).is_file():
        raise validate.DataError(f"annotations file not found: {annotations}")
    digest = _options_digest(max_boxes, label_map)
    with open(annotations, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if images is not None:
        digest.update(b"images|" + _folder_identity(pathlib.Path(images)).encode())
    return digest.hexdigest()[:16]


def _folder_identity(root: pathlib.Path) -> str:
    """``relative path|size|mtime_ns`` of every file under ``root``, sorted (cheap: stats only)."""
    lines, stack = [], [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            lines.append(f"{folder}|missing")
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                stack.append(pathlib.Path(entry.path))
            else:
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError:
                    continue
                rel = os.path.relpath(entry.path, root)
                lines.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(sorted(lines))


def fingerprint_identity(identity: str, *, max_boxes: int, label_map: str) -> str:
    """Identifies a preparation of data read from another format: the reader's identity string
    (its version and the names, sizes and times of the source files) and the options."""
    digest = _options_digest(max_boxes, label_map)
    digest.update(b"identity|" + identity.encode())
    return digest.hexdigest()[:16]


def _options_digest(max_boxes: int, label_map: str):
    return hashlib.sha256(f"v{FORMAT_VERSION}|{max_boxes}|{label_map}|".encode())


def load_prepared(directory: str | os.PathLike) -> PreparedSplit:
    """Opens a folder written by :func:`prepare`."""
    directory = pathlib.Path(directory)
    meta = json.loads((directory / METADATA).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise validate.DataError(
            f"{directory} was prepared with format {meta.get('format_version')}, this code reads "
            f"format {FORMAT_VERSION}; delete the folder to prepare it again"
        )
    return PreparedSplit(
        directory=directory,
        files=tuple(str(directory / name) for name in meta["files"]),
        shard_sizes=tuple(meta["shard_sizes"]),
        category_ids=tuple(meta["category_ids"]),
        category_names=tuple(meta["category_names"]),
        ground_truth=directory / GROUND_TRUTH,
        report=meta["report"],
        fingerprint=meta["fingerprint"],
    )


def prepare(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    max_boxes: int = 100,
    label_map: str = "dataset",
    num_shards: int = 16,
    workers: int | None = None,
    progress: bool = True,
) -> PreparedSplit:
    """Validates a COCO-format split and writes it to ``output_dir`` (reused if already there).

    Raises ``validate.DataError`` (with the full report) when the data is not usable.
    """
    key = fingerprint(annotations, images, max_boxes=max_boxes, label_map=label_map)
    return prepare_data(
        lambda scratch: validate.read_coco_data(annotations, images),
        key,
        output_dir,
        max_boxes=max_boxes,
        label_map=label_map,
        num_shards=num_shards,
        workers=workers,
        progress=progress,
    )


def prepare_data(
    load: Callable[[pathlib.Path], validate.CocoData],
    key: str,
    output_dir: str | os.PathLike,
    *,
    max_boxes: int = 100,
    label_map: str = "dataset",
    num_shards: int = 16,
    workers: int | None = None,
    progress: bool = True,
) -> PreparedSplit:
    """Like :func:`prepare`, for data that ``load(scratch)`` reads (only when ``output_dir`` does
    not hold ``key``'s split yet). ``scratch`` is an empty folder for files the reader must write
    (the images inside TFRecords), deleted once the shards are written."""
    output_dir = pathlib.Path(output_dir)
    temporaries.remove_stale(output_dir)  # left by killed preparations on this host
    if (output_dir / METADATA).is_file():
        split = _check_reuse(output_dir, key)
        logging.info(
            "reusing prepared data at %s (%d images, sources unchanged)",
            output_dir,
            split.num_examples,
        )
        return split
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporaries.private_name(output_dir)
    tmp.mkdir()
    try:
        scratch = tmp / "scratch"
        scratch.mkdir()
        data = load(scratch)
        _write(data, tmp, key, max_boxes, label_map, num_shards, workers, progress)
        shutil.rmtree(scratch)
        try:
            os.rename(tmp, output_dir)
        except OSError:
            if not (output_dir / METADATA).is_file():
                raise
        return _check_reuse(output_dir, key)  # ours, or an identical one that won a race
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_reuse(output_dir: pathlib.Path, key: str) -> PreparedSplit:
    split = load_prepared(output_dir)
    if split.fingerprint != key:
        raise validate.DataError(
            f"{output_dir} holds data prepared from different annotations, images or options "
            f"(fingerprint {split.fingerprint}, expected {key}); delete it or choose another "
            "prepared_dir"
        )
    return split


def _write(data, out, key, max_boxes, label_map, num_shards, workers, progress):
    coco, report = data.coco, data.report
    labels = validate.build_label_map(coco["categories"], label_map)
    num_shards = max(1, min(num_shards, len(coco["images"])))
    names = [f"records-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(str(out / name)) for name in names]
    sizes = [0] * num_shards
    gt_images, gt_annotations = [], []
    meter = Progress(
        f"prepare {report.annotations}", len(coco["images"]), "image", enabled=progress
    )
    clean = validate.iter_clean_images(
        coco, data.images, labels, report, max_boxes=max_boxes, workers=workers
    )
    for n, image in enumerate(clean):
        shard = n % num_shards
        writers[shard].write(
            records.encode_example(
                image.encoded,
                image.image_id,
                image.height,
                image.width,
                image.boxes,
                image.classes,
                image.is_crowd,
            )
        )
        sizes[shard] += 1
        gt_images.append(
            {
                "id": image.image_id,
                "file_name": image.file_name,
                "height": image.height,
                "width": image.width,
            }
        )
        gt_annotations.extend(image.annotations)
        meter.update(report.num_usable_images + sum(report.counts[r] for r in _SKIPS))
    for writer in writers:
        writer.close()
    meter.close()
    if not report.usable:
        raise validate.DataError(f"dataset not usable:\n{report.format()}", report)
    validate.assign_missing_ids(gt_annotations)
    ground_truth = {
        "images": gt_images,
        "annotations": gt_annotations,
        "categories": coco["categories"],
    }
    (out / GROUND_TRUTH).write_text(json.dumps(ground_truth))
    used = [i for i, size in enumerate(sizes) if size]  # fewer images than shards after skips
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": key,
        "files": [names[i] for i in used],
        "shard_sizes": [sizes[i] for i in used],
        "category_ids": list(labels.category_ids),
        "category_names": list(labels.names),
        "max_boxes": max_boxes,
        "label_map": label_map,
        "report": report.to_dict(),
    }
    for i, name in enumerate(names):
        if not sizes[i]:
            (out / name).unlink()
    (out / METADATA).write_text(json.dumps(meta, indent=1))


_SKIPS = ("missing_image_file", "corrupt_image")
