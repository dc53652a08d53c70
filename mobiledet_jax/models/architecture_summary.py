"""Architecture summary of any config's detector: per-layer rows (params, MAdds) and totals.

Every number comes from the real Flax model. ``summarize`` traces ``model.init`` with ``jax.eval_shape``
(nothing is computed) under ``flax.linen.intercept_methods`` and records each ``ConvBN``, ``ConvBias``
and ``SqueezeExcite`` call: its module path, input and output shapes, stride and kernel shape. The
parameter counts come from the variables tree, each variable assigned to the row owning its module path.

Counting conventions (the parameter and MAdds counts of docs/reference/architectures.md):
  - params: all variables (conv kernels, BN gamma/beta and moving mean/variance, SE and predictor biases);
    "trainable" leaves out the BN moving statistics.
  - conv MAdds: multiply-adds of every convolution, depthwise and head included, for one image:
    ``out_H * out_W * kh * kw * in_per_group * out`` (= output positions x kernel size). BN, activations,
    residual adds and biases are not counted.
  - SE gating MAdds, reported separately: the two 1x1 convs of each squeeze-excite plus the elementwise
    multiply of the gate onto its input (H * W * C). The global average pool is not counted. For
    MobileDet-CPU at 320x320 this gives 442.5M (+4.9M SE gating), 447M in total, the figure
    docs/reference/architectures.md records.

Table rows are disjoint: a backbone block's row leaves out its SE, which has a row of its own, so the
columns add up to the group totals. ``format_table`` renders the rows as text, ``to_dict`` as JSON,
``block_diagram.plot_blocks`` as a PNG; the command line is ``python -m mobiledet_jax.summary``.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from mobiledet_jax.models import specs
from mobiledet_jax.models.backbone import resolve_blocks
from mobiledet_jax.models.factory import build_model, input_size
from mobiledet_jax.models.layers import ConvBias, ConvBN, SqueezeExcite
from mobiledet_jax.models.ssdlite import extra_layer_names

GROUPS = ("backbone", "extra layers", "heads")
_GROUP_OF_SCOPE = {"backbone": "backbone", "neck": "extra layers", "head": "heads"}
TYPE_LABELS = {
    specs.CONV: "Conv",
    specs.IBN: "IBN",
    specs.IBN_NOEXP: "IBN-noexp",
    specs.FUSED: "Fused",
    specs.TUCKER: "Tucker",
}


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One traced call of a ConvBN / ConvBias (``kind`` conv, depthwise, conv_bias, depthwise_bias)."""

    path: tuple[str, ...]
    kind: str
    kernel_shape: tuple[int, ...]
    stride: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def madds(self) -> int:
        """Multiply-adds for one image: output positions x kernel size."""
        _, h, w, _ = self.out_shape
        return h * w * math.prod(self.kernel_shape)


@dataclasses.dataclass(frozen=True)
class SECall:
    """One traced SqueezeExcite call; ``in_shape`` is the gated tensor [1, H, W, C]."""

    path: tuple[str, ...]
    hidden: int
    in_shape: tuple[int, ...]

    @property
    def gate_madds(self) -> int:
        return math.prod(self.in_shape[1:])


@dataclasses.dataclass
class Row:
    """One table row: a backbone block, an SE, an extra layer or a head branch."""

    group: str
    name: str
    type: str  # a block type, "se", "extra", "box" or "class"
    kernel: int = 0
    stride: int = 1
    detail: str = ""  # expansion / ratios / SE hidden width
    cin: int = 0
    cout: int = 0
    out_hw: tuple[int, int] = (0, 0)
    params: int = 0  # all variables
    trainable: int = 0
    madds: int = 0  # conv MAdds (SE excluded)
    se_madds: int = 0  # SE gating MAdds
    residual: bool = False
    se: bool = False  # the block has an SE (on its own row)
    endpoint: str = ""
    owners: list[tuple[str, ...]] = dataclasses.field(default_factory=list, repr=False)
    layers: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """Short block label for the diagram, e.g. "IBN k5 e8"."""
        base = TYPE_LABELS.get(self.type, self.type)
        parts = [base, f"k{self.kernel}"]
        if self.detail:
            parts.append(self.detail)
        if self.se:
            parts.append("+SE")
        return " ".join(parts)


