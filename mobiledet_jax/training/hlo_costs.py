"""Where the bytes and FLOPs of a compiled program go: its optimized HLO, op by op.

``compiled.cost_analysis()`` gives one total per program. To see *why* a step moves the bytes it
does, ``op_costs`` reads the text of the compiled module (``compiled.as_text()``: after fusion and
layout assignment, with the TPU's tiled layouts) and gives, for every instruction the device runs
(those of the entry computation and of the loops and calls it makes; not those inside a fusion):

- ``bytes``: its operands and outputs as laid out, tiling padding included (``f32[16,160,160,16]
  {3,0,2,1:T(8,128)}`` pads the minor-most dimension, 16 channels, to 128 lanes and the next one to
  8 sublanes: 8x the logical size), counting only arrays in HBM (memory space 0; arrays placed in
  VMEM, ``S(1)``, and the sync flags, ``S(2)``, are on chip). ``logical_bytes`` is the same without
  padding. Each operand read and each output written counts once per instruction, which is what
  XLA's own "bytes accessed" counts too; an async copy or slice (``copy-start``, ``slice-start``)
  counts its new result and, for a slice, only the window it reads. ``all_spaces_bytes`` counts
  every memory space, as XLA's "bytes accessed" does (for MobileDet-EdgeTPU's train step on v5e-16
  the two agree within 10%);
- ``flops``: 2 x multiply-adds of the convolutions and dots it contains (the MXU's work, from
  the shapes as compiled; elementwise work is not counted): 166 GFLOP for MobileDet-EdgeTPU's
  step on v5e-16 against XLA's 150, whose count of the decomposed convolutions differs;
- the Flax module it comes from: the jax name stack in the op's ``metadata={op_name=...}``
  (``jit(step_fn)/transpose(jvp(SSDLite))/backbone/IBN_3/.../conv_general_dilated`` is the
  backward pass of ``backbone/IBN_3``), and the pass: ``forward`` (``jvp``), ``backward``
  (``transpose``) or ``step`` (the optimizer update and what is outside the differentiated loss);
- the compiler's own ``estimated_cycles`` for the op where its backend config has one.

These are static estimates from the compiled program, not measurements. ``training.aot`` puts the
top ops and the per-module totals in the AOT report (``--top_ops``).
"""

import collections
import dataclasses
import math
import re

DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
ZERO_COST = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "partition-id", "replica-id", "iota",
}  # fmt: skip
ARRAY = re.compile(r"([a-z]+[0-9a-z]*)\[([0-9,]*)\](?:\{([^}]*)\})?")
INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = ")
HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) \(")


@dataclasses.dataclass(frozen=True)
class Array:
    dtype: str
    dims: tuple[int, ...]
    layout: str  # as printed inside {...}: minor-to-major, then :T(..)(..)S(n)

    @property
    def memory_space(self) -> int:
        m = re.search(r"S\((\d+)\)", self.layout)
        return int(m.group(1)) if m else 0

    @property
    def logical_bytes(self) -> float:
        return math.prod(self.dims) * DTYPE_BYTES.get(self.dtype, 4)

    @property
    def padded_bytes(self) -> float:
        """Bytes as laid out: the minor dimensions rounded up to the first tile's shape."""
        dims = list(self.dims)
        order, _, tiling = self.layout.partition(":")
        tile = re.match(r"T\(([\d,]+)\)", tiling)
        if tile and dims:
            minor_to_major = [int(d) for d in order.split(",") if d.strip()]
            sizes = [int(t) for t in tile.group(1).split(",")]
            for i, t in enumerate(reversed(sizes)):
                if i < len(minor_to_major):
                    d = minor_to_major[i]
                    dims[d] = -(-dims[d] // t) * t
        return math.prod(dims) * DTYPE_BYTES.get(self.dtype, 4)

    def __str__(self) -> str:
        dims = ",".join(map(str, self.dims))
        return f"{self.dtype}[{dims}]" + (f"{{{self.layout}}}" if self.layout else "")


def parse_arrays(shape_text: str) -> list[Array]:
    """The arrays of a (possibly tuple) HLO shape as printed, e.g. ``(f32[8]{0:T(256)}, s32[])``."""
    return [Array(m.group(1), tuple(int(d) for d in m.group(2).split(",") if d), m.group(3) or "")
            for m in ARRAY.finditer(shape_text) if m.group(1) in DTYPE_BYTES]  # fmt: skip


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    shape: list[Array]
    operands: list[str]
    attrs: str  # everything after the operand list

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=(%?[\w.\->]+|\{{[^}}]*\}})", self.attrs)
        return m.group(1).lstrip("%") if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="((?:[^"\\]|\\.)*)"', self.attrs)
        return m.group(1).replace("\\'", "'").replace('\\"', '"') if m else ""


