"""int8 graph rewrites that keep the model's arithmetic and put it on XNNPACK's int8 kernels.

Why flatbuffer edits: the converters we use (TFLiteConverter for post-training quantization,
litert-converter for QAT) write two ops that XNNPACK (TFLite's default CPU delegate) runs only in
float, and a Keras model through the same converter writes the same ones. An op XNNPACK does not
take falls back to TFLite's built-in kernel and cuts the graph into one more delegate partition.
On MobileDet-CPU (57 hard-swishes, 19 squeeze-excite blocks; 320x320, 1 thread) the int8 file
was slower than float32 (about 60 ms against 18 ms, in 58 XNNPACK partitions instead of 1):

- ``HARD_SWISH``: XNNPACK has no int8 hard-swish, and the EdgeTPU compiler none at all
  (``delegate_rules``). Each int8 ``HARD_SWISH`` (input ``x``: scale ``s``, zero point ``z``)
  becomes three ops computing ``x * hard_sigmoid(x)``:

  1. ``MUL(x, 1/6)`` to a tensor with scale ``s / 6`` and zero point ``z``: the int8 values are
     copied unchanged (the constant is exact: 127 at scale ``(1/6) / 127``); no rounding;
  2. ``ADD(x/6, 0.5)`` to the gate ``h`` at scale 1/255, zero point -128, i.e. the range
     [0, 1]: int8 saturation is hard-sigmoid's clip; the gate is rounded to a step of 1/255;
  3. ``MUL(x, h)`` to the hard-swish's own output tensor (its calibrated scale and zero point).

  The result is ``quantize_y(x * round_255(clip(x / 6 + 0.5, 0, 1)))`` (``reference``; XNNPACK
  computes exactly that, tests/export/test_int8_kernels.py). The one difference to the fused
  kernel is the gate's rounding: at most ``|x| / 510`` before the output's own rounding.
- ``AVERAGE_POOL_2D`` over the whole map (squeeze-excite's global pool): XNNPACK's average
  pooling is float only. It becomes ``MEAN`` over axes (1, 2) with ``keep_dims``, the same
  average into the same output tensor, which XNNPACK runs in int8.

With both, MobileDet-CPU int8 runs as one XNNPACK partition, in about 8.5 ms
(``benchmarks/tflite_latency.py``). Float files are left alone: XNNPACK runs float
``HARD_SWISH`` and ``AVERAGE_POOL_2D`` itself.

``config.export.int8_hard_swish``: ``"mul_add"`` (default) or ``"op"`` (the converter's
``HARD_SWISH``); ``config.export.int8_global_pool``: ``"mean"`` (default) or ``"avg_pool"``.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mobiledet_jax.tflite import flatbuffer

HARD_SWISH_MODES = ("mul_add", "op")
GLOBAL_POOL_MODES = ("mean", "avg_pool")
GATE_SCALE, GATE_ZERO_POINT = 1.0 / 255.0, -128  # the gate's int8 range: exactly [0, 1]


class Int8RewriteError(ValueError):
    pass


def _tensor(model, sg, name: str, shape, scale: float, zero_point: int, data=None) -> int:
    t = schema.TensorT()
    t.name, t.shape, t.type = name.encode(), list(shape), schema.TensorType.INT8
    t.quantization = schema.QuantizationParametersT()
    t.quantization.scale, t.quantization.zeroPoint = [float(scale)], [int(zero_point)]
    buf = schema.BufferT()
    if data is not None:
        buf.data = np.asarray(data, np.int8).tobytes()
    model.buffers.append(buf)
    t.buffer = len(model.buffers) - 1
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _constant(model, sg, name: str, value: float) -> int:
    """A positive scalar quantized exactly: int8 127 with scale ``value / 127``."""
    return _tensor(model, sg, name, [1], value / 127.0, 0, [127])


def _op(opcode: int, inputs, outputs, kind: str) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    if kind == "mul":
        op.builtinOptionsType, op.builtinOptions = (
            schema.BuiltinOptions.MulOptions,
            schema.MulOptionsT(),
        )
    else:
        op.builtinOptionsType, op.builtinOptions = (
            schema.BuiltinOptions.AddOptions,
            schema.AddOptionsT(),
        )
    return op


def _per_tensor(t, what: str) -> tuple[float, int]:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise Int8RewriteError(f"int8 HARD_SWISH {what} {t.name!r} is not per-tensor quantized")
    return float(q.scale[0]), int(q.zeroPoint[0])


def check_modes(hard_swish: str, global_pool: str) -> None:
    if hard_swish not in HARD_SWISH_MODES:
        raise ValueError(f"int8_hard_swish must be one of {HARD_SWISH_MODES}, got {hard_swish!r}")
    if global_pool not in GLOBAL_POOL_MODES:
        raise ValueError(
            f"int8_global_pool must be one of {GLOBAL_POOL_MODES}, got {global_pool!r}"
        )


def rewrite(
    tflite: bytes, hard_swish: str = "mul_add", global_pool: str = "mean", symmetric: bool = False
) -> bytes:
    """The int8 ``HARD_SWISH`` and global ``AVERAGE_POOL_2D`` ops of every subgraph rewritten as
    the module docstring says (``"op"`` / ``"avg_pool"`` keep them); float ops are kept.

    ``symmetric``: a file of the symmetric int8 scheme (zero point 0 everywhere): the gate is
    then quantized at scale 1/127, zero point 0, and the ADD's fused RELU does the clip at 0."""
    check_modes(hard_swish, global_pool)
    model = flatbuffer.read(tflite)
    changed = 0
    for sg in model.subgraphs:
        ops = []
        for op in sg.operators:
            name, _ = flatbuffer.op_code_name(model, op.opcodeIndex)
            x = sg.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) else None
            if x is None or x.type != schema.TensorType.INT8:
                ops.append(op)
            elif name == "HARD_SWISH" and hard_swish == "mul_add":
                ops += _hard_swish_ops(model, sg, op, symmetric)
                changed += 1
            elif name == "AVERAGE_POOL_2D" and global_pool == "mean" and _is_global(sg, op):
                ops.append(_as_mean(model, sg, op))
                changed += 1
            else:
                ops.append(op)
        sg.operators = ops
    return flatbuffer.write(model) if changed else tflite


