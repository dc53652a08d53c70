"""Pascal VOC detection data (``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/*.txt``),
read as COCO-format data for the COCO checks and preparation (``coco_source.prepare_data``).

``data.voc.root`` is the ``VOC2007`` / ``VOC2012`` folder (or any folder laid out the same way);
the split's image ids are the first word of each line of ``ImageSets/Main/<set>.txt`` (``set``:
``data.voc.train_set`` / ``val_set``). XML is read with the standard library's ``xml.etree``.

Decisions, as the TF Object Detection API's ``create_pascal_tf_record.py`` takes them where it
has one:

- The image is ``JPEGImages/<filename>`` of the XML, else ``JPEGImages/<id>.jpg``.
- Boxes are the XML's ``xmin ymin xmax ymax`` pixel values as they are (no 1-pixel shift: the TF
  OD API divides them by the size unchanged), so ``bbox = [xmin, ymin, xmax - xmin, ymax - ymin]``.
- ``difficult=1`` objects (the API keeps them and its VOC evaluation ignores them) become
  ``iscrowd=1`` when ``data.difficult_as_crowd`` (the default): ignored in evaluation (neither a
  miss nor a false positive, as in the VOC protocol) and not training targets.
- Classes: ``data.voc.class_names`` when given; otherwise the 20 VOC classes (ids 1..20 in the
  order of the API's ``pascal_label_map.pbtxt``) when every name in the train and val sets is one
  of them, so that a subset keeps the standard numbering; otherwise the sorted names found in
  train and val (ids 1..K). Both splits always get the same numbering.

Counted (``problems.REASONS``): an id whose XML is missing or not parseable (image skipped), an
``<object>`` without a name or four finite coordinates, a name outside the classes, difficult
objects made crowd.
"""

import math
import pathlib
import xml.etree.ElementTree as ET

from mobiledet_jax.data import coco_builder, problems

VERSION = 1  # part of the prepared split's identity: bump when the reading changes
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
COORDINATES = ("xmin", "ymin", "xmax", "ymax")


def _root(data_config) -> pathlib.Path:
    root = pathlib.Path(data_config.voc.root).absolute()
    if not data_config.voc.root or not (root / "Annotations").is_dir():
        raise problems.DataError(
            f"data.voc.root={data_config.voc.root!r} is not a VOC folder (no Annotations/ in it)"
        )
    return root


