"""The deployment bundle written beside every post-processed export, and how to run the file.

- ``<file>.labels.txt``: the class names, one per line (``labels.labels_text``), as pycoral's
  ``read_label_file`` and Frigate's ``labelmap_path`` read them; the same names are embedded in
  the file's TFLite metadata (``metadata``), which MediaPipe Tasks reads.
- ``<file>.frigate.yml``: Frigate's ``detectors:`` and ``model:`` blocks for the file (``path``,
  ``labelmap_path``, ``width``, ``height``, ``input_tensor``, ``input_pixel_format``,
  ``model_type``), paths under Frigate's ``/config/model_cache/``; an EdgeTPU file is named as
  ``edgetpu_compiler`` writes it (``<stem>_edgetpu.tflite``), and the best-F1 score thresholds of
  the export's COCO comparison are given as ``objects.filters`` (commented out).
- ``usage(...)``: the report's section on running the file with pycoral, MediaPipe and Frigate.

The files carry only plain text and quoted YAML scalars; nothing here imports Frigate or pycoral.
"""

from __future__ import annotations

import json
import pathlib

from mobiledet_jax import atomic_files
from mobiledet_jax import labels as labels_lib

MODEL_CACHE = "/config/model_cache"  # Frigate's folder for model files (in its /config volume)
MAX_FILTERS = 12  # classes with a threshold written into the Frigate snippet


def paths(output: str | pathlib.Path) -> dict[str, pathlib.Path]:
    out = pathlib.Path(output)
    return {
        "labels_file": out.with_name(out.name + ".labels.txt"),
        "frigate_file": out.with_name(out.name + ".frigate.yml"),
    }


def frigate_model_file(out: pathlib.Path, target: str) -> str:
    """The file Frigate loads: the EdgeTPU compiler's output for an EdgeTPU export."""
    return f"{out.stem}_edgetpu.tflite" if target == "edgetpu" else out.name


def _q(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid (quoted) YAML scalar


def frigate_yaml(out: pathlib.Path, opts, size, coco: dict | None) -> str:
    """Frigate's ``detectors:`` and ``model:`` blocks for the exported file ``out``."""
    height, width = size
    labels_name = paths(out)["labels_file"].name
    model_file = frigate_model_file(out, opts.target)
    lines = [f"# Frigate config for {out.name} (mobiledet_jax export, target {opts.target})."]
    lines += [f"# Copy {model_file} and {labels_name} to {MODEL_CACHE}/ (Frigate's config"]
    lines += ["# volume) and merge these blocks into Frigate's config.yml."]
    if opts.target == "edgetpu":
        lines += [f"# Compile the file for the EdgeTPU first: edgetpu_compiler {out.name}"]
        lines += [f"# (writes {model_file}); device: usb, or pci for an M.2 / PCIe Coral."]
        detector = ["detectors:", "  coral:", "    type: edgetpu", "    device: usb"]
    else:
        detector = ["detectors:", "  cpu:", "    type: cpu", "    num_threads: 3"]
    if opts.float_input:
        lines += ["# float32 input: Frigate >= 0.14 also needs `input_dtype: float` under model."]
    lines += detector + [
        "model:",
        f"  path: {_q(f'{MODEL_CACHE}/{model_file}')}",
        f"  labelmap_path: {_q(f'{MODEL_CACHE}/{labels_name}')}",
        f"  width: {int(width)}",
        f"  height: {int(height)}",
        "  input_tensor: nhwc",
        "  input_pixel_format: rgb",
        "  model_type: ssd",
    ]
    best = (coco or {}).get("best_f1")
    if best:
        lines += [f"# Score thresholds of the best F1 at IoU 0.5 on {coco['split']} "
                  f"({coco['images']} images; all classes: {best['overall']['threshold']:.2f}):",
                  "# objects:", "#   filters:"]  # fmt: skip
        useful = [kv for kv in best["per_class"].items() if kv[1]["f1"] > 0]
        for name, b in sorted(useful, key=lambda kv: -kv[1]["f1"])[:MAX_FILTERS]:
            lines += [f"#     {_q(name)}:", f"#       threshold: {b['threshold']:.2f}"]
    return "\n".join(lines) + "\n"


def write(out: pathlib.Path, names, opts, size, coco: dict | None) -> dict[str, str]:
    """Writes ``<file>.labels.txt`` and ``<file>.frigate.yml``; returns their paths."""
    files = paths(out)
    atomic_files.write_text(files["labels_file"], labels_lib.labels_text(names))
    atomic_files.write_text(files["frigate_file"], frigate_yaml(out, opts, size, coco))
    return {k: str(v) for k, v in files.items()}


def usage(report: dict) -> list[str]:
    """Markdown lines: running the file with pycoral, MediaPipe Tasks and Frigate."""
    e, b = report["export"], report.get("bundle") or {}
    name = pathlib.Path(e["file"]).name
    labels = pathlib.Path(b.get("labels_file", name + ".labels.txt")).name
    threshold = ((report.get("coco") or {}).get("best_f1") or {}).get("overall", {})
    t = f"{threshold['threshold']:.2f}" if threshold else "0.5"
    coral = frigate_model_file(pathlib.Path(name), "edgetpu")
    lines = ["## Running it", ""]
    if e["outputs"] != "postprocessed":
        return lines + [
            "Raw outputs: decode with the anchors written beside the file "
            f"(`{name}.anchors.npy`) and NMS, e.g. `mobiledet_jax.inference.Detector.load("
            f"'{name}')` or `python -m mobiledet_jax.predict --model={name} --source=<images>`.",
            "",
        ]
    lines += [
        f"Score threshold: `{t}` ("
        + (
            "the best F1 at IoU 0.5 of the COCO comparison above"
            if threshold
            else "a default; no COCO comparison ran"
        )
        + ").",
        "",
        "pycoral (Coral EdgeTPU; compile the file first: "
        f"`edgetpu_compiler {name}` writes `{coral}`):",
        "",
        "```python",
        "from PIL import Image",
        "from pycoral.adapters import common, detect",
        "from pycoral.utils.dataset import read_label_file",
        "from pycoral.utils.edgetpu import make_interpreter",
        f"interpreter = make_interpreter({_q(coral)}); interpreter.allocate_tensors()",
        f"labels = read_label_file({_q(labels)})",
        "image = Image.open('frame.jpg').convert('RGB')",
        "_, scale = common.set_resized_input(interpreter, image.size,",
        "                                    lambda size: image.resize(size, Image.BILINEAR))",
        "interpreter.invoke()",
        f"for obj in detect.get_objects(interpreter, {t}, scale):",
        "    print(labels.get(obj.id, obj.id), obj.score, obj.bbox)",
        "```",
        "",
        "MediaPipe Tasks (the label names are in the file's metadata):",
        "",
        "```python",
        "import mediapipe as mp",
        "from mediapipe.tasks.python import BaseOptions, vision",
        "options = vision.ObjectDetectorOptions(",
        f"    base_options=BaseOptions(model_asset_path={_q(name)}), score_threshold={t})",
        "with vision.ObjectDetector.create_from_options(options) as detector:",
        "    result = detector.detect(mp.Image.create_from_file('frame.jpg'))",
        "for d in result.detections:",
        "    print(d.categories[0].category_name, d.categories[0].score, d.bounding_box)",
        "```",
        "",
        f"Frigate: `{pathlib.Path(b.get('frigate_file', name + '.frigate.yml')).name}` holds the"
        f" `detectors:` and `model:` blocks; set `threshold` under `objects.filters` (e.g. {t}).",
        "",
    ]
    return lines