@dataclasses.dataclass
class ModelSummary:
    model_name: str
    scope: str
    ssd_sources: tuple[str, str]
    input_hw: tuple[int, int]
    num_slots: int
    rows: list[Row]
    groups: dict[str, dict[str, int]]  # group -> params / trainable / bn_stats / madds / se_madds
    total: dict[str, int]

    def backbone_rows(self) -> list[Row]:
        return [r for r in self.rows if r.group == "backbone" and r.type != "se"]


def trace(model: nn.Module, input_shape: Sequence[int]) -> tuple[list, dict]:
    """Abstractly initialize ``model`` and record its conv and SE calls in call order.

    Returns (calls, variables): ``calls`` holds LayerCall and SECall records; ``variables`` is the
    tree of ShapeDtypeStructs that ``model.init`` would create.
    """
    records: list[Any] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(
            module, ConvBN | ConvBias | SqueezeExcite
        ):
            return next_fun(*args, **kwargs)
        index = len(records)
        records.append(None)  # keep call (pre-)order: an SE precedes its inner convs
        out = next_fun(*args, **kwargs)
        path = tuple(module.path)
        in_shape = tuple(args[0].shape)
        if isinstance(module, SqueezeExcite):
            records[index] = SECall(path, module.hidden, in_shape)
        else:
            kind = "depthwise" if module.depthwise else "conv"
            if isinstance(module, ConvBias):
                kind += "_bias"
            stride = getattr(module, "stride", 1)
            records[index] = (path, kind, stride, in_shape, tuple(out.shape))
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    params = traverse_util.flatten_dict(variables["params"])
    calls = []
    for r in records:
        if isinstance(r, tuple):
            path, kind, stride, in_shape, out_shape = r
            kernel_shape = tuple(params[(*path, "kernel")].shape)
            r = LayerCall(path, kind, kernel_shape, stride, in_shape, out_shape)
        calls.append(r)
    return calls, variables


def _row_key(path: tuple[str, ...], extra_index: dict[str, int]) -> tuple[str, str]:
    """(group, row name) owning a call at ``path``."""
    scope = path[0] if path else ""
    group = _GROUP_OF_SCOPE.get(scope, "other")
    if group == "backbone":
        return group, path[1]
    if group == "extra layers":
        i = extra_index.get(path[1])
        return group, f"extra layer {i} (map {i + 2})" if i is not None else path[1]
    if group == "heads" and len(path) >= 3:
        branch = "box" if path[2].startswith("BoxEncodingPredictor") else "class"
        return group, f"{path[1]}/{branch}"
    return group, "/".join(path)


def _expansion_detail(block: specs.BlockSpec) -> str:
    if block.block in (specs.IBN, specs.FUSED):
        return f"e{block.expansion:g}"
    if block.block == specs.TUCKER:
        return f"r{block.in_ratio:g}/{block.out_ratio:g}"
    return ""


def summarize(model_config: ml_collections.ConfigDict) -> ModelSummary:
    """Trace the detector of ``config.model`` and tabulate it (see the module docstring)."""
    model = build_model(model_config)
    spec = model.backbone_spec
    height, width = input_size(model_config)
    calls, variables = trace(model, (1, height, width, 3))
    rows = build_rows(calls, spec, model.width_multiplier)
    _assign_params(rows, variables)
    groups, total = group_totals(rows)
    n_vars = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
    n_params = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
    if (total["params"], total["trainable"]) != (n_vars, n_params):
        raise AssertionError(
            f"rows hold {total['params']}/{total['trainable']} variables, "
            f"the model has {n_vars}/{n_params}"
        )
    return ModelSummary(
        model_name=model_config.name,
        scope=spec.scope,
        ssd_sources=tuple(spec.ssd_sources),
        input_hw=(height, width),
        num_slots=model.num_classes + 1,
        rows=rows,
        groups=groups,
        total=total,
    )


