"""Running an exported .tflite with ai-edge-litert: raw outputs, detections, and latency.

``TFLiteModel(path)`` is the evaluation-side view of an export. Every method takes images as the
file does: RGB pixels ``[B, H, W, 3]`` in [0, 255] (``build_eval_iterator(..., pixels=True)``);
they are rounded for uint8 inputs, and quantized outputs are dequantized.

- ``model.num_classes``: foreground classes (from the class tensor's width).
- ``model.raw(pixels)`` returns ``(box_encodings [B, A, 4], class_logits [B, A, C + 1])`` float32.
- ``model.detect(pixels)`` returns ``detection.postprocess.Detections`` for either kind of export:
  raw files through our JAX post-processing, post-processed files from the op's outputs (boxes
  clipped to [0, 1] as ours are).
- ``tflite_detect_fn(model, anchors, nms)`` adapts it to ``evaluation.run_coco_evaluation``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from mobiledet_jax.detection import postprocess
from mobiledet_jax.tflite import io_names

RAW_NAMES = io_names.RAW_OUTPUTS
SCORE_NAMES = io_names.SCORE_OUTPUTS
POST_NAMES = io_names.POSTPROCESSED_OUTPUTS


def _interpreter(model: str | bytes, num_threads: int = 1, xnnpack: bool = True):
    from ai_edge_litert import interpreter as litert

    kw = {"num_threads": num_threads}
    if not xnnpack:
        kw["experimental_op_resolver_type"] = (
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    if isinstance(model, bytes | bytearray):
        return litert.Interpreter(model_content=bytes(model), **kw)
    return litert.Interpreter(model_path=str(model), **kw)


class TFLiteModel:
    """An exported detector in the LiteRT interpreter (batch 1; batches are looped)."""

    def __init__(self, model: str | bytes, num_threads: int = 1, xnnpack: bool = True):
        self.interpreter = _interpreter(model, num_threads, xnnpack)
        self.interpreter.allocate_tensors()
        (self._input,) = self.interpreter.get_input_details()
        self._outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        names = set(self._outputs)
        if names >= set(RAW_NAMES):
            self.kind = "raw"
        elif names >= set(SCORE_NAMES):
            self.kind = "scores"  # a post-processing body, before the op is appended
        elif names >= set(POST_NAMES):
            self.kind = "postprocessed"
        else:
            raise ValueError(f"not a mobiledet_jax export: outputs {sorted(names)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._input["shape"])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @property
    def num_classes(self) -> int:
        """Foreground classes: the width - 1 of the class logits or scores (in a post-processed
        file, the tensor the op reads)."""
        for d in self.interpreter.get_tensor_details():
            if d["name"] in (RAW_NAMES[1], SCORE_NAMES[1]) and len(d["shape"]) == 3:
                return int(d["shape"][-1]) - 1
        raise ValueError("the file has no class_logits/class_scores tensor")

    def invoke(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """One image ``[1, H, W, 3]`` of pixels in [0, 255] -> every output, dequantized float32."""
        pixels = np.asarray(pixels)
        if self.input_dtype == np.uint8:
            pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
        else:
            pixels = pixels.astype(self.input_dtype)
        self.interpreter.set_tensor(self._input["index"], pixels.reshape(self.input_shape))
        self.interpreter.invoke()
        out = {}
        for name, d in self._outputs.items():
            value = self.interpreter.get_tensor(d["index"])
            scale, zero = d["quantization"]
            if value.dtype != np.float32 and scale:
                value = (value.astype(np.float32) - zero) * np.float32(scale)
            out[name] = np.asarray(value, np.float32)
        return out

    def raw(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``[B, H, W, 3]`` -> ``(box_encodings [B, A, 4], class_logits [B, A, C + 1])``."""
        if self.kind != "raw":
            raise ValueError("raw outputs need an --outputs=raw export")
        outs = [self.invoke(p[None]) for p in np.asarray(pixels)]
        return tuple(np.concatenate([o[n] for o in outs]) for n in RAW_NAMES)

    def detect(
        self,
        pixels: np.ndarray,
        anchors: np.ndarray | None = None,
        nms: postprocess.NmsSettings | None = None,
    ):
        """Pixels ``[B, H, W, 3]`` in [0, 255] -> ``postprocess.Detections`` (numpy).

        Raw files need the ``anchors`` and use ``nms`` (default: the reference settings);
        post-processed files carry their own NMS settings in the op."""
        pixels = np.asarray(pixels)
        if self.kind == "raw":
            if anchors is None:
                raise ValueError("a raw export needs the anchors to decode its boxes")
            import jax.numpy as jnp

            boxes, logits = self.raw(pixels)
            det = postprocess.postprocess(
                jnp.asarray(boxes), jnp.asarray(logits), anchors, nms or postprocess.NmsSettings()
            )
            return postprocess.Detections(*(np.asarray(x) for x in det))
        outs = [self.invoke(p[None]) for p in pixels]
        return _op_detections(outs)


def _op_detections(outs: list[dict[str, np.ndarray]]) -> postprocess.Detections:
    boxes = np.concatenate([np.clip(o["detection_boxes"], 0.0, 1.0) for o in outs])
    scores = np.concatenate([o["detection_scores"] for o in outs])
    classes = np.concatenate([o["detection_classes"] for o in outs]).astype(np.int32)
    num = np.concatenate([o["num_detections"] for o in outs]).astype(np.int32)
    return postprocess.Detections(boxes, scores, classes, num, np.zeros_like(classes))


def tflite_detect_fn(model: TFLiteModel, anchors=None, nms: postprocess.NmsSettings | None = None):
    """``batch -> (detections, ground truth)`` for ``evaluation.run_coco_evaluation``; the batch
    images are [0, 255] pixels."""

    def detect(batch):
        det = model.detect(np.asarray(batch["image"]), anchors, nms)
        gt = {k: np.asarray(v) for k, v in batch.items() if k != "image"}
        return det, gt

    return detect


def latency_ms(
    model: str | bytes,
    runs: int = 50,
    warmup: int = 5,
    num_threads: int = 1,
    xnnpack: bool = True,
    seed: int = 0,
) -> float:
    """Median wall time of ``runs`` invokes after ``warmup`` (batch 1, random pixels), in ms."""
    interp = _interpreter(model, num_threads, xnnpack)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, inp["shape"]).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)
