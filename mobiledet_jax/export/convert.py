"""JAX/Flax SSDLite -> TFLite: jax2tf (native serialization) -> SavedModel -> TFLiteConverter.

The exported graph takes ``images`` ``[1, H, W, 3]`` RGB pixels in [0, 255] (uint8 by default) and
does ``float32(2/255) * x - 1`` (docs/reference/recipe.md) inside the graph. BatchNorm (inference mode,
moving statistics) is folded by the converter into the preceding convolution, so every conv becomes
one CONV_2D / DEPTHWISE_CONV_2D with its ReLU6 fused (``check_fused`` verifies that on the result).

Outputs (``head``):

- ``"logits"``: ``box_encodings [1, A, 4]`` (ty, tx, th, tw) and ``class_logits [1, A, C + 1]``
  (column 0 = background), the model's raw outputs, compared one to one with JAX for parity;
- ``"scores"``: ``box_encodings`` and ``class_scores = sigmoid(class_logits)``, the inputs that
  ``TFLite_Detection_PostProcess`` expects (``postprocess_op`` splices it on).

Formats: ``float32``; ``float16`` (weights stored as float16, computed in float32 on CPU, in float16
on GPU delegates); ``int8``: full-integer post-training quantization (per-channel int8 weights, int8
activations calibrated on a representative dataset, uint8 input and uint8 outputs). Facts measured
on this package set are in ``docs/reference/export_findings.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable

import jax
import numpy as np

from mobiledet_jax.export import int8_kernels
from mobiledet_jax.models import as_convolutions, preprocess
from mobiledet_jax.tflite import flatbuffer, io_names

FORMATS = ("float32", "float16", "int8")
INPUT_NAME = io_names.INPUT
HEADS = io_names.HEADS
# Ops that a MobileDet export may contain besides convolutions; anything else (TRANSPOSE, PAD,
# Flex, XlaCallModule, STABLEHLO_*) means the lowering went wrong.
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


class ConversionError(RuntimeError):
    pass


def serving_function(model, variables, head: str = "logits", normalize=preprocess) -> Callable:
    """``pixels [1, H, W, 3] (uint8 or float in [0, 255]) -> (box_encodings, class_output)``;
    ``normalize``: pixels -> model input (``models.qat.file_input`` for a QAT reference)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
    keep = ("params", "batch_stats", "quant_stats")  # quant_stats: a QAT model (parity, COCO)
    variables = {k: variables[k] for k in keep if k in variables}
    model = as_convolutions(model)  # one DEPTHWISE_CONV_2D per depthwise conv in the file

    def fn(pixels):
        out = model.apply(variables, normalize(pixels), train=False)
        logits = out["class_logits"]
        return out["box_encodings"], (jax.nn.sigmoid(logits) if head == "scores" else logits)

    return fn


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def save_saved_model(fn: Callable, input_shape, input_dtype: str, directory: str, head: str):
    """jax2tf-converts ``fn`` and writes a SavedModel with one ``serving_default`` signature."""
    tf = _tf()
    from jax.experimental import jax2tf

    names = HEADS[head]
    tf_fn = jax2tf.convert(fn, with_gradient=False)

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec(input_shape, getattr(tf, input_dtype), name=INPUT_NAME)],
    )
    def serve(images):
        outputs = tf_fn(images)
        return dict(zip(names, outputs, strict=True))

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})
    return directory


def representative_pixels(images: Iterable[np.ndarray]) -> Callable[[], Iterable[list]]:
    """A converter ``representative_dataset`` from ``[H, W, 3]`` (or ``[1, H, W, 3]``) pixel arrays.

    The first pixel of every sample is set to 0 and the second to 255, so that the calibrated input
    range is exactly [0, 255]: the uint8 input then gets scale 1 and zero point 0, i.e. the file
    takes raw pixels unchanged (the rest of the image is untouched).
    """
    samples = []
    for im in images:
        x = np.array(im, dtype=np.float32).reshape((1, *np.shape(im)[-3:]))
        x[0, 0, 0, :] = 0.0
        x[0, 0, 1, :] = 255.0
        samples.append(x)
    if not samples:
        raise ValueError("int8 conversion needs at least one representative image")

    def gen():
        for x in samples:
            yield [x]

    return gen


def convert_saved_model(
    saved_model_dir: str,
    fmt: str,
    representative: Callable | None = None,
) -> bytes:
    """TFLiteConverter on a SavedModel written by ``save_saved_model``."""
    tf = _tf()
    return run_converter(
        tf.lite.TFLiteConverter.from_saved_model(saved_model_dir), fmt, representative
    )