def _split_balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``text[start]`` (strings skipped)."""
    pairs, depth, i = {"(": ")", "{": "}", "[": "]"}, [], start
    while i < len(text):
        c = text[i]
        if c == '"':  # op names may hold brackets
            j = text.find('"', i + 1)
            i = j if j > 0 else len(text)
        elif c in pairs:
            depth.append(pairs[c])
        elif depth and c == depth[-1]:
            depth.pop()
            if not depth:
                return i + 1
        i += 1
    return len(text)


def parse_instruction(line: str) -> Instruction | None:
    m = INSTR.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):
        end = _split_balanced(rest, 0)
    else:
        end = rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _split_balanced(rest, op.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", rest[op.end() : close - 1])
    return Instruction(m.group(1), op.group(1), parse_arrays(shape), operands, rest[close:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """``{computation name: instructions}`` and the entry computation's name."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            h = HEADER.match(line)
            if h and line.rstrip().endswith("{"):
                current = h.group(2)
                comps[current] = []
                entry = current if h.group(1) else entry
        elif line.startswith("}"):
            current = None
        else:
            ins = parse_instruction(line)
            if ins is not None:
                comps[current].append(ins)
    return comps, entry


def conv_flops(ins: Instruction, shapes: dict[str, list[Array]]) -> float:
    """2 x MACs of a convolution or dot: output elements x the contraction per element."""
    if not ins.shape or len(ins.operands) < 2:
        return 0.0
    out = math.prod(ins.shape[0].dims)
    if ins.opcode == "convolution":
        labels = ins.attr("dim_labels") or ""
        kernel_labels = labels.split("_")[1].split("->")[0] if "_" in labels else ""
        kernel = shapes.get(ins.operands[1], [None])[0]
        if kernel is None or "o" not in kernel_labels or len(kernel_labels) != len(kernel.dims):
            return 0.0
        return 2.0 * out * math.prod(kernel.dims) / kernel.dims[kernel_labels.index("o")]
    if ins.opcode == "dot":
        lhs = shapes.get(ins.operands[0], [None])[0]
        contracting = ins.attr("lhs_contracting_dims") or "{}"
        dims = [int(d) for d in contracting.strip("{}").split(",") if d.strip()]
        if lhs is None:
            return 0.0
        return 2.0 * out * math.prod(lhs.dims[d] for d in dims)
    return 0.0


def module_of(op_name: str) -> tuple[str, str]:
    """``(pass, module path)`` of a jax name stack (see the module docstring)."""
    parts = [p for p in op_name.split("/") if p]
    if parts and parts[0].startswith("jit("):
        parts = parts[1:]
    wrappers = [p for p in parts[:-1] if "(" in p]
    names = [p for p in parts[:-1] if "(" not in p]
    if any(w.startswith("transpose(") for w in wrappers):
        step_pass = "backward"
    elif any("jvp(" in w for w in wrappers):
        step_pass = "forward"
    else:
        step_pass = "step"
    root = next((m.group(1) for w in wrappers if (m := re.search(r"jvp\((\w+)", w))), "")
    path = "/".join(([root] if root else []) + names)
    if not path:
        path = "loss" if step_pass != "step" else (parts[-1] if parts else "?")
    return step_pass, path


