"""TF Object Detection API TFRecords (``tf.train.Example`` per image) and their ``label_map.pbtxt``,
read as COCO-format data for the COCO checks and preparation (``coco_source.prepare_data``).

Features read, as the API's ``TfExampleDecoder`` names them: ``image/encoded`` (required; any
format PIL reads, re-encoded as JPEG by the COCO checks when it is not one), ``image/height`` and
``image/width`` (optional: checked against the image), ``image/source_id`` (kept as the image
entry's ``source_id``), ``image/object/bbox/{xmin,ymin,xmax,ymax}`` (fractions of the image
size), ``image/object/class/label`` (label map ids) or, when the labels are absent,
``image/object/class/text`` (label map names or display names), ``image/object/is_crowd`` and
``image/object/difficult`` (crowd when ``data.difficult_as_crowd``). Images are numbered 1..N in
reading order (files sorted, records in file order).

The images live inside the records: they are written once into ``scratch`` (a folder of the
preparation, deleted when the shards are written; the converter's output folder), so the records
are read once, when a split is prepared. Patterns are comma-separated globs, local or ``gs://``
(``tf.io.gfile``).

Counted (``problems.REASONS``): a corrupt record file (the rest of it is lost), a record that is
not an Example, has no ``image/encoded`` or has object lists of unequal length (skipped), an
object whose label is not in the label map or whose box is not finite, difficult objects made
crowd.
"""

import io
import math
import pathlib

import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from mobiledet_jax.data import coco_builder, problems

VERSION = 1  # part of the prepared split's identity: bump when the reading changes
_BOX = tuple(f"image/object/bbox/{k}" for k in ("xmin", "ymin", "xmax", "ymax"))


def _label_map_class():
    """The OD API's ``StringIntLabelMap`` message (name = 1, id = 2, display_name = 3 of
    ``string_int_label_map.proto``), declared here: TensorFlow does not ship the OD API's protos,
    and with the message declared, protobuf's own text-format parser reads the file exactly as the
    API does (both quote styles, escapes, comments, ``item <...>``); the fields not declared
    (keypoints, frequency, ...) are skipped."""
    f = descriptor_pb2.FileDescriptorProto(
        name="mobiledet_jax/string_int_label_map.proto", package="mobiledet_jax.od", syntax="proto2"
    )
    field = descriptor_pb2.FieldDescriptorProto
    item = f.message_type.add(name="StringIntLabelMapItem")
    for name, number, kind in (
        ("name", 1, "STRING"),
        ("id", 2, "INT32"),
        ("display_name", 3, "STRING"),
    ):
        item.field.add(
            name=name,
            number=number,
            type=getattr(field, f"TYPE_{kind}"),
            label=field.LABEL_OPTIONAL,
        )
    label_map = f.message_type.add(name="StringIntLabelMap")
    label_map.field.add(
        name="item",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".mobiledet_jax.od.StringIntLabelMapItem",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("mobiledet_jax.od.StringIntLabelMap")
    )


_LabelMap = _label_map_class()


def read_label_map(path: str) -> list:
    """(id, name, display_name) of each item, id 0 ('background') left out; raises DataError."""
    if not path or not tf.io.gfile.exists(path):
        raise problems.DataError(
            f"TF OD API label map not found: {path!r} (data.tfod_tfrecord.label_map)"
        )
    message = _LabelMap()
    try:
        text_format.Parse(tf.io.gfile.GFile(path).read(), message, allow_unknown_field=True)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise problems.DataError(f"{path} is not a StringIntLabelMap text proto: {e}") from e
    items, seen = [], set()
    for item in message.item:
        if item.id == 0 and "background" in (item.name, item.display_name):
            continue
        if item.id <= 0 or item.id in seen:
            raise problems.DataError(f"{path}: label map id {item.id} is negative, 0 or repeated")
        seen.add(item.id)
        items.append((item.id, item.name, item.display_name))
    if not items:
        raise problems.DataError(f"{path}: the label map has no items")
    return items


def record_files(pattern: str) -> list:
    """The sorted files of comma-separated globs (raises DataError when none match)."""
    globs = [p.strip() for p in pattern.split(",") if p.strip()]
    files = sorted({f for g in globs for f in tf.io.gfile.glob(g)})
    if not files:
        raise problems.DataError(f"no TFRecord files match {pattern!r}")
    return files


def _pattern(data_config, split: str) -> str:
    t = data_config.tfod_tfrecord
    pattern = t.train_pattern if split == "train" else t.val_pattern
    if not pattern:
        raise problems.DataError(
            f"data.source='tfod_tfrecord' needs data.tfod_tfrecord.{split}_pattern"
        )
    return pattern


