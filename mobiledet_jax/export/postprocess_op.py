"""Appends TensorFlow Lite's ``TFLite_Detection_PostProcess`` custom op to a ``scores`` export.

Why a flatbuffer edit and not a TF graph: in a TF graph that also holds the jax2tf
``XlaCallModule``, the TF OD API trick (a dummy ``tf.function`` with ``experimental_implements``)
is inlined and constant-folded away (docs/reference/export_findings.md). The op needs no TF at all: it is a
CUSTOM operator whose options are a flexbuffer map, fed by the backbone's two outputs and a constant
anchor tensor. This module writes exactly that and rewires the graph outputs to the op's four
outputs, in the order the op defines them (and that Coral, Android, Frigate and MediaPipe read):

  ``detection_boxes [1, D, 4]`` (ymin, xmin, ymax, xmax, normalized, **not clipped**),
  ``detection_classes [1, D]`` (0-based class index as float), ``detection_scores [1, D]``,
  ``num_detections [1]``.

NMS settings (``config.detection.nms``; the reference): score threshold 1e-8, IoU 0.6, at most 100 per class and 100 in
total. ``use_regular_nms=True`` is the default: it is the op's per-class NMS (each class
separately, ``detections_per_class`` each, then the best ``max_detections`` over classes), which is
what the reference and our JAX ``detection.postprocess`` do. ``use_regular_nms=False`` is the op's
"fast" mode (the TF OD API exporter default): one class-agnostic NMS over anchors ranked by their
best class, ``max_classes_per_detection`` labels per kept box. It is much cheaper on a phone CPU
but gives different (fewer, class-agnostic) detections; choose it with ``--fast_nms``.

Remaining semantic differences to ``detection.postprocess`` (measured equal in the tests on
untied scores): the op keeps ``score >= threshold`` and suppresses at ``IoU > iou_threshold``
(ours: ``>``, ``>=``); its boxes are not clipped to [0, 1] (clients clip; ours are clipped and
zero-area boxes dropped); ties in score may come out in another order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from mobiledet_jax.detection import box_coder, postprocess
from mobiledet_jax.tflite import flatbuffer, io_names

OP_NAME = "TFLite_Detection_PostProcess"
OUTPUT_NAMES = io_names.POSTPROCESSED_OUTPUTS
INPUT_NAMES = io_names.SCORE_OUTPUTS


@dataclasses.dataclass(frozen=True)
class NmsConfig:
    """The op's NMS options; ``from_settings`` takes them from ``config.detection.nms``."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    detections_per_class: int
    use_regular_nms: bool = True
    max_classes_per_detection: int = 1  # fast NMS only

    @classmethod
    def from_settings(
        cls, nms: postprocess.NmsSettings | None = None, use_regular_nms: bool = True
    ) -> NmsConfig:
        """The op options equal to our NMS settings (default: the reference)."""
        nms = nms or postprocess.NmsSettings.reference()
        return cls(
            score_threshold=nms.score_threshold,
            iou_threshold=nms.iou_threshold,
            max_detections=nms.max_total,
            detections_per_class=nms.max_per_class,
            use_regular_nms=use_regular_nms,
        )


def center_size_anchors(anchors: np.ndarray) -> np.ndarray:
    """``[A, 4]`` (ymin, xmin, ymax, xmax) -> ``[A, 4]`` (ycenter, xcenter, height, width), the
    op's anchor layout."""
    a = np.asarray(anchors, np.float64)
    h = a[:, 2] - a[:, 0]
    w = a[:, 3] - a[:, 1]
    return np.stack([a[:, 0] + h / 2, a[:, 1] + w / 2, h, w], axis=1).astype(np.float32)


def custom_options(num_classes: int, nms: NmsConfig) -> bytes:
    """The flexbuffer map the op's ``Init`` reads (same keys as the TF OD API exporter)."""
    y_scale, x_scale, h_scale, w_scale = box_coder.SCALE_FACTORS
    return bytes(
        flexbuffers.Dumps(
            {
                "max_detections": int(nms.max_detections),
                "max_classes_per_detection": int(nms.max_classes_per_detection),
                "detections_per_class": int(nms.detections_per_class),
                "use_regular_nms": bool(nms.use_regular_nms),
                "nms_score_threshold": float(nms.score_threshold),
                "nms_iou_threshold": float(nms.iou_threshold),
                "num_classes": int(num_classes),
                "y_scale": float(y_scale),
                "x_scale": float(x_scale),
                "h_scale": float(h_scale),
                "w_scale": float(w_scale),
            }
        )
    )