def image_ids(root: pathlib.Path, image_set: str) -> list:
    """The ids of ``ImageSets/Main/<image_set>.txt`` (raises DataError when it is missing)."""
    path = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        raise problems.DataError(f"VOC image set not found: {path}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise problems.DataError(f"VOC image set {path} unreadable: {e}") from e
    return [line.split()[0] for line in lines if line.strip()]


def _sets(data_config, split: str) -> tuple:
    """(this split's set, the sets whose names decide the classes)."""
    own = data_config.voc.train_set if split == "train" else data_config.voc.val_set
    if data_config.voc.class_names:
        return own, (own,)
    return own, (data_config.voc.train_set, data_config.voc.val_set)


def identity(data_config, split: str) -> str:
    """Cheap identity: the class options, set files and every XML's and default image's stat."""
    root = _root(data_config)
    own, named = _sets(data_config, split)
    lines = [f"voc v{VERSION} {own} {data_config.difficult_as_crowd}"]
    lines.append(repr(tuple(data_config.voc.class_names)))
    for image_set in dict.fromkeys((own, *named)):
        ids = image_ids(root, image_set)
        paths = [root / "ImageSets" / "Main" / f"{image_set}.txt"]
        paths += [root / "Annotations" / f"{i}.xml" for i in ids]
        paths += [root / "JPEGImages" / f"{i}.jpg" for i in ids]
        lines.append(coco_builder.file_identity(paths))
    return "\n".join(lines)


def name(data_config) -> str:
    """A short name for the prepared folder."""
    return f"voc-{_root(data_config).name}"


def parse_xml(path: pathlib.Path) -> dict:
    """filename, size (height, width) or None, and objects as dicts; raises OSError/ParseError."""
    tree = ET.parse(path).getroot()
    size = None
    try:
        height, width = int(tree.findtext("size/height")), int(tree.findtext("size/width"))
        size = (height, width) if height > 0 and width > 0 else None
    except (TypeError, ValueError):
        pass
    objects = []
    for obj in tree.iter("object"):
        box = [obj.findtext(f"bndbox/{k}") for k in COORDINATES]
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            box = None
        if box and not all(math.isfinite(v) for v in box):
            box = None
        difficult = (obj.findtext("difficult") or "0").strip().lower() in ("1", "true")
        objects.append(
            {"name": (obj.findtext("name") or "").strip(), "box": box, "difficult": difficult}
        )
    return {"filename": (tree.findtext("filename") or "").strip(), "size": size, "objects": objects}


def _parse_set(root: pathlib.Path, image_set: str) -> list:
    """(id, parsed XML or the exception) of every id of the set."""
    out = []
    for image_id in image_ids(root, image_set):
        try:
            out.append((image_id, parse_xml(root / "Annotations" / f"{image_id}.xml")))
        except (OSError, ET.ParseError) as e:
            out.append((image_id, e))
    return out


def class_names(data_config, parsed_sets: list) -> tuple:
    """The classes (see the module docstring) from the configured names or the parsed sets."""
    if data_config.voc.class_names:
        return tuple(str(n) for n in data_config.voc.class_names)
    found = {
        obj["name"]
        for parsed in parsed_sets
        for _, xml in parsed
        if isinstance(xml, dict)
        for obj in xml["objects"]
        if obj["name"]
    }
    if not found:
        raise problems.DataError("no object names in the VOC annotations of the train and val sets")
    return VOC_CLASSES if found <= set(VOC_CLASSES) else tuple(sorted(found))


def read_split(data_config, split: str, scratch=None):
    """The split as ``validate.CocoData`` (``scratch`` is unused: the images stay where they are)."""
    root = _root(data_config)
    own, named = _sets(data_config, split)
    parsed = {s: _parse_set(root, s) for s in dict.fromkeys((own, *named))}
    names = class_names(data_config, [parsed[s] for s in named])
    category_of = {n: i + 1 for i, n in enumerate(names)}
    source = f"voc {root} [{split}: ImageSets/Main/{own}.txt]"
    categories = [(i, n) for n, i in category_of.items()]
    builder = coco_builder.CocoBuilder(categories, source, root / "JPEGImages")
    for image_id, xml in parsed[own]:
        if not isinstance(xml, dict):
            builder.skip_image("unreadable_label_file", f"{image_id}.xml")
            continue
        _add_image(builder, root, image_id, xml, category_of, data_config.difficult_as_crowd)
    return builder.data()


def _add_image(builder, root, image_id: str, xml: dict, category_of: dict, as_crowd: bool):
    images = root / "JPEGImages"
    path = images / xml["filename"] if xml["filename"] else images / f"{image_id}.jpg"
    if not path.is_file() and (images / f"{image_id}.jpg").is_file():
        path = images / f"{image_id}.jpg"
    coco_id = builder.add_image(path, xml["size"])
    for n, obj in enumerate(xml["objects"]):
        if not obj["name"] or obj["box"] is None:
            builder.drop("malformed_object", f"{image_id}.xml object {n}")
        elif obj["name"] not in category_of:
            builder.drop("unknown_category", obj["name"])
        else:
            crowd = obj["difficult"] and as_crowd
            if crowd:
                builder.report.add("difficult_object", f"{image_id}.xml object {n}")
            x0, y0, x1, y1 = obj["box"]
            builder.add_box(coco_id, category_of[obj["name"]], x0, y0, x1 - x0, y1 - y0, crowd)