def build_rows(
    calls: Sequence[LayerCall | SECall], spec: specs.BackboneSpec, width_multiplier: float
) -> list[Row]:
    """The table rows of traced ``calls`` (conv MAdds, shapes; no params yet), in call order."""
    blocks = {b.name: b for b in resolve_blocks(spec, width_multiplier)}
    extra_index = {
        name: i
        for i, names in enumerate(
            extra_layer_names(spec.extra_layer_prefix, width_multiplier), start=1
        )
        for name in names
    }
    se_paths = [c.path for c in calls if isinstance(c, SECall)]
    rows: dict[tuple[str, str], Row] = {}
    for c in calls:
        group, name = _row_key(c.path, extra_index)
        if isinstance(c, SECall):
            row = Row(group, f"{name}/{c.path[-1]}", "se", detail=f"h{c.hidden}")
            row.cin = row.cout = c.in_shape[-1]
            row.out_hw = tuple(c.in_shape[1:3])
            row.se_madds = c.gate_madds
            row.owners.append(c.path)
            rows[(group, row.name)] = row
            if (group, name) in rows:  # the block's row (its first conv precedes the SE)
                rows[(group, name)].se = True
            continue
        se = next((p for p in se_paths if c.path[: len(p)] == p), None)
        if se is not None:  # an SE's inner 1x1 conv
            row = rows[(group, f"{name}/{se[-1]}")]
            row.se_madds += c.madds
        else:
            if (group, name) not in rows:
                rows[(group, name)] = _new_row(group, name, c, blocks)
            row = rows[(group, name)]
            row.madds += c.madds
            row.cout = c.out_shape[-1]
            row.out_hw = tuple(c.out_shape[1:3])
            row.kernel = max(row.kernel, c.kernel_shape[0])
            if group != "backbone":
                row.stride *= c.stride
            row.owners.append(c.path)
        row.layers.append(_layer_dict(c))
    return list(rows.values())


def _layer_dict(c: LayerCall) -> dict[str, Any]:
    return {
        "path": "/".join(c.path),
        "kind": c.kind,
        "kernel_shape": list(c.kernel_shape),
        "stride": c.stride,
        "in_shape": list(c.in_shape[1:]),
        "out_shape": list(c.out_shape[1:]),
        "madds": c.madds,
    }


