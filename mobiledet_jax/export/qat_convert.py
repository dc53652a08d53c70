"""The fully-int8 TFLite file of a QAT model (``models.qat``), with its trained ranges.

The QAT model is re-traced with qwix's ODML conversion provider (static scales from the trained
``quant_stats``, ``quant.fake_quant`` composites), lowered to StableHLO and converted by
litert-converter in strict QDQ mode; the interface becomes uint8 (pixels in, uint8 out) and every
op in between is checked to be int8 (``check_int8``), so QAT that would ship float is an error.

``convert_snapped`` converts twice: the first file gives each conv's int32 bias grid (input scale
x weight scale), the conv biases (BN shifts) are rounded onto it (``snap_biases``; a change of at
most half that grid, a few thousandths of an output step), and the second file then holds exactly
the fake-quant model's biases. On the quickstart QAT model that takes the raw outputs within one
output step of the fake-quant model from 98.4% / 69.7% to 99.6% / 92.5% (boxes / logits, noise
images); the remaining differences are the float model's rounding, which ``models.qat_integer``
(the integer arithmetic of the file, the export's reference) removes: bit-equal outputs.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import qwix

from mobiledet_jax.export import convert as convert_lib
from mobiledet_jax.export import int8_kernels
from mobiledet_jax.models import as_convolutions
from mobiledet_jax.models.qat import (
    QatError,
    _as_jax,
    kernel_paths,
    provider_options,
    register_ops,
    rules,
)
from mobiledet_jax.tflite import flatbuffer

_UINT8 = 3  # schema TensorType.UINT8, for modify_model_interface


def check_int8(tflite: bytes) -> None:
    """Every op is int8 except the QUANTIZE/DEQUANTIZE at the interface."""
    bad = []
    for op in flatbuffer.list_ops(tflite):
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        floats = [
            t.name for t in (*op.inputs, *op.outputs) if t is not None and t.dtype == "FLOAT32"
        ]
        if floats:
            bad.append(f"{op.name} ({floats[0]})")
    if bad:
        raise QatError(f"{len(bad)} op(s) left in float after QAT conversion: {bad[:10]}")


def stablehlo_text(model, variables, quant_stats, image_size, scheme: str = "asymmetric") -> str:
    """The conversion model (static scales, ``quant.fake_quant`` composites) as StableHLO text:
    ``images -> (box_encodings, class_logits)``."""
    v = _as_jax({k: variables[k] for k in ("params", "batch_stats")})
    provider = qwix.OdmlConversionProvider(
        rules(scheme=scheme), v["params"], _as_jax(quant_stats), **provider_options(scheme)
    )
    cmodel = qwix.quantize_model(as_convolutions(model), register_ops(provider))

    def fn(images):
        out = cmodel.apply(v, images, train=False)
        return out["box_encodings"], out["class_logits"]

    shape = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    return jax.export.export(jax.jit(fn))(shape).mlir_module()


def convert(
    model,
    variables,
    quant_stats,
    image_size,
    head: str = "logits",
    int8_hard_swish: str = "mul_add",
    int8_global_pool: str = "mean",
    scheme: str = "asymmetric",
) -> bytes:
    """QAT model -> int8 TFLite with uint8 input (pixels, ``(p - 128) * 2/255`` inside) and uint8
    outputs, tensor names as ``convert.convert`` (``images``; ``box_encodings``, ``class_*``).

    ``head="scores"`` appends one int8 LOGISTIC to the logits (see ``_logistic_output``): a sigmoid
    traced after the model would be outside qwix's interception, i.e. a float op.
    ``int8_hard_swish``, ``int8_global_pool``: as ``convert.convert`` (``int8_kernels``).
    ``scheme``: the int8 scheme the model was trained (or calibrated) in (``models.qat.SCHEMES``).
    """
    from litert_converter import converter_api_ext as C
    from litert_converter.mlir import ir, passmanager

    int8_kernels.check_modes(int8_hard_swish, int8_global_pool)
    if not quant_stats:
        raise QatError("no quant_stats: calibrate or train the QAT model first")
    text = stablehlo_text(model, variables, quant_stats, image_size, scheme)
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
    tflite = int8_kernels.rewrite(
        tflite, int8_hard_swish, int8_global_pool, symmetric=scheme == "symmetric"
    )
    check_int8(tflite)
    model_t = flatbuffer.read(tflite)
    return flatbuffer.write(flatbuffer.set_io_names(model_t, [convert_lib.INPUT_NAME], names))


def snap_biases(model, variables, tflite: bytes) -> dict:
    """``variables`` with every conv's effective bias (its own ``bias``, or the BN shift
    ``beta - mean * gamma / sqrt(var + eps)`` of the conv before a BN) rounded to the int32 grid
    of that conv in ``tflite`` (a file converted from ``variables``): ``s_in * s_w`` per output
    channel. Convs are matched by their weight tensor's name (``.../<module path>/conv_...``)."""
    import copy
    import re

    import numpy as np

    from mobiledet_jax.models.qat import batch_norm_epsilons

    eps = batch_norm_epsilons(model)
    out = copy.deepcopy(jax.tree.map(np.asarray, {k: variables[k] for k in variables}))
    sg = flatbuffer.read(tflite).subgraphs[0]
    snapped = 0
    for op in flatbuffer.list_ops(tflite):
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        found = re.search(r"SSDLite/(.+)/conv_general_dilated", op.inputs[1].name)
        if found is None:
            raise QatError(f"conv weight {op.inputs[1].name!r} names no module")
        path = found.group(1)
        grid = float(sg.tensors[op.inputs[0].index].quantization.scale[0]) * np.asarray(
            sg.tensors[op.inputs[1].index].quantization.scale, np.float64
        )
        params, stats = out["params"], out["batch_stats"]
        for key in path.split("/"):
            params, stats = params[key], stats.get(key, {})
        if "BatchNorm" in params:
            bn, st = params["BatchNorm"], stats["BatchNorm"]
            shift = np.asarray(st["mean"], np.float64) * np.asarray(bn["scale"], np.float64)
            shift /= np.sqrt(np.asarray(st["var"], np.float64) + eps[path + "/BatchNorm"])
            b = np.asarray(bn["bias"], np.float64) - shift
            bn["bias"] = (np.round(b / grid) * grid + shift).astype(np.float32)
        else:
            params["bias"] = (np.round(params["bias"] / grid) * grid).astype(np.float32)
        snapped += 1
    if snapped != len(kernel_paths(out["params"])):
        raise QatError(
            f"{snapped} conv biases matched, the model has {len(kernel_paths(out['params']))}"
        )
    return _as_jax(out)