def identity(data_config, split: str) -> str:
    """Cheap identity: the label map's text and every record file's name, size and time."""
    t = data_config.tfod_tfrecord
    read_label_map(t.label_map)
    lines = [
        f"tfod v{VERSION} {data_config.difficult_as_crowd}",
        tf.io.gfile.GFile(t.label_map).read(),
    ]
    for path in record_files(_pattern(data_config, split)):
        st = tf.io.gfile.stat(path)
        lines.append(f"{path}|{st.length}|{st.mtime_nsec}")
    return "\n".join(lines)


def name(data_config) -> str:
    """A short name for the prepared folder."""
    return f"tfod-{pathlib.Path(data_config.tfod_tfrecord.label_map).stem}"


def read_split(data_config, split: str, scratch):
    """The split as ``validate.CocoData``, its images written into the folder ``scratch``."""
    t = data_config.tfod_tfrecord
    items = read_label_map(t.label_map)
    files = record_files(_pattern(data_config, split))
    scratch = pathlib.Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    builder = coco_builder.CocoBuilder(
        [(i, display or name) for i, name, display in items],
        f"tfod_tfrecord {t[f'{split}_pattern']} [{split}]",
        scratch,
    )
    by_text = {text: i for i, name, display in items for text in (name, display) if text}
    for n, (path, index, raw) in enumerate(_records(files, builder)):
        example = _parse(raw)
        if example is None:
            builder.skip_image("malformed_record", f"{path} record {index}")
            continue
        _add_example(
            builder, example, scratch / f"{n + 1:08d}", by_text, data_config.difficult_as_crowd
        )
    return builder.data()


def _records(files: list, builder):
    """(file, index in it, serialized record) of every record in order; a corrupt file is counted
    and left (the records before the corruption are kept). A partial record at the very end of a
    file is not an error for TensorFlow's reader: that file simply ends there."""
    for path in files:
        iterator = iter(tf.data.TFRecordDataset(path))
        index = 0
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError:
                builder.report.add("corrupt_record_file", f"{path} after record {index}")
                break
            yield path, index, raw.numpy()
            index += 1


def _parse(raw: bytes) -> dict | None:
    """The features used, or None for a record that is malformed (see the module docstring)."""
    try:
        feature = tf.train.Example.FromString(raw).features.feature
    except DecodeError:
        return None

    def values(key, kind):
        return list(getattr(feature[key], kind).value) if key in feature else []

    def first(key, kind, default):
        return (values(key, kind) or [default])[0]

    encoded = values("image/encoded", "bytes_list")
    boxes = [values(k, "float_list") for k in _BOX]
    num = len(boxes[0])
    labels = values("image/object/class/label", "int64_list")
    texts = [t.decode("utf-8", "replace") for t in values("image/object/class/text", "bytes_list")]
    crowd = values("image/object/is_crowd", "int64_list") or [0] * num
    difficult = values("image/object/difficult", "int64_list") or [0] * num
    if not encoded or any(len(b) != num for b in boxes):
        return None
    if num and num not in (len(labels), len(texts)):  # an image without objects needs no labels
        return None
    if len(crowd) != num or len(difficult) != num:
        return None
    return {
        "encoded": encoded[0],
        "size": (first("image/height", "int64_list", 0), first("image/width", "int64_list", 0)),
        "source_id": first("image/source_id", "bytes_list", b"").decode("utf-8", "replace"),
        "boxes": list(zip(*boxes, strict=True)),  # (xmin, ymin, xmax, ymax) fractions
        "labels": labels if len(labels) == num else None,  # None: look the texts up
        "texts": texts,
        "crowd": [bool(c) for c in crowd],
        "difficult": [bool(d) for d in difficult],
    }


def _add_example(builder, example: dict, stem: pathlib.Path, by_text: dict, as_crowd: bool):
    encoded = example["encoded"]
    path = stem.with_suffix(".png" if encoded.startswith(b"\x89PNG") else ".jpg")
    path.write_bytes(encoded)
    size = example["size"] if min(example["size"]) > 0 else None
    extra = {"source_id": example["source_id"]} if example["source_id"] else {}
    image_id = builder.add_image(path, size, **extra)
    actual = coco_builder.image_size(io.BytesIO(encoded))
    if actual is None:  # no header: the COCO checks count the image; its boxes cannot be placed
        if example["boxes"]:
            builder.drop("annotation_of_skipped_image", path.name, n=len(example["boxes"]))
        return
    height, width = actual
    if example["labels"] is not None:
        keys = labels = example["labels"]
    else:
        keys, labels = example["texts"], [by_text.get(t) for t in example["texts"]]
    for k, (x0, y0, x1, y1) in enumerate(example["boxes"]):
        where = f"{path.name} object {k}"
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            builder.drop("malformed_object", where)
        elif labels[k] not in builder.category_ids:
            builder.drop("unknown_category", keys[k])
        else:
            difficult = example["difficult"][k] and as_crowd
            if difficult:
                builder.report.add("difficult_object", where)
            x, y, w, h = x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height
            builder.add_box(image_id, labels[k], x, y, w, h, example["crowd"][k] or difficult)
