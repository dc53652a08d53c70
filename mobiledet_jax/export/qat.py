"""Quantization-aware training with qwix's ODML providers, and the fully-int8 TFLite of the result.

Prototype of the QAT half of issue 7 (EXPORT_NOTES section 5); training wires ``qat_model`` into its
step. The fake quantization follows TFLite's int8 scheme: per-channel symmetric int8 weights,
per-tensor asymmetric int8 activations with min/max ranges kept in the ``quant_stats`` collection,
BatchNorm fused into the preceding convolution, ReLU6 fused, the model input fixed to [-1, 1].

Usage::

    qmodel = qat.qat_model(model)                           # same apply() signature as the model
    quant_stats = qat.calibrate(qmodel, variables, images)  # images [B, H, W, 3] in [-1, 1]
    # training: qmodel.apply({..., 'quant_stats': qs}, x, train=True,
    #                        mutable=['batch_stats', 'quant_stats'])
    tflite = qat.convert(model, variables, quant_stats, (H, W))  # uint8 in, uint8 out

What makes MobileDet go through (qwix 0.1.8, litert-converter 0.5.0):

1. our convolutions call ``lax.conv_general_dilated`` with string dimension numbers, which qwix's
   conv handler does not parse: ``_Conv`` normalizes them first;
2. ``jax.nn.hard_swish`` (MobileDet-CPU) is registered as one quantized op, so the converter emits
   one int8 HARD_SWISH instead of a float island (EXPORT_NOTES fix 1);
3. ``jax.nn.sigmoid`` (SE gates) is registered with TFLite LOGISTIC's fixed output range
   [0, 255/256] (fix 3). The ``scores`` head's sigmoid comes after the model (outside qwix's
   interception), so ``convert`` appends it to the int8 logits as an int8 LOGISTIC in the
   flatbuffer. Fix 2 (array constants) needs no code here: MobileDet uses ``jax.nn.relu6`` /
   ``jax.nn.hard_swish`` and no Python-scalar arithmetic inside the network.

Per-channel symmetric weight quantization commutes with BatchNorm's per-channel scale, so fake-
quantizing the unfolded kernel gives the folded kernel's int8 grid (up to the BN shift, which folds
into the int32 bias). In training mode BN uses batch statistics, as TF's QAT before its BN freeze.

Parameters must be ``jax.Array``s (``numpy`` arrays lose qwix's weight tags on ``astype``, which
would leave the convolutions float): ``_as_jax`` converts them. Anything that still stays float is
an error (``QatError``), never a silent float layer: ``qat_model`` checks that its rule covers every
convolution, ``calibrate`` that qwix fake-quantized every conv kernel while tracing, and ``convert``
checks the converted file with ``check_int8``.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import qwix
from jax import lax
from qwix._src import aux_data
from qwix._src.providers import odml_ops
from qwix._src.utils import flax_util

from mobiledet_jax.export import convert as convert_lib
from mobiledet_jax.export import tflite_model

INPUT_RANGE = (-1.0, 1.0)  # the model input: preprocess() output
_UINT8 = 3  # schema TensorType.UINT8, for modify_model_interface


class QatError(RuntimeError):
    """QAT was requested but a layer would not be quantized."""


def rules(module_path: str = ".*") -> list:
    return [qwix.QuantizationRule(module_path=module_path, weight_qtype="int8", act_qtype="int8")]


# While ``calibrate`` traces the QAT model: module paths of the convs whose kernel qwix fake-quantizes.
_FAKE_QUANT_CONVS: contextvars.ContextVar[set | None] = contextvars.ContextVar(
    "fake_quant_convs", default=None
)


class _Conv(odml_ops.DotEinsumConv):
    """qwix's conv handler, fed ``ConvDimensionNumbers`` instead of ``("NHWC", "HWIO", "NHWC")``.

    It also records (during ``calibrate``) which convs it quantized: those whose kernel carries
    qwix's weight tag, i.e. gets per-channel int8 fake quantization.
    """

    def __call__(self, *args, **kwargs):
        dn = kwargs.get("dimension_numbers")
        if dn is not None and not isinstance(dn, lax.ConvDimensionNumbers):
            kwargs["dimension_numbers"] = lax.conv_dimension_numbers(
                args[0].shape, args[1].shape, dn
            )
        seen = _FAKE_QUANT_CONVS.get()
        if seen is not None and aux_data.get(args[1], odml_ops.AuxDataKey.WEIGHT_NAME, None):
            seen.add("/".join(flax_util.get_current_module().path))
        return super().__call__(*args, **kwargs)


def register_ops(provider):
    """The registrations MobileDet needs, on a QAT or a conversion provider."""
    conv = provider._ops["jax.lax.conv_general_dilated"]
    provider._ops["jax.lax.conv_general_dilated"] = functools.partial(
        _Conv, *conv.args, **conv.keywords
    )
    provider._ops["jax.nn.hard_swish"] = functools.partial(odml_ops.QuantizedOp, input_idx=[0])
    provider._ops["jax.nn.sigmoid"] = functools.partial(
        odml_ops.QuantizedOp, input_idx=[0], fixed_range_for_output=(0.0, 255 / 256)
    )
    return provider


def _as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def conv_paths(model, image_size=(64, 64)) -> list[str]:
    """Module paths (``backbone/Conv``, ...) of every conv kernel of ``model`` (shapes only)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_size, 3)), train=False)
    )
    return kernel_paths(shapes["params"])


