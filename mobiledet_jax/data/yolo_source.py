"""Ultralytics YOLO detection data (a ``data.yaml``, image folders, one ``.txt`` per image), read as
COCO-format data for the COCO checks and preparation (``coco_source.prepare_data``).

``data.yaml`` (read with PyYAML) holds ``names`` (a list, or a dict ``{index: name}`` with indices
0..K-1; ``nc`` alone gives ``class_0``...), ``path`` (the dataset root; absent: the yaml's folder;
relative: taken from the yaml's folder, then from the working directory — Ultralytics' own
``datasets_dir`` setting is not consulted) and ``train`` / ``val`` (``validation`` is accepted
too): each a folder (searched recursively for .bmp .jpg .jpeg .mpo .png .tif .tiff .webp), an
image file, a ``.txt`` file listing image paths (``./x`` and other relative lines are taken from
the list's folder), or a list of those, relative to ``path``. A ``../x`` entry that does not exist
is tried as ``x`` (Roboflow exports write ``../train/images`` beside the yaml), as Ultralytics does.

Labels follow Ultralytics' rule: the last ``/images/`` of an image path becomes ``/labels/`` and the
suffix ``.txt``. Each line is ``class xc yc w h`` in fractions of the image size, or ``class x1 y1
x2 y2 x3 y3 ...`` (a polygon: its bounding box is used). Class index i is category id i + 1 (COCO
ids start at 1), so the batch's 0-based classes are the YOLO classes.

What it counts (``problems.REASONS``): a missing label file (a negative example, as in
Ultralytics), an unreadable one (image skipped), malformed lines, coordinates outside [0, 1]
(Ultralytics rejects the whole image; here only the line is dropped), repeated lines, unknown
class indices. Images are not decoded here, only their headers read for the size.
"""

import concurrent.futures
import math
import os
import pathlib

import yaml

from mobiledet_jax.data import coco_builder, problems

VERSION = 1  # part of the prepared split's identity: bump when the reading changes
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
NORMALIZED_TOLERANCE = 1e-3  # coordinates up to this far outside [0, 1] are rounding, not pixels


def read_yaml(data_yaml: str | os.PathLike) -> dict:
    """The yaml with ``root`` (a Path) and ``names`` (a tuple) resolved; raises DataError."""
    path = pathlib.Path(data_yaml)
    if not path.is_file():
        raise problems.DataError(f"YOLO data.yaml not found: {data_yaml!r}")
    try:
        spec = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise problems.DataError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(spec, dict):
        raise problems.DataError(f"{path}: expected a mapping with names, train and val")
    if "val" not in spec and "validation" in spec:
        spec["val"] = spec["validation"]
    return {**spec, "root": _root(path, spec.get("path")), "names": _names(path, spec)}


def _root(yaml_path: pathlib.Path, value) -> pathlib.Path:
    if not value:
        return yaml_path.parent.absolute()
    root = pathlib.Path(str(value)).expanduser()
    if root.is_absolute():
        return root
    beside = yaml_path.parent / root
    return (beside if beside.exists() or not root.exists() else root).absolute()


def _names(yaml_path: pathlib.Path, spec: dict) -> tuple:
    names, nc = spec.get("names"), spec.get("nc")
    if names is None and isinstance(nc, int) and nc > 0:
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            by_index = {}
        if sorted(by_index) != list(range(len(names))):
            raise problems.DataError(f"{yaml_path}: names keys must be the indices 0..K-1")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise problems.DataError(f"{yaml_path}: 'names' (a list or {{index: name}}) is required")
    if isinstance(nc, int) and nc != len(names):
        raise problems.DataError(f"{yaml_path}: nc={nc} but {len(names)} names")
    return tuple(str(n) for n in names)


def image_files(spec: dict, split: str) -> tuple:
    """(the split's image paths, sorted, each once; how many more times some were listed)."""
    entries = spec.get(split)
    if not entries:
        raise problems.DataError(f"the YOLO data.yaml has no '{split}' entry")
    found = []
    for entry in entries if isinstance(entries, list) else [entries]:
        found += _entry_files(spec["root"], str(entry))
    unique = sorted(set(found))
    return unique, len(found) - len(unique)