def _add_tensor(sg, model, name: str, shape, dtype: int, data: np.ndarray | None = None) -> int:
    t = schema.TensorT()
    t.name = name.encode()
    t.shape = list(shape)
    t.type = dtype
    if data is None:
        t.buffer = 0  # buffer 0 is the empty sentinel
    else:
        buf = schema.BufferT()
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        model.buffers.append(buf)
        t.buffer = len(model.buffers) - 1
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _dequantized(model, sg, index: int, name: str) -> int:
    """A float32 copy of a uint8/int8 tensor (a DEQUANTIZE op); float tensors are returned as is."""
    t = sg.tensors[index]
    if t.type == schema.TensorType.FLOAT32:
        return index
    if t.type not in (schema.TensorType.UINT8, schema.TensorType.INT8):
        raise ValueError(f"cannot feed a {t.type} tensor to {OP_NAME}")
    out = _add_tensor(sg, model, name, t.shape, schema.TensorType.FLOAT32)
    op = schema.OperatorT()
    op.opcodeIndex = flatbuffer.opcode_index(model, schema.BuiltinOperator.DEQUANTIZE)
    op.inputs = [index]
    op.outputs = [out]
    sg.operators.append(op)
    return out


def append_postprocess(
    tflite: bytes, anchors: np.ndarray, num_classes: int, nms: NmsConfig | None = None
) -> bytes:
    """Adds the op after a model whose outputs are ``box_encodings`` and ``class_scores``.

    Args:
      tflite: a ``convert(..., head="scores")`` export (float or uint8 outputs both work: the op
        dequantizes uint8 inputs itself).
      anchors: ``[A, 4]`` normalized (ymin, xmin, ymax, xmax), in the model's output order.
      num_classes: foreground classes C (the scores have C + 1 columns, background first).
    """
    nms = nms or NmsConfig.from_settings()
    model = flatbuffer.read(tflite)
    sg = model.subgraphs[0]
    outputs = {sg.tensors[i].name.decode(): int(i) for i in sg.outputs}
    if set(outputs) != set(INPUT_NAMES):
        raise ValueError(f"expected outputs {INPUT_NAMES}, the model has {sorted(outputs)}")
    boxes_in, scores_in = outputs["box_encodings"], outputs["class_scores"]
    num_anchors = int(sg.tensors[boxes_in].shape[1])
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors {anchors.shape} do not match {num_anchors} box encodings")
    if int(sg.tensors[scores_in].shape[-1]) != num_classes + 1:
        raise ValueError(
            f"scores have {sg.tensors[scores_in].shape[-1]} columns, not {num_classes}+1"
        )
    if not model.buffers or model.buffers[0].data is not None:
        model.buffers.insert(0, schema.BufferT())  # keep buffer 0 empty
        for t in (t for g in model.subgraphs for t in g.tensors):
            t.buffer += 1
        for m in model.metadata or []:
            m.buffer += 1

    f32 = schema.TensorType.FLOAT32
    # The op reads uint8 box encodings with *uint8 anchors* (coarse); dequantizing both inputs first
    # (two CPU ops beside the op itself) keeps the float anchors exact.
    boxes_in = _dequantized(model, sg, boxes_in, "box_encodings_float")
    scores_in = _dequantized(model, sg, scores_in, "class_scores_float")
    anchor_t = _add_tensor(
        sg, model, "anchors", (num_anchors, 4), f32, center_size_anchors(anchors)
    )
    d = nms.max_detections
    # Appended in the op's output order, so tensor indices increase boxes < classes < scores < num
    # (the MediaPipe metadata writer pairs outputs by sorted tensor index).
    outs = [
        _add_tensor(sg, model, OUTPUT_NAMES[0], (1, d, 4), f32),
        _add_tensor(sg, model, OUTPUT_NAMES[1], (1, d), f32),
        _add_tensor(sg, model, OUTPUT_NAMES[2], (1, d), f32),
        _add_tensor(sg, model, OUTPUT_NAMES[3], (1,), f32),
    ]
    op = schema.OperatorT()
    op.opcodeIndex = flatbuffer.opcode_index(model, schema.BuiltinOperator.CUSTOM, custom=OP_NAME)
    op.inputs = [boxes_in, scores_in, anchor_t]
    op.outputs = outs
    op.customOptions = np.frombuffer(custom_options(num_classes, nms), np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    sg.operators.append(op)
    sg.outputs = outs
    flatbuffer.set_io_names(model, [flatbuffer.read_input_name(model)], list(OUTPUT_NAMES))
    return flatbuffer.write(model)
