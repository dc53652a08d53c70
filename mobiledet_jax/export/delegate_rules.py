"""Preflight: would every op of a .tflite run on the EdgeTPU / the Qualcomm DSP?

No vendor tool is needed (edgetpu_compiler is x86-only and not on PyPI; the Qualcomm delegates need
a device), so the documented rules are checked on the flatbuffer itself.

EdgeTPU (Coral compiler v16, runtime >= 14). Source: "TensorFlow models on the Edge TPU",
coral.ai/docs/edgetpu/models-intro/ ("Model requirements" and the "Supported operations" table):
- every tensor is 8-bit quantized (int8/uint8; int32 only as conv/FC bias), sizes are constant at
  compile time, and a tensor of more than 3 dimensions has size > 1 only in its 3 innermost ones;
- only the ops of the table, with its limitations (pools and concatenation: no fused activation;
  MEAN: reduce over x/y only; STRIDED_SLICE: unit strides, no ellipsis/new-axis masks; PAD: not in
  the batch dimension; SOFTMAX: 1-D, <= 16000 elements; QUANTIZE, SUM, PACK, PRELU,
  TRANSPOSE_CONV: runtime >= 13; TRANSPOSE, REDUCE_MAX/MIN, RSQRT, SQUARED_DIFFERENCE: >= 14).
  HARD_SWISH is not in the table (google-coral/edgetpu#272 asks for it), DEQUANTIZE and custom ops
  never map;
- the compiler maps one graph prefix: at the first op it cannot map, that op and every op after it
  run on the CPU (the models-intro page, "partitioning"). ``first_unsupported`` is that split.

DSP: the TFLite Hexagon delegate's checks, ``IsNodeSupportedByHexagon`` and ``CheckOpVersion`` in
tensorflow/lite/delegates/hexagon/utils.cc (summarized in its README "Supported Ops"): 8-bit
inputs, tensors of <= 4 dims, the op-version whitelist, convs with stride <= 3, dilation 1 (conv)
and depth multiplier 1 (depthwise), fused activation only ReLU/ReLU6/ReLU1/none, pools without
activation, SUM and DEQUANTIZE unsupported. The newer QNN delegate (Qualcomm AI Engine Direct
Delegate, docs.qualcomm.com 80-63442-10 "Acceleration Support": HTP runs 8-bit fixed point) accepts
a superset of these ops, so a model that passes here also maps there. A delegate may take several
partitions; ``partitions`` counts the runs of delegated ops.

Symmetric int8 (``require_symmetric``, ``--symmetric``; ``config.model.int8_scheme="symmetric"``
exports check it for ``dsp``): for delegates that take only zero-point-0 int8 activations and one
scale per weight tensor, every int8 activation must have zero point 0 (the uint8 interface: 128)
and every conv / fully-connected weight one scale. The outputs of LOGISTIC and SOFTMAX are exempt:
TFLite fixes their quantization (scale 1/256, zero point -128) and any int8 delegate takes that.

The post-processing (``TFLite_Detection_PostProcess`` and the DEQUANTIZE ops feeding it) always runs
on the CPU; ``ok`` means every other op maps (for EdgeTPU also: none of them after the split).
"""

from __future__ import annotations

import dataclasses

from mobiledet_jax.export.postprocess_op import OP_NAME as POSTPROCESS_OP
from mobiledet_jax.tflite import flatbuffer

TARGETS = ("edgetpu", "dsp")
_8BIT = ("INT8", "UINT8")

# op -> minimum EdgeTPU runtime version ("All" = 10).
EDGETPU_OPS = {
    **dict.fromkeys(
        "ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED "
        "L2_NORMALIZATION LOGISTIC MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PAD RELU RELU6 RELU_N1_TO_1 "
        "RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SQUEEZE "
        "STRIDED_SLICE SUB TANH".split(),
        10,
    ),
    **dict.fromkeys("EXPAND_DIMS PACK PRELU QUANTIZE SUM TRANSPOSE_CONV".split(), 13),
    **dict.fromkeys("REDUCE_MAX REDUCE_MIN RSQRT SQUARED_DIFFERENCE TRANSPOSE".split(), 14),
}
# op -> highest op version the Hexagon delegate accepts (CheckOpVersion).
DSP_OPS = {
    **dict.fromkeys(
        "ADD ARG_MAX ARG_MIN AVERAGE_POOL_2D CONCATENATION L2_NORMALIZATION LOGISTIC MAXIMUM "
        "MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL PACK PAD QUANTIZE RELU6 RESIZE_BILINEAR "
        "RESIZE_NEAREST_NEIGHBOR SLICE SOFTMAX SPACE_TO_DEPTH SPLIT STRIDED_SLICE SUB TANH "
        "TRANSPOSE TRANSPOSE_CONV".split(),
        2,
    ),
    **dict.fromkeys("CONV_2D DEPTHWISE_CONV_2D".split(), 3),
    "FULLY_CONNECTED": 4,
    **dict.fromkeys("RELU HARD_SWISH RESHAPE DEPTH_TO_SPACE NEG".split(), 1),
}
_RELU_OR_NONE = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
_FIXED_OUTPUT_RANGE = ("LOGISTIC", "SOFTMAX")
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