def kernel_paths(params) -> list[str]:
    """Module paths of the ``kernel`` leaves of a parameter tree."""
    out = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "kernel":
            out.append("/".join(keys[:-1]))
    return out


def check_covered(paths, module_path: str) -> None:
    """Raises QatError if the rule's ``module_path`` regex misses a conv (qwix: ``re.fullmatch``)."""
    missing = [p for p in paths if not re.fullmatch(module_path, p)]
    if missing:
        raise QatError(f"{len(missing)} conv layer(s) not quantized: {missing[:10]}")


def qat_model(model, module_path: str = ".*"):
    """The fake-quantized model (same ``apply`` arguments; adds the ``quant_stats`` collection).

    Raises QatError when ``module_path`` would leave a convolution in float.
    """
    check_covered(conv_paths(model), module_path)
    provider = qwix.OdmlQatProvider(rules(module_path), fixed_range_for_inputs=INPUT_RANGE)
    return qwix.quantize_model(model, register_ops(provider))


def calibrate(qmodel, variables, images) -> dict:
    """Initial ``quant_stats`` (min/max of every fake-quantized tensor) from one pass over
    ``images`` [B, H, W, 3] in [-1, 1].

    Raises QatError when qwix did not fake-quantize the kernel of some conv of ``variables``
    (e.g. a conv computed by a function qwix does not intercept): QAT never trains a float layer.

    qwix disables jit *inside* the model to intercept ops; run eagerly, that compiles every
    primitive separately (about 1100 XLA compilations, 1-2 minutes for a tiny MobileDet). Under an
    outer ``jax.jit`` the same Python runs once as a trace and compiles once. The same holds for a
    QAT training step: jit it as a whole.
    """
    v = _as_jax({k: variables[k] for k in ("params", "batch_stats")})

    @jax.jit
    def stats(v, images):
        return qmodel.apply(v, images, train=False, mutable=["quant_stats"])[1]["quant_stats"]

    images = jnp.asarray(images)
    seen: set[str] = set()
    token = _FAKE_QUANT_CONVS.set(seen)
    try:
        lowered = stats.lower(v, images)  # the trace: qwix intercepts the ops here
    finally:
        _FAKE_QUANT_CONVS.reset(token)
    missing = [p for p in kernel_paths(v["params"]) if p not in seen]
    if missing:
        raise QatError(f"{len(missing)} conv layer(s) not fake-quantized by qwix: {missing[:10]}")
    return lowered.compile()(v, images)


def check_int8(tflite: bytes) -> None:
    """Every op is int8 except the QUANTIZE/DEQUANTIZE at the interface."""
    bad = []
    for op in tflite_model.list_ops(tflite):
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        floats = [
            t.name for t in (*op.inputs, *op.outputs) if t is not None and t.dtype == "FLOAT32"
        ]
        if floats:
            bad.append(f"{op.name} ({floats[0]})")
    if bad:
        raise QatError(f"{len(bad)} op(s) left in float after QAT conversion: {bad[:10]}")


