"""Reading, inspecting and editing .tflite flatbuffers (``ai_edge_litert`` schema classes).

The helpers here are what the converter, the post-processing splice, the preflight checker and the
report share: an op listing with fused activations and quantization, op counts, and renaming of the
graph's input/output tensors together with a named ``serving_default`` signature.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils as fb

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_ACT_NAMES = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
SIGNATURE_KEY = "serving_default"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # "FLOAT32", "INT8", "UINT8", "INT32", ...
    is_constant: bool
    num_scales: int  # quantization scales (0: not quantized; >1: per-channel)
    zero_points: tuple[int, ...] = ()  # one per scale


@dataclasses.dataclass(frozen=True)
class OpInfo:
    index: int
    name: str  # builtin name (CONV_2D) or the custom code (TFLite_Detection_PostProcess)
    version: int
    is_custom: bool
    inputs: tuple[TensorInfo | None, ...]  # None for optional (-1) inputs
    outputs: tuple[TensorInfo, ...]
    fused_activation: str | None  # NONE / RELU6 / ... for ops that have the option
    options: object | None  # the builtin options object (e.g. Conv2DOptionsT)


def read(model_bytes: bytes) -> schema.ModelT:
    """Parses a .tflite into a mutable ``ModelT``."""
    return fb.read_model_from_bytearray(bytearray(model_bytes))


def write(model: schema.ModelT) -> bytes:
    return bytes(fb.convert_object_to_bytearray(model))


def op_code_name(model: schema.ModelT, opcode_index: int) -> tuple[str, bool]:
    code = model.operatorCodes[opcode_index]
    builtin = fb.get_builtin_code_from_operator_code(code)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return code.customCode.decode() if code.customCode else "CUSTOM", True
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}"), False


def opcode_index(
    model: schema.ModelT, builtin: int, version: int = 1, custom: str | None = None
) -> int:
    """Index of the operator code ``builtin`` (``version``; a ``custom`` code by name), appended
    to ``model.operatorCodes`` when the file has none yet."""
    for i, code in enumerate(model.operatorCodes):
        if custom is None and code.builtinCode == builtin and code.version == version:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    if custom is not None:
        code.customCode = custom.encode()
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _tensor_info(model: schema.ModelT, subgraph, index: int) -> TensorInfo | None:
    if index < 0:
        return None
    t = subgraph.tensors[index]
    buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
    is_const = buf is not None and buf.data is not None and len(buf.data) > 0
    q = t.quantization
    num_scales = 0 if q is None or q.scale is None else len(q.scale)
    zero_points = (
        () if not num_scales or q.zeroPoint is None else tuple(int(z) for z in q.zeroPoint)
    )
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    return TensorInfo(
        index, name, shape, _TYPE_NAMES.get(t.type, str(t.type)), is_const, num_scales, zero_points
    )


def list_ops(model: schema.ModelT | bytes, subgraph_index: int = 0) -> list[OpInfo]:
    """Every operator of a subgraph in execution order."""
    if isinstance(model, bytes | bytearray):
        model = read(model)
    sg = model.subgraphs[subgraph_index]
    out = []
    for i, op in enumerate(sg.operators):
        name, custom = op_code_name(model, op.opcodeIndex)
        options = op.builtinOptions
        act = getattr(options, "fusedActivationFunction", None)
        out.append(
            OpInfo(
                index=i,
                name=name,
                version=int(model.operatorCodes[op.opcodeIndex].version),
                is_custom=custom,
                inputs=tuple(_tensor_info(model, sg, int(j)) for j in (op.inputs or [])),
                outputs=tuple(_tensor_info(model, sg, int(j)) for j in (op.outputs or [])),
                fused_activation=None if act is None else _ACT_NAMES.get(act, str(act)),
                options=options,
            )
        )
    return out


def op_counts(model: schema.ModelT | bytes) -> dict[str, int]:
    """Op type -> count, with fused activations spelled out (``CONV_2D/RELU6``) where present."""
    counts = collections.Counter(op.name for op in list_ops(model))
    return dict(sorted(counts.items()))


def fused_counts(model: schema.ModelT | bytes) -> dict[str, int]:
    """``"CONV_2D/RELU6"``-style counts for ops with a fused activation option."""
    counts = collections.Counter(
        f"{op.name}/{op.fused_activation}" for op in list_ops(model) if op.fused_activation
    )
    return dict(sorted(counts.items()))


def io_tensors(model: schema.ModelT | bytes) -> tuple[list[TensorInfo], list[TensorInfo]]:
    if isinstance(model, bytes | bytearray):
        model = read(model)
    sg = model.subgraphs[0]
    return (
        [_tensor_info(model, sg, int(i)) for i in sg.inputs],
        [_tensor_info(model, sg, int(i)) for i in sg.outputs],
    )


def set_io_names(
    model: schema.ModelT, input_names: Sequence[str], output_names: Sequence[str]
) -> schema.ModelT:
    """Renames subgraph 0's input/output tensors (in order) and rewrites one signature with them."""
    sg = model.subgraphs[0]
    if len(input_names) != len(sg.inputs) or len(output_names) != len(sg.outputs):
        raise ValueError(
            f"model has {len(sg.inputs)} inputs / {len(sg.outputs)} outputs, names given for "
            f"{len(input_names)} / {len(output_names)}"
        )
    for idx, name in zip(sg.inputs, input_names, strict=True):
        sg.tensors[idx].name = name.encode()
    for idx, name in zip(sg.outputs, output_names, strict=True):
        sg.tensors[idx].name = name.encode()
    sig = schema.SignatureDefT()
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    sig.inputs = [_tensor_map(n, int(i)) for n, i in zip(input_names, sg.inputs, strict=True)]
    sig.outputs = [_tensor_map(n, int(i)) for n, i in zip(output_names, sg.outputs, strict=True)]
    model.signatureDefs = [sig]
    return model


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    m = schema.TensorMapT()
    m.name = name
    m.tensorIndex = index
    return m


def quantization(model_bytes: bytes, tensor_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(scales, zero points) of a named tensor, None if float."""
    model = read(model_bytes)
    for t in model.subgraphs[0].tensors:
        if t.name.decode() == tensor_name:
            q = t.quantization
            if q is None or q.scale is None:
                return None
            return np.asarray(q.scale), np.asarray(q.zeroPoint)
    raise KeyError(tensor_name)


def read_input_name(model: schema.ModelT) -> str:
    """Name of subgraph 0's (single) input tensor."""
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1:
        raise ValueError(f"expected one input, the model has {len(sg.inputs)}")
    return sg.tensors[sg.inputs[0]].name.decode()


def associated_files(model_bytes: bytes) -> dict[str, str]:
    """``{name: text}`` of the files zipped after the flatbuffer (TFLite metadata's associated
    files, e.g. ``io_names.LABEL_FILE``); empty when there are none."""
    import io
    import zipfile

    if not zipfile.is_zipfile(io.BytesIO(model_bytes)):
        return {}
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
        return {n: zf.read(n).decode() for n in zf.namelist()}