def op_costs(text: str) -> list[dict]:
    """One dict per instruction the device runs (see the module docstring), in program order."""
    comps, entry = parse_module(text)
    shapes = {i.name: i.shape for c in comps.values() for i in c}
    by_name = {i.name: i for c in comps.values() for i in c}
    flops_of: dict[str, float] = {}

    def computation_flops(name: str) -> float:
        if name not in flops_of:
            flops_of[name] = 0.0  # guards recursion
            flops_of[name] = sum(instruction_flops(i) for i in comps.get(name, []))
        return flops_of[name]

    def instruction_flops(ins: Instruction) -> float:
        if ins.opcode in ("convolution", "dot"):
            return conv_flops(ins, shapes)
        if ins.opcode == "fusion" and ins.attr("calls"):
            return computation_flops(ins.attr("calls"))
        return 0.0

    top, seen, queue = [], set(), [entry]
    while queue:
        name = queue.pop(0)
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for ins in comps[name]:
            for key in ("body", "condition", "to_apply" if ins.opcode == "call" else "-"):
                if ins.attr(key):
                    queue.append(ins.attr(key))
            top.append(ins)

    def origin(name: str, depth: int = 8) -> str:
        """The name stack of an op, or of what produced its first operand (layout copies,
        async slices and concatenations carry none of their own)."""
        ins = by_name.get(name)
        if ins is None or depth == 0:
            return ""
        if ins.op_name:
            return ins.op_name
        if ins.opcode == "fusion" and ins.attr("calls"):
            inner = next((i.op_name for i in comps.get(ins.attr("calls"), []) if i.op_name), "")
            if inner:
                return inner
        return next((o for o in (origin(x, depth - 1) for x in ins.operands) if o), "")

    rows = []
    for ins in top:
        if ins.opcode in ZERO_COST or ins.opcode.endswith("-done"):
            continue
        operands = [a for o in ins.operands for a in shapes.get(o, [])]
        outputs = list(ins.shape)
        if ins.opcode.endswith("-start"):
            # async: (operand aliases..., results..., sync flags); the results are what is new
            outputs = [a for a in outputs if a.memory_space != 2]
            for a in operands:
                if a in outputs:
                    outputs.remove(a)
        if ins.opcode in ("slice", "slice-start", "dynamic-slice") and operands and outputs:
            # a slice reads only the window it returns, from where its operand lives
            window, space = outputs[0], operands[0].memory_space
            layout = re.sub(r"S\(\d+\)", "", window.layout) + (f"S({space})" if space else "")
            operands = [dataclasses.replace(window, layout=layout)]
        hbm = [a for a in outputs + operands if a.memory_space == 0]
        op_name = origin(ins.name)
        step_pass, module = module_of(op_name)
        cycles = re.search(r'"estimated_cycles":"(\d+)"', ins.attrs)
        rows.append({
            "name": ins.name,
            "opcode": ins.opcode + (f":{ins.attr('kind')}" if ins.attr("kind") else ""),
            "bytes": sum(a.padded_bytes for a in hbm),
            "logical_bytes": sum(a.logical_bytes for a in hbm),
            "all_spaces_bytes": sum(a.padded_bytes for a in outputs + operands),
            "flops": instruction_flops(ins),
            "pass": step_pass,
            "module": module,
            "op_name": op_name,
            "output": ", ".join(map(str, outputs)),
            "operands": [str(a) for a in operands[:8]] + (["..."] if len(operands) > 8 else []),
            "estimated_cycles": int(cycles.group(1)) if cycles else None,
        })  # fmt: skip
    return rows


def by_module(rows: list[dict]) -> list[dict]:
    """Bytes, FLOPs and op count summed per (pass, module), most bytes first."""
    acc: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        c = acc[r["pass"], r["module"]]
        c["bytes"] += r["bytes"]
        c["logical_bytes"] += r["logical_bytes"]
        c["all_spaces_bytes"] += r["all_spaces_bytes"]
        c["flops"] += r["flops"]
        c["ops"] += 1
    out = [{"pass": p, "module": m, **dict(c)} for (p, m), c in acc.items()]
    return sorted(out, key=lambda r: -r["bytes"])


def summary(text: str, top: int) -> dict:
    """Totals, the ``top`` ops by bytes and by FLOPs, and the ``top`` modules by bytes."""
    rows = op_costs(text)
    by_bytes = sorted(rows, key=lambda r: -r["bytes"])
    by_flops = sorted(rows, key=lambda r: -r["flops"])
    passes = collections.Counter()
    for r in rows:
        passes[r["pass"]] += r["bytes"]
    return {
        "ops": len(rows),
        "bytes": sum(r["bytes"] for r in rows),
        "logical_bytes": sum(r["logical_bytes"] for r in rows),
        "all_spaces_bytes": sum(r["all_spaces_bytes"] for r in rows),
        "flops": sum(r["flops"] for r in rows),
        "bytes_by_pass": dict(passes),
        "top_by_bytes": by_bytes[:top],
        "top_by_flops": by_flops[:top],
        "top_modules_by_bytes": by_module(rows)[:top],
    }