def _hard_swish_ops(model, sg, op, symmetric: bool) -> list:
    x = sg.tensors[op.inputs[0]]
    s, z = _per_tensor(x, "input")
    _per_tensor(sg.tensors[op.outputs[0]], "output")
    mul = flatbuffer.opcode_index(model, schema.BuiltinOperator.MUL, version=2)  # int8 MUL
    add = flatbuffer.opcode_index(model, schema.BuiltinOperator.ADD, version=2)  # int8 ADD
    base = x.name.decode() + "/hard_swish"
    sixth = _constant(model, sg, base + "/one_sixth", 1 / 6)
    half = _constant(model, sg, base + "/one_half", 0.5)
    x6 = _tensor(model, sg, base + "/x_sixth", x.shape, s / 6.0, z)
    gate_q = (1.0 / 127.0, 0) if symmetric else (GATE_SCALE, GATE_ZERO_POINT)
    gate = _tensor(model, sg, base + "/gate", x.shape, *gate_q)
    add_op = _op(add, [x6, half], [gate], "add")
    if symmetric:  # [-1, 1] by saturation; the clip at 0 is the fused RELU
        add_op.builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.RELU
    return [
        _op(mul, [op.inputs[0], sixth], [x6], "mul"),
        add_op,
        _op(mul, [op.inputs[0], gate], op.outputs, "mul"),
    ]


def _is_global(sg, op) -> bool:
    """An average pool whose window is the whole (unpadded) input map: one value per channel."""
    x, y, o = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]], op.builtinOptions
    return (
        len(x.shape) == 4
        and list(y.shape[1:3]) == [1, 1]
        and (o.filterHeight, o.filterWidth) == (int(x.shape[1]), int(x.shape[2]))
        and o.fusedActivationFunction == schema.ActivationFunctionType.NONE
    )


def _as_mean(model, sg, op):
    x = sg.tensors[op.inputs[0]]
    axes = schema.TensorT()
    axes.name, axes.shape, axes.type = x.name + b"/mean_axes", [2], schema.TensorType.INT32
    buf = schema.BufferT()
    buf.data = np.array([1, 2], np.int32).tobytes()
    model.buffers.append(buf)
    axes.buffer = len(model.buffers) - 1
    sg.tensors.append(axes)
    mean = schema.OperatorT()
    mean.opcodeIndex = flatbuffer.opcode_index(model, schema.BuiltinOperator.MEAN, version=2)
    mean.inputs, mean.outputs = [op.inputs[0], len(sg.tensors) - 1], list(op.outputs)
    mean.builtinOptionsType = schema.BuiltinOptions.ReducerOptions
    mean.builtinOptions = schema.ReducerOptionsT()
    mean.builtinOptions.keepDims = True
    return mean


def reference(q_x: np.ndarray, x_quant, y_quant) -> np.ndarray:
    """numpy oracle of the rewritten hard-swish: int8 ``q_x`` -> int8 output, with ``(scale, zero_point)``
    of the input and output; round half away from zero, as TFLite's requantization."""
    (sx, zx), (sy, zy) = x_quant, y_quant
    x = sx * (q_x.astype(np.float64) - zx)
    q_gate = np.clip(_round(x / 6.0 / GATE_SCALE + 0.5 / GATE_SCALE) + GATE_ZERO_POINT, -128, 127)
    gate = GATE_SCALE * (q_gate - GATE_ZERO_POINT)
    return np.clip(_round(x * gate / sy) + zy, -128, 127).astype(np.int8)


def _round(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)
