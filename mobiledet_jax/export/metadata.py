"""TFLite model metadata: label map and input normalization, readable by MediaPipe Tasks and the
TFLite Task Library.

Format (the TFLite metadata schema, ``metadata_schema.fbs`` v1.5): the ``ModelMetadata``
flatbuffer (file identifier ``M001``) is stored in a model buffer referenced by the model's
``metadata`` entry named ``TFLITE_METADATA``; associated files (``labelmap.txt``) are a zip archive
appended after the flatbuffer. That is what ``MetadataPopulator`` writes. We write it ourselves
because on Python 3.11 neither ``tflite-support`` nor mediapipe's ``metadata_writers`` (which
needs a C extension that the mediapipe 1.2.3 wheel does not ship) is usable; the generated schema
classes themselves are pure Python and come from the mediapipe wheel (loaded without importing
the mediapipe package, which would load its native library).

What is written:

- input ``image``: ``ImageProperties`` (RGB), ``NormalizationOptions`` mean 127.5, std 127.5
  (``(x - 127.5) / 127.5 = 2/255 x - 1``, the docs/reference/recipe.md normalization that the graph applies to
  the uint8 pixels), stats [0, 255];
- post-processed outputs (by tensor index order: location, category, score, number of
  detections): ``BoundingBoxProperties`` (index [1, 0, 3, 2] = ymin, xmin, ymax, xmax;
  BOUNDARIES; RATIO), the label file on ``category`` (TENSOR_VALUE_LABELS), the group
  ``detection_result``;
- raw outputs: ``box_encodings`` and ``class_logits`` described, the label file on the class axis
  (TENSOR_AXIS_LABELS, line 0 = background).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import zipfile
from collections.abc import Sequence

import flatbuffers

from mobiledet_jax.pixels import NORM_MEAN, NORM_STD
from mobiledet_jax.tflite import flatbuffer, io_names

METADATA_NAME = "TFLITE_METADATA"
LABEL_FILE = io_names.LABEL_FILE
# Oldest parser that reads what we write: output tensor groups (1.2.0); no newer feature is used.
MIN_PARSER_VERSION = "1.2.0"


@functools.cache
def schema():
    """mediapipe's generated ``metadata_schema_py_generated`` module (pure Python)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the mediapipe package (pinned in requirements.txt) is needed for metadata"
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "tasks", "metadata", "metadata_schema_py_generated.py")
    mod_spec = importlib.util.spec_from_file_location("_tflite_metadata_schema", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _tensor(name: str, description: str, content_type=None, properties=None, files=None, rng=None):
    s = schema()
    t = s.TensorMetadataT()
    t.name = name
    t.description = description
    content = s.ContentT()
    content.contentPropertiesType = (
        content_type if content_type is not None else s.ContentProperties.FeatureProperties
    )
    content.contentProperties = properties if properties is not None else s.FeaturePropertiesT()
    if rng is not None:
        value_range = s.ValueRangeT()
        value_range.min, value_range.max = rng
        content.range = value_range
    t.content = content
    t.associatedFiles = files
    return t


def _label_file(axis: bool):
    s = schema()
    f = s.AssociatedFileT()
    f.name = LABEL_FILE
    f.description = "Labels of the detector's classes."
    f.type = (
        s.AssociatedFileType.TENSOR_AXIS_LABELS
        if axis
        else s.AssociatedFileType.TENSOR_VALUE_LABELS
    )
    return [f]


def _image_input(uint8: bool):
    s = schema()
    props = s.ImagePropertiesT()
    props.colorSpace = s.ColorSpaceType.RGB
    t = _tensor(
        "image",
        "RGB image, pixels in [0, 255]; the graph normalizes them to [-1, 1].",
        s.ContentProperties.ImageProperties,
        props,
    )
    norm = s.ProcessUnitT()
    norm.optionsType = s.ProcessUnitOptions.NormalizationOptions
    norm.options = s.NormalizationOptionsT()
    norm.options.mean = [NORM_MEAN]
    norm.options.std = [NORM_STD]
    t.processUnits = [norm]
    stats = s.StatsT()
    stats.min, stats.max = ([0.0], [255.0])
    t.stats = stats
    return t


def build_metadata(
    kind: str,
    model_name: str,
    description: str,
    version: str = "",
    uint8_input: bool = True,
) -> bytes:
    """The ``ModelMetadata`` flatbuffer for a ``raw`` or ``postprocessed`` export."""
    s = schema()
    sub = s.SubGraphMetadataT()
    sub.inputTensorMetadata = [_image_input(uint8_input)]
    if kind == "postprocessed":
        box = s.BoundingBoxPropertiesT()
        box.index = [1, 0, 3, 2]
        box.type = s.BoundingBoxType.BOUNDARIES
        box.coordinateType = s.CoordinateType.RATIO
        dim = (2, 2)  # the detections axis of [1, D, ...]
        sub.outputTensorMetadata = [
            _tensor(
                "location",
                "Detected boxes.",
                s.ContentProperties.BoundingBoxProperties,
                box,
                rng=dim,
            ),
            _tensor("category", "Class index of each box.", files=_label_file(False), rng=dim),
            _tensor("score", "Score of each box.", rng=dim),
            _tensor("number of detections", "Number of valid detections."),
        ]
        group = s.TensorGroupT()
        group.name = "detection_result"
        group.tensorNames = ["location", "category", "score"]
        sub.outputTensorGroups = [group]
    elif kind == "raw":
        sub.outputTensorMetadata = [
            _tensor("box_encodings", "Faster R-CNN codes (ty, tx, th, tw), scales 10, 10, 5, 5."),
            _tensor("class_logits", "Logits; column 0 = background.", files=_label_file(True)),
        ]
    else:
        raise ValueError(f"kind must be raw or postprocessed, got {kind!r}")
    meta = s.ModelMetadataT()
    meta.name = model_name
    meta.description = description
    meta.version = version
    meta.author = "mobiledet_jax"
    meta.license = "Apache-2.0"
    meta.minParserVersion = MIN_PARSER_VERSION
    meta.subgraphMetadata = [sub]
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    return bytes(builder.Output())


def label_lines(class_names: Sequence[str], with_background: bool) -> str:
    names = [str(n).replace("\n", " ") for n in class_names]
    return "\n".join((["background"] if with_background else []) + names) + "\n"


def attach(tflite: bytes, metadata: bytes, labels: str) -> bytes:
    """Stores ``metadata`` as ``TFLITE_METADATA`` and appends ``labelmap.txt`` as a zip."""
    from ai_edge_litert import schema_py_generated as fb

    model = flatbuffer.read(_strip_zip(tflite))
    buf = fb.BufferT()
    import numpy as np

    buf.data = np.frombuffer(metadata, np.uint8)
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    out = io.BytesIO()
    out.write(flatbuffer.write(model))
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr(LABEL_FILE, labels)
    return out.getvalue()


def _name(m) -> str:
    return m.name.decode() if isinstance(m.name, bytes) else str(m.name)


def _strip_zip(tflite: bytes) -> bytes:
    """The flatbuffer part of a file that may already carry an appended zip."""
    if zipfile.is_zipfile(io.BytesIO(tflite)):
        model = flatbuffer.read(tflite)
        return flatbuffer.write(model)
    return tflite


def read(tflite: bytes) -> tuple[object, dict[str, str]]:
    """``(ModelMetadataT, {associated file name: text})`` of a file written by ``attach``."""
    s = schema()
    model = flatbuffer.read(tflite)
    entry = next((m for m in model.metadata or [] if _name(m) == METADATA_NAME), None)
    if entry is None:
        raise ValueError("the model has no TFLITE_METADATA")
    data = bytes(model.buffers[entry.buffer].data)
    meta = s.ModelMetadataT.InitFromObj(s.ModelMetadata.GetRootAsModelMetadata(data, 0))
    return meta, flatbuffer.associated_files(tflite)