@dataclasses.dataclass
class OpCheck:
    index: int
    name: str
    version: int
    postprocess: bool
    supported: bool
    reason: str  # why not (short, groupable), or "" when supported
    detail: str = ""  # e.g. the offending tensor
    mapped: bool = False  # runs on the accelerator (EdgeTPU: also before the split)


@dataclasses.dataclass
class PreflightResult:
    target: str
    ops: list[OpCheck]
    first_unsupported: int | None  # EdgeTPU split point (op index), None if everything maps
    partitions: int

    @property
    def mapped(self) -> int:
        return sum(op.mapped for op in self.ops)

    @property
    def failing(self) -> list[OpCheck]:
        """Model (non post-processing) ops that would not run on the accelerator."""
        return [op for op in self.ops if not op.postprocess and not op.mapped]

    @property
    def ok(self) -> bool:
        return not self.failing and self.partitions <= 1

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "ok": self.ok,
            "ops_total": len(self.ops),
            "ops_mapped": self.mapped,
            "ops_on_cpu": len(self.ops) - self.mapped,
            "first_unsupported": self.first_unsupported,
            "partitions": self.partitions,
            "by_type": self.by_type(),
            "failing": [dataclasses.asdict(op) for op in self.failing[:50]],
        }

    def by_type(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for op in self.ops:
            row = out.setdefault(op.name, {"count": 0, "mapped": 0, "reasons": []})
            row["count"] += 1
            row["mapped"] += op.mapped
            reason = op.reason or ("after the first unsupported op" if not op.mapped else "")
            if reason and reason not in row["reasons"]:
                row["reasons"].append(reason)
        return out

    def table(self) -> str:
        """An ``edgetpu_compiler -s``-style summary."""
        device = {"edgetpu": "Edge TPU", "dsp": "DSP"}[self.target]
        lines = [
            f"Preflight for {device}: {self.mapped} of {len(self.ops)} ops mapped, "
            f"{len(self.ops) - self.mapped} on CPU, {self.partitions} accelerator partition(s)"
        ]
        if self.first_unsupported is not None:
            op = self.ops[self.first_unsupported]
            why = f"{op.reason}: {op.detail}" if op.detail else op.reason
            lines.append(f"First op that would not map: #{op.index} {op.name} ({why})")
        lines.append(f"{'Operator':<32}{'Count':>6}  Status")
        for name, row in self.by_type().items():
            status = (
                f"Mapped to {device}"
                if row["mapped"] == row["count"]
                else "; ".join(row["reasons"])
            )
            if 0 < row["mapped"] < row["count"]:
                status = f"{row['mapped']} mapped; others: {status}"
            lines.append(f"{name:<32}{row['count']:>6}  {status}")
        lines.append("OK: backbone and head fully mapped" if self.ok else "FAIL: " + _summary(self))
        return "\n".join(lines)


def _summary(result: PreflightResult) -> str:
    names = sorted({op.name for op in result.failing})
    return f"{len(result.failing)} model op(s) would run on the CPU ({', '.join(names)})"


def _postprocess_ops(ops: list[flatbuffer.OpInfo]) -> set[int]:
    post = {op.index for op in ops if op.name == POSTPROCESS_OP}
    feeds = {t.index for op in ops if op.index in post for t in op.inputs if t is not None}
    post |= {
        op.index for op in ops if op.name == "DEQUANTIZE" and {t.index for t in op.outputs} <= feeds
    }
    return post


def _tensors(op: flatbuffer.OpInfo):
    return [t for t in (*op.inputs, *op.outputs) if t is not None]


def check_edgetpu_op(op: flatbuffer.OpInfo, runtime_version: int = 14) -> tuple[str, str]:
    """``("", "")`` if the op maps to the EdgeTPU, else ``(reason, detail)``."""
    reason = _edgetpu_reason(op, runtime_version)
    return reason if isinstance(reason, tuple) else (reason, "")


def _edgetpu_reason(op: flatbuffer.OpInfo, runtime_version: int) -> str | tuple[str, str]:
    if op.is_custom:
        return "custom op"
    if op.name not in EDGETPU_OPS:
        return "operation not supported"
    if EDGETPU_OPS[op.name] > runtime_version:
        return f"needs runtime >= {EDGETPU_OPS[op.name]}"
    for t in _tensors(op):
        if t.dtype in _8BIT:
            if not t.num_scales:
                return "8-bit tensor without quantization", t.name
        elif not (t.dtype == "INT32" and t.is_constant):
            return f"unsupported data type {t.dtype}", t.name
        if any(d < 0 for d in t.shape):
            return "dynamic-sized tensor", t.name
        if not t.is_constant and len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            return "more than 3 dims larger than 1", f"{t.name} {t.shape}"
    o = op.options
    if (
        op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION")
        and op.fused_activation != "NONE"
    ):
        return "fused activation not supported"
    if op.name == "CONV_2D" and o.dilationHFactor != o.dilationWFactor:
        return "different x/y dilation"
    if op.name == "STRIDED_SLICE" and (o.ellipsisMask or o.newAxisMask):
        return "ellipsis/new-axis mask"
    if op.name == "SOFTMAX" and len(op.inputs[0].shape) - op.inputs[0].shape.count(1) > 1:
        return "softmax input must be 1-D"
    return ""


def check_dsp_op(op: flatbuffer.OpInfo) -> tuple[str, str]:
    """``("", "")`` if the Hexagon delegate takes the op, else ``(reason, detail)``."""
    reason = _dsp_reason(op)
    return reason if isinstance(reason, tuple) else (reason, "")


def _dsp_reason(op: flatbuffer.OpInfo) -> str | tuple[str, str]:
    if op.is_custom:
        return "custom op"
    if op.name not in DSP_OPS:
        return "operation not supported by the delegate"
    if op.version > DSP_OPS[op.name]:
        return f"op version {op.version} > {DSP_OPS[op.name]}"
    for t in _tensors(op):
        if len(t.shape) > 4:
            return "tensor of more than 4 dims", t.name
    data_inputs = [t for t in op.inputs if t is not None and not (t.dtype == "INT32")]
    for t in data_inputs:
        if t.dtype not in _8BIT:
            return f"{t.dtype} input, not 8-bit", t.name
    o = op.options
    if op.fused_activation is not None and op.fused_activation not in _RELU_OR_NONE:
        return f"fused activation {op.fused_activation}"
    if op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D") and op.fused_activation != "NONE":
        return "pool with fused activation"
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if o.strideH > 3 or o.strideW > 3:
            return "stride > 3"
        dilated = o.dilationHFactor != 1 or o.dilationWFactor != 1
        if op.name == "CONV_2D" and dilated:
            return "dilated conv"
        if op.name == "DEPTHWISE_CONV_2D":
            if dilated and (o.strideH != 1 or o.strideW != 1):
                return "dilation with stride > 1"
            if o.depthMultiplier not in (0, 1) and op.inputs[0].shape[-1] != 1:
                return "depth multiplier > 1"
    if op.name in ("MEAN", "PAD", "MIRROR_PAD") and not op.inputs[1].is_constant:
        return "non-constant axis/paddings"
    return ""


def _fixed_range_tensors(ops: list[flatbuffer.OpInfo]) -> set[int]:
    """Tensors holding TFLite's fixed LOGISTIC / SOFTMAX output quantization: those ops' outputs
    and what QUANTIZE / RESHAPE carry of them (e.g. to the uint8 output)."""
    fixed: set[int] = set()
    for op in ops:
        carried = op.name in ("QUANTIZE", "RESHAPE") and op.inputs and op.inputs[0].index in fixed
        if op.name in _FIXED_OUTPUT_RANGE or carried:
            fixed |= {t.index for t in op.outputs}
    return fixed


def symmetric_reason(op: flatbuffer.OpInfo, fixed: set[int] = frozenset()) -> tuple[str, str]:
    """``("", "")`` if the op's int8 tensors are symmetric (module docstring), else the reason;
    ``fixed``: tensors exempt as TFLite's fixed-range outputs (``_fixed_range_tensors``)."""
    if op.name in _WEIGHTED and len(op.inputs) > 1 and op.inputs[1] is not None:
        w = op.inputs[1]
        if w.num_scales > 1:
            return "per-channel weights, not per-tensor", w.name
    for t in _tensors(op):
        if t.is_constant or t.index in fixed:
            continue
        zero = {"INT8": 0, "UINT8": 128}.get(t.dtype)
        if zero is not None and t.zero_points and any(z != zero for z in t.zero_points):
            return "activation zero point not 0 (asymmetric int8)", f"{t.name} {t.zero_points[0]}"
    return "", ""


def check(
    tflite: bytes, target: str, runtime_version: int = 14, require_symmetric: bool = False
) -> PreflightResult:
    """Checks every op of subgraph 0 for ``target`` ("edgetpu" or "dsp"); ``require_symmetric``
    also for symmetric int8 (zero-point-0 activations, per-tensor weights)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    model = flatbuffer.read(tflite)
    if len(model.subgraphs) != 1:
        raise ValueError(f"{len(model.subgraphs)} subgraphs; the EdgeTPU and DSP need exactly one")
    ops = flatbuffer.list_ops(model)
    post = _postprocess_ops(ops)
    fixed = _fixed_range_tensors(ops) if require_symmetric else set()
    checks = []
    for op in ops:
        reason, detail = (
            check_edgetpu_op(op, runtime_version) if target == "edgetpu" else check_dsp_op(op)
        )
        if not reason and require_symmetric and op.index not in post:
            reason, detail = symmetric_reason(op, fixed)
        checks.append(
            OpCheck(op.index, op.name, op.version, op.index in post, not reason, reason, detail)
        )
    first = next((c.index for c in checks if not c.supported), None)
    for c in checks:
        c.mapped = c.supported and (target == "dsp" or first is None or c.index < first)
    partitions, previous = 0, False
    for c in checks:
        if c.mapped and not previous:
            partitions += 1
        previous = c.mapped
    return PreflightResult(target, checks, first, partitions)