def group_totals(rows: Sequence[Row]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """(totals per group, overall totals); every group of ``GROUPS`` appears, "other" if used."""
    groups = {}
    for g in [*GROUPS, "other"]:
        members = [r for r in rows if r.group == g]
        if members or g in GROUPS:
            groups[g] = _totals(members)
    return groups, _totals(rows)


def _new_row(group: str, name: str, call: LayerCall, blocks: dict) -> Row:
    row = Row(group, name, "extra" if group == "extra layers" else name.split("/")[-1])
    row.cin = call.in_shape[-1]
    if group == "backbone" and name in blocks:
        b = blocks[name]
        row.type = b.spec.block
        row.stride = b.spec.stride
        row.detail = _expansion_detail(b.spec)
        row.residual = b.spec.residual
        row.endpoint = b.spec.endpoint or ""
    return row


def _assign_params(rows: list[Row], variables: dict) -> None:
    """Add each variable's size to the row owning the longest prefix of its module path."""
    owners = {}
    for row in rows:
        for p in row.owners:
            owners[p] = row
    other = None
    for collection, tree in variables.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            module_path = path[:-1]
            row = None
            for n in range(len(module_path), 0, -1):
                row = owners.get(module_path[:n])
                if row is not None:
                    break
            if row is None:  # a variable of no traced conv: keep the totals honest
                if other is None:
                    other = Row("other", "other variables", "other")
                    rows.append(other)
                row = other
            size = math.prod(leaf.shape)
            row.params += size
            if collection == "params":
                row.trainable += size


def _totals(rows: Sequence[Row]) -> dict[str, int]:
    t = {
        "params": sum(r.params for r in rows),
        "trainable": sum(r.trainable for r in rows),
        "madds": sum(r.madds for r in rows),
        "se_madds": sum(r.se_madds for r in rows),
    }
    t["bn_stats"] = t["params"] - t["trainable"]
    return t


# ---------------------------------------------------------------------------------------------------
# Text and JSON.


def _m(x: int, digits: int = 2) -> str:
    return f"{x / 1e6:.{digits}f}M"


def madds_text(t: dict[str, int]) -> str:
    text = _m(t["madds"], 1)
    if t["se_madds"]:
        text += f" (+{_m(t['se_madds'], 1)} SE gating; total {_m(t['madds'] + t['se_madds'], 1)})"
    return text


def format_table(summary: ModelSummary, detail: bool = False) -> str:
    """The per-layer table as text; ``detail`` adds one line per conv under each row."""
    h, w = summary.input_hw
    head = (
        f"SSDLite + {summary.scope} ({summary.model_name}), input {h}x{w}, "
        f"{summary.num_slots} class slots"
    )
    cols = (
        f"{'block':<40} {'type':<9} {'k':>2} {'s':>2} {'exp':<10} {'in -> out':>12} "
        f"{'out HxW':>9} {'params':>11} {'trainable':>11} {'MAdds':>9} {'SE MAdds':>9}  note"
    )
    rule = "-" * len(cols)
    lines = [head, "Rows are disjoint: a block's row excludes its SE row.", rule, cols]
    group = None
    for r in summary.rows:
        if r.group != group:
            group = r.group
            lines.append(rule)
        notes = []
        if r.residual:
            notes.append("res")
        if r.endpoint:
            notes.append(r.endpoint)
        name = f"  {r.name.split('/')[-1]}" if r.type == "se" else r.name
        lines.append(
            f"{name:<40} {r.type:<9} {r.kernel or '':>2} {r.stride if r.kernel else '':>2} "
            f"{r.detail:<10} {f'{r.cin} -> {r.cout}':>12} {f'{r.out_hw[0]}x{r.out_hw[1]}':>9} "
            f"{r.params:>11,} {r.trainable:>11,} {_m(r.madds) if r.type != 'se' else '':>9} "
            f"{_m(r.se_madds) if r.se_madds else '':>9}  {' '.join(notes)}"
        )
        if detail:
            for layer in r.layers:
                lines.append(
                    f"    {layer['path']:<56} {layer['kind']:<14} "
                    f"kernel {'x'.join(map(str, layer['kernel_shape'])):<14} "
                    f"s{layer['stride']} {layer['in_shape']} -> {layer['out_shape']} "
                    f"{_m(layer['madds'])}"
                )
    lines.append(rule)
    width = max(len(g) for g in summary.groups)
    for g, t in [*summary.groups.items(), ("total", summary.total)]:
        lines.append(
            f"{g:<{width + 1}} params {t['params']:>11,} (trainable {t['trainable']:>11,}, "
            f"BN moving stats {t['bn_stats']:>7,})  conv MAdds {madds_text(t)}"
        )
    return "\n".join(lines)


def to_dict(summary: ModelSummary) -> dict[str, Any]:
    """A JSON-ready dict of the summary (rows with their per-conv layers, group and overall totals)."""
    rows = []
    for r in summary.rows:
        d = dataclasses.asdict(r)
        d.pop("owners")
        d["out_hw"] = list(r.out_hw)
        if r.group == "backbone" and r.type != "se":
            d["label"] = r.label
        rows.append(d)
    return {
        "model": summary.model_name,
        "scope": summary.scope,
        "ssd_sources": list(summary.ssd_sources),
        "input_hw": list(summary.input_hw),
        "num_slots": summary.num_slots,
        "rows": rows,
        "groups": summary.groups,
        "total": summary.total,
    }