def run_converter(conv, fmt: str, representative: Callable | None = None) -> bytes:
    """Sets the format's options on a ``TFLiteConverter`` (ours, or Keras' in the benchmark)."""
    tf = _tf()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        if representative is None:
            raise ValueError("int8 needs a representative dataset")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    with _quiet():
        try:
            return bytes(conv.convert())
        except Exception as e:  # the converter raises several unrelated exception types
            raise ConversionError(f"TFLite conversion ({fmt}) failed: {e}") from e


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert(
    model,
    variables,
    image_size: tuple[int, int],
    fmt: str = "float32",
    head: str = "logits",
    representative_images: Iterable[np.ndarray] | None = None,
    float_input: bool = False,
    saved_model_dir: str | None = None,
    int8_hard_swish: str = "mul_add",
    int8_global_pool: str = "mean",
) -> bytes:
    """The whole path for one model: returns the .tflite bytes with named inputs and outputs.

    Args:
      model, variables: the Flax ``SSDLite`` and its ``{'params', 'batch_stats'}``.
      image_size: ``(H, W)``; the batch is 1.
      fmt: one of ``FORMATS``.
      head: ``"logits"`` (raw outputs) or ``"scores"`` (sigmoid scores, for post-processing).
      representative_images: ``[H, W, 3]`` pixel arrays in [0, 255]; required for int8.
      float_input: float formats only: take float32 pixels instead of uint8.
      saved_model_dir: keep the intermediate SavedModel there (default: a temporary folder).
      int8_hard_swish, int8_global_pool: int8 only: ``"mul_add"`` writes each HARD_SWISH as MUL,
        ADD, MUL and ``"mean"`` each global AVERAGE_POOL_2D as MEAN, which XNNPACK runs in int8
        (``int8_kernels``); ``"op"`` / ``"avg_pool"`` keep the converter's ops.
    """
    int8_kernels.check_modes(int8_hard_swish, int8_global_pool)
    if fmt == "int8" and float_input:
        raise ValueError("int8 exports take uint8 input")
    h, w = image_size
    # int8: the converter sees float pixels and makes the interface uint8 (scale 1, zero point 0).
    input_dtype = "float32" if (fmt == "int8" or float_input) else "uint8"
    fn = serving_function(model, variables, head)
    representative = representative_pixels(representative_images) if fmt == "int8" else None
    with tempfile.TemporaryDirectory() as tmp:
        directory = saved_model_dir or os.path.join(tmp, "saved_model")
        save_saved_model(fn, (1, h, w, 3), input_dtype, directory, head)
        tflite = convert_saved_model(directory, fmt, representative)
    if fmt == "int8":
        tflite = int8_kernels.rewrite(tflite, int8_hard_swish, int8_global_pool)
    return name_io(tflite, HEADS[head])


def name_io(tflite: bytes, output_names) -> bytes:
    """Tensor names = signature names: ``images`` in, ``output_names`` out (in that order)."""
    m = flatbuffer.read(tflite)
    sig = m.signatureDefs[0] if m.signatureDefs else None
    if sig is not None:
        by_key = {
            o.name.decode() if isinstance(o.name, bytes) else o.name: o.tensorIndex
            for o in sig.outputs
        }
        if set(by_key) == set(output_names):
            m.subgraphs[0].outputs = [by_key[n] for n in output_names]
    flatbuffer.set_io_names(m, [INPUT_NAME], list(output_names))
    return flatbuffer.write(m)


def check_fused(tflite: bytes, expected_convs: int | None = None) -> dict:
    """Checks that the graph is made of fused builtin ops; returns a summary dict.

    Raises ConversionError on any Flex/StableHLO/XlaCallModule/TRANSPOSE/PAD op, on a BatchNorm
    residue (a MUL/ADD fed directly by a conv output that is not a residual), or when the number of
    conv ops differs from ``expected_convs`` (one per conv of the Flax model).
    """
    ops = flatbuffer.list_ops(tflite)
    bad = [op.name for op in ops if op.name.startswith(("STABLEHLO", "Flex")) or op.name in
           ("TRANSPOSE", "PAD", "PADV2", "CUSTOM") or op.name.startswith("Xla")]  # fmt: skip
    if bad:
        raise ConversionError(f"unexpected ops in the converted graph: {sorted(set(bad))}")
    convs = [op for op in ops if op.name in _CONV_OPS]
    if expected_convs is not None and len(convs) != expected_convs:
        raise ConversionError(f"{len(convs)} conv ops, expected {expected_convs} (BN not folded?)")
    return {
        "convs": len(convs),
        "conv_activations": flatbuffer.fused_counts(tflite),
        "ops": flatbuffer.op_counts(tflite),
    }


def count_convs(variables) -> int:
    """Number of conv kernels of a Flax SSDLite (each must become one TFLite conv op)."""
    n = 0
    for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"]):
        if getattr(path[-1], "key", None) == "kernel":
            n += 1
    return n
