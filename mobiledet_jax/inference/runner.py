"""``predict_source``: a ``Detector`` over an image, a folder, a glob or a video; the library behind
``python -m mobiledet_jax.predict``.

Writes into the output folder:

- each image annotated (``visualization.draw``: boxes, class names, scores, one colour per class)
  under its own file name, or, for a video, ``<stem>.annotated.mp4`` with every frame annotated;
- ``predictions.json``: the detections in the COCO results format (``image_id``, ``category_id``,
  ``bbox`` ``[x, y, width, height]`` in pixels, ``score``, plus the ``file_name``), which
  pycocotools' ``loadRes`` (and ``evaluate``) scores against a COCO annotation file.

Image ids: with ``annotations`` (a COCO instances JSON), the id of the image of the same file
name; else the file name's number when every name is one (COCO's ``000000397133.jpg``), else
1, 2, ... in sorted order; a video's frames are 1, 2, ... Category ids: with ``annotations``, the
category of the same name; else ``class + 1`` (the COCO-90 numbering, and any dataset whose ids
are 1..K). Detections below ``score_threshold`` are left out of both; score mAP with
``score_threshold=0``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np

from mobiledet_jax.inference import images, video
from mobiledet_jax.inference.detector import Detector, Prediction
from mobiledet_jax.visualization import draw

PREDICTIONS_FILE = "predictions.json"


@dataclasses.dataclass
class PredictSummary:
    images: int
    detections: int
    written: list[str]  # annotated images or the annotated video
    predictions_file: str
    mean_ms: float


def annotate(image: np.ndarray, p: Prediction, names) -> np.ndarray:
    """``image`` with ``p``'s boxes, class names and scores drawn (one colour per class)."""
    return draw.draw_boxes(image, p.boxes_normalized, p.class_ids, names, p.scores)


def coco_results(p: Prediction, image_id: int, category_ids, file_name: str) -> list[dict]:
    """``p`` as COCO results entries (``bbox`` = ``[x, y, w, h]`` pixels of the given image)."""
    out = []
    for (x0, y0, x1, y1), c, s in zip(p.boxes, p.class_ids, p.scores, strict=True):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(c)]),
                "bbox": [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)],
                "score": round(float(s), 6),
                "file_name": file_name,
            }
        )
    return out


def _ids_from_annotations(path, files, names) -> tuple[dict[str, int], list[int]]:
    coco = json.loads(pathlib.Path(path).read_text())
    by_file = {pathlib.Path(im["file_name"]).name: int(im["id"]) for im in coco["images"]}
    missing = [f.name for f in files if f.name not in by_file]
    if missing:
        raise ValueError(f"{len(missing)} images are not in {path}, e.g. {missing[0]}")
    by_name = {c["name"]: int(c["id"]) for c in coco["categories"]}
    unknown = [n for n in names if n not in by_name and not n.startswith("unused_")]
    if unknown:
        raise ValueError(f"class names not among the categories of {path}: {unknown[:5]}")
    category_ids = [by_name.get(n, -1) for n in names]
    return {f.name: by_file[f.name] for f in files}, category_ids


def _image_ids(files) -> dict[str, int]:
    stems = [f.stem for f in files]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return {f.name: int(f.stem) for f in files}
    return {f.name: i for i, f in enumerate(files, start=1)}


def predict_source(
    detector: Detector,
    source: str | os.PathLike,
    output: str | os.PathLike,
    score_threshold: float = 0.3,
    annotations: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> PredictSummary:
    """Runs ``detector`` over ``source`` and writes the annotated images (or video) and
    ``predictions.json`` into ``output``; ``log`` gets one line per image (or frame)."""
    out = pathlib.Path(output)
    src = pathlib.Path(source)
    if out.exists() and (src.is_dir() and src.resolve() == out.resolve()):
        raise ValueError(f"--output {out} is the source folder: the originals would be replaced")
    out.mkdir(parents=True, exist_ok=True)
    detector.warmup()  # compile (JAX) or allocate (LiteRT) before anything is timed
    category_ids = [i + 1 for i in range(len(detector.names))]
    results, written, times = [], [], []
    if images.is_video(source) and pathlib.Path(source).is_file():
        target = out / f"{pathlib.Path(source).stem}.annotated.mp4"
        info = video.video_info(source)
        with video.VideoWriter(target, info["fps"]) as writer:
            for i, frame in enumerate(video.read_frames(source), start=1):
                p = detector.predict(frame, score_threshold)
                writer.write(annotate(frame, p, detector.names))
                results += coco_results(p, i, category_ids, f"{pathlib.Path(source).name}#{i}")
                times.append(p.milliseconds)
                log(f"frame {i}: {len(p)} detections, {p.milliseconds:.1f} ms")
        if not times:
            raise ValueError(f"no frames could be read from {source}")
        written.append(str(target))
    else:
        files = images.list_images(source)
        ids = _image_ids(files)
        if annotations:
            ids, category_ids = _ids_from_annotations(annotations, files, detector.names)
        for f in files:
            if f.resolve().parent == out.resolve():
                raise ValueError(f"{f} is in the output folder {out}: it would be replaced")
            image = images.load_rgb(f)
            p = detector.predict(image, score_threshold)
            target = out / f.name
            _save(annotate(image, p, detector.names), target)
            results += coco_results(p, ids[f.name], category_ids, f.name)
            written.append(str(target))
            times.append(p.milliseconds)
            log(f"{f.name}: {len(p)} detections, {p.milliseconds:.1f} ms")
    predictions = out / PREDICTIONS_FILE
    predictions.write_text(json.dumps([r for r in results if r["category_id"] >= 0], indent=0))
    return PredictSummary(
        len(times), len(results), written, str(predictions), float(np.mean(times))
    )


def _save(image: np.ndarray, path: pathlib.Path) -> None:
    from PIL import Image

    im = Image.fromarray(image)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=92)
    else:
        im.save(path)