def stablehlo_text(model, variables, quant_stats, image_size) -> str:
    """The conversion model (static scales, ``quant.fake_quant`` composites) as StableHLO text:
    ``images -> (box_encodings, class_logits)``."""
    v = _as_jax({k: variables[k] for k in ("params", "batch_stats")})
    provider = qwix.OdmlConversionProvider(
        rules(), v["params"], _as_jax(quant_stats), fixed_range_for_inputs=INPUT_RANGE
    )
    cmodel = qwix.quantize_model(model, register_ops(provider))

    def fn(images):
        out = cmodel.apply(v, images, train=False)
        return out["box_encodings"], out["class_logits"]

    shape = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    return jax.export.export(jax.jit(fn))(shape).mlir_module()


def convert(model, variables, quant_stats, image_size, head: str = "logits") -> bytes:
    """QAT model -> int8 TFLite with uint8 input (pixels, ``(p - 128) * 2/255`` inside) and uint8
    outputs, tensor names as ``convert.convert`` (``images``; ``box_encodings``, ``class_*``).

    ``head="scores"`` appends one int8 LOGISTIC to the logits (see ``_logistic_output``): a sigmoid
    traced after the model would be outside qwix's interception, i.e. a float op.
    """
    from litert_converter import converter_api_ext as C
    from litert_converter.mlir import ir, passmanager

    if not quant_stats:
        raise QatError("no quant_stats: calibrate or train the QAT model first")
    text = stablehlo_text(model, variables, quant_stats, image_size)
    names = list(convert_lib.HEADS[head])
    with ir.Context() as ctx, ir.Location.unknown():
        C.prepare_mlir_context(ctx)
        ctx.allow_unregistered_dialects = True
        module = ir.Module.parse(text)
        config = C.ConvertToTFLConfig()
        config.strict_qdq_mode = True
        config.model_origin_framework = "JAX"
        C.run_convert_to_tfl_passes(module, passmanager.PassManager(), config)
        C.set_signature(module.operation, "serving_default", [convert_lib.INPUT_NAME], names)
        tflite = bytes(C.export_flatbuffer_to_bytes(module.operation))
    if head == "scores":
        tflite = _logistic_output(tflite, 1)
    tflite = _uint8_interface(tflite)
    check_int8(tflite)
    model_t = tflite_model.read(tflite)
    return tflite_model.write(tflite_model.set_io_names(model_t, [convert_lib.INPUT_NAME], names))


def _logistic_output(tflite: bytes, output: int) -> bytes:
    """Output ``output`` (int8, then DEQUANTIZE) through an int8 LOGISTIC with TFLite's fixed output
    quantization (scale 1/256, zero point -128: the [0, 255/256] range of the QAT sigmoid)."""
    from ai_edge_litert import schema_py_generated as schema

    from mobiledet_jax.export.postprocess_op import _opcode

    model = tflite_model.read(tflite)
    sg = model.subgraphs[0]
    out = sg.outputs[output]
    pos, dequant = next((i, op) for i, op in enumerate(sg.operators) if out in list(op.outputs))
    x = sg.tensors[dequant.inputs[0]]
    if (
        tflite_model.op_code_name(model, dequant.opcodeIndex)[0] != "DEQUANTIZE"
        or x.type != schema.TensorType.INT8
    ):
        raise QatError("the QAT logits are not an int8 tensor before a DEQUANTIZE output")
    y = schema.TensorT()
    y.name, y.shape, y.type = b"class_scores_int8", list(x.shape), schema.TensorType.INT8
    y.quantization = schema.QuantizationParametersT()
    y.quantization.scale, y.quantization.zeroPoint = [1.0 / 256.0], [-128]
    model.buffers.append(schema.BufferT())
    y.buffer = len(model.buffers) - 1
    sg.tensors.append(y)
    logistic = schema.OperatorT()
    logistic.opcodeIndex = _opcode(model, schema.BuiltinOperator.LOGISTIC, version=2)  # int8
    logistic.inputs, logistic.outputs = [int(dequant.inputs[0])], [len(sg.tensors) - 1]
    dequant.inputs = [len(sg.tensors) - 1]
    sg.operators.insert(pos, logistic)
    return tflite_model.write(model)


def _uint8_interface(tflite: bytes) -> bytes:
    from ai_edge_litert import _pywrap_modify_model_interface as modify

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.tflite"), os.path.join(tmp, "out.tflite")
        with open(src, "wb") as f:
            f.write(tflite)
        if modify.modify_model_interface(src, dst, _UINT8, _UINT8) != 0:
            raise QatError("could not set a uint8 interface on the QAT model")
        with open(dst, "rb") as f:
            return f.read()