def convert_snapped(model, variables, quant_stats, image_size, *args, **kwargs):
    """``(tflite, variables)``: ``convert`` after ``snap_biases``; the returned variables are the
    ones the file holds (compare the file with the fake-quant model on them)."""
    first = convert(model, variables, quant_stats, image_size, *args, **kwargs)
    snapped = snap_biases(model, variables, first)
    return convert(model, snapped, quant_stats, image_size, *args, **kwargs), snapped


def _logistic_output(tflite: bytes, output: int) -> bytes:
    """Output ``output`` (int8, then DEQUANTIZE) through an int8 LOGISTIC with TFLite's fixed output
    quantization (scale 1/256, zero point -128: the [0, 255/256] range of the QAT sigmoid)."""
    from ai_edge_litert import schema_py_generated as schema

    model = flatbuffer.read(tflite)
    sg = model.subgraphs[0]
    out = sg.outputs[output]
    pos, dequant = next((i, op) for i, op in enumerate(sg.operators) if out in list(op.outputs))
    x = sg.tensors[dequant.inputs[0]]
    if (
        flatbuffer.op_code_name(model, dequant.opcodeIndex)[0] != "DEQUANTIZE"
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
    logistic.opcodeIndex = flatbuffer.opcode_index(
        model, schema.BuiltinOperator.LOGISTIC, version=2
    )  # int8
    logistic.inputs, logistic.outputs = [int(dequant.inputs[0])], [len(sg.tensors) - 1]
    dequant.inputs = [len(sg.tensors) - 1]
    sg.operators.insert(pos, logistic)
    return flatbuffer.write(model)


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