def _entry_files(root: pathlib.Path, entry: str) -> list:
    path = (root / entry).absolute()
    if not path.exists() and entry.startswith("../"):
        path = (root / entry[3:]).absolute()
    if path.is_dir():
        return [
            p.absolute()
            for p in path.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ]
    if path.is_file() and path.suffix.lower() == ".txt":
        try:
            lines = [line.strip() for line in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise problems.DataError(f"YOLO image list {path} unreadable: {e}") from e
        return [_listed(path.parent, line) for line in lines if line]
    if path.is_file():
        return [path]
    raise problems.DataError(f"YOLO images not found: {entry!r} (looked for {path})")


def _listed(folder: pathlib.Path, line: str) -> pathlib.Path:
    line = line[2:] if line.startswith("./") else line
    return pathlib.Path(os.path.normpath(folder / line))  # absolute lines stay as they are


def label_file(image: pathlib.Path) -> pathlib.Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    name = f"{head}{os.sep}labels{os.sep}{tail}" if sep else str(image)
    return pathlib.Path(os.path.splitext(name)[0] + ".txt")


def identity(data_config, split: str) -> str:
    """Cheap identity of the split: the yaml's text and every image and label file's stat."""
    spec = read_yaml(data_config.yolo.data_yaml)
    images, _ = image_files(spec, split)
    text = pathlib.Path(data_config.yolo.data_yaml).read_text()
    labels = [label_file(p) for p in images]
    return f"yolo v{VERSION}\n{text}\n{coco_builder.file_identity([*images, *labels])}"


def name(data_config) -> str:
    """A short name for the prepared folder."""
    return f"yolo-{read_yaml(data_config.yolo.data_yaml)['root'].name}"


def read_split(data_config, split: str, scratch=None):
    """The split as ``validate.CocoData`` (``scratch`` is unused: the images stay where they are)."""
    spec = read_yaml(data_config.yolo.data_yaml)
    images, repeated = image_files(spec, split)
    names = spec["names"]
    root = spec["root"]
    builder = coco_builder.CocoBuilder(
        [(i + 1, n) for i, n in enumerate(names)],
        f"yolo {data_config.yolo.data_yaml} [{split}]",
        root,
    )
    if repeated:
        builder.report.add("duplicate_image_id", "image listed twice", n=repeated)
        builder.report.num_images += repeated
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for image, (size, text) in zip(images, pool.map(_read_one, images), strict=True):
            _add_image(builder, image, size, text, len(names))
    return builder.data()


def _read_one(image: pathlib.Path):
    """(image size or None, label text, or None when missing, or an exception when unreadable)."""
    try:
        text = label_file(image).read_bytes().decode("utf-8")
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as e:
        text = e
    return coco_builder.image_size(image), text


def _add_image(builder, image, size, text, num_classes: int) -> None:
    where = builder.file_name(image)
    if isinstance(text, Exception):
        builder.skip_image("unreadable_label_file", where)
        return
    image_id = builder.add_image(image, size)
    if text is None:
        builder.report.add("missing_label_file", where)
        return
    boxes = parse_labels(text, num_classes, builder, where)
    if size is None:  # no header: the COCO checks count the image; its boxes cannot be placed
        if boxes:
            builder.drop("annotation_of_skipped_image", where, n=len(boxes))
        return
    height, width = size
    for cls, x0, y0, x1, y1 in boxes:
        builder.add_box(
            image_id, cls + 1, x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height
        )


def parse_labels(text: str, num_classes: int, builder, where: str) -> list:
    """(class, x0, y0, x1, y1) fractions of the usable lines; the others counted in ``builder``."""
    boxes, seen = [], set()
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        example = f"{where}:{n}"
        values = _numbers(fields)
        if values is None or not values[0].is_integer():
            builder.drop("malformed_object", example)
            continue
        cls, coords = int(values[0]), values[1:]
        if not all(-NORMALIZED_TOLERANCE <= v <= 1 + NORMALIZED_TOLERANCE for v in coords):
            builder.drop("label_not_normalized", example)
        elif tuple(values) in seen:
            builder.drop("duplicate_label", example)
        elif not 0 <= cls < num_classes:
            builder.drop("unknown_category", cls)
        else:
            seen.add(tuple(values))
            boxes.append((cls, *_corners(coords)))
    return boxes


def _numbers(fields: list) -> list | None:
    """The line's numbers when it is a box (5 fields) or a polygon (odd count >= 7), else None."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return None
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _corners(coords: list) -> tuple:
    if len(coords) == 4:
        xc, yc, w, h = coords
        return xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    xs, ys = coords[0::2], coords[1::2]
    return min(xs), min(ys), max(xs), max(ys)
