"""The supernet's bookkeeping as pure functions: the plan (static widths and decision rows of every
slot), mixing-weight rows, the channel masks they give, the active-architecture L2 and the copy of
an architecture's shared weights into a standalone ``SSDLite`` (``standalone_variables``).

Masks: a width choice k is the prefix mask ``[1]*k + [0]*(max-k)``; a mask that depends on several
rows (e.g. IBN's inner width ``int(cin * e)``: the input width and the expansion) is
``sum_cells prod(row weights) * prefix(width of the cell)``, exact for one-hot rows and the
weighted mixture of prefix masks otherwise. The module code (``supernet.py``) and ``active_l2``
use the same functions, so the L2 sees exactly the channels the forward pass uses.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.detection.anchors import anchors_per_location as reference_anchors_per_location
from mobiledet_jax.models import specs
from mobiledet_jax.models.backbone import resolve_blocks
from mobiledet_jax.models.blocks import INNER_NAMES
from mobiledet_jax.models.layers import round8
from mobiledet_jax.models.ssdlite import SSDLite, extra_layer_names
from mobiledet_jax.search.space import SKIP, SearchSpace, decision_index, decisions, decode

Array = jax.Array
SE_RATIO = specs.BackboneSpec.se_ratio  # the decoded tables' default (0.25)
NECK_PREFIX = specs.BackboneSpec.extra_layer_prefix  # "C5", as decode leaves it
SSD_SOURCES = specs.BackboneSpec.ssd_sources  # ("C4", "C5")
REFERENCE_ANCHORS = reference_anchors_per_location()

# ----------------------------------------------------------------------------------------------
# The plan: static widths and decision positions of every slot.


@dataclasses.dataclass(frozen=True)
class LayerSlot:
    """One searchable layer position of the supernet with its decisions (rows of ``weights``)."""

    name: str  # "b3_l2" (a Flax module name)
    block: str
    layer: int
    stride: int
    residual: bool
    families: tuple[str, ...]  # ``skip`` included where allowed
    family_decision: int
    cin_widths: tuple[int, ...]
    cin_decision: int
    cout_widths: tuple[int, ...]
    cout_decision: int
    sub_decisions: tuple[tuple[str, str, int], ...]  # (family, "kernel" | ..., decision)
    endpoint: str | None  # set on the last slot of an endpoint block

    def sub(self, family: str, name: str) -> int:
        return next(d for f, n, d in self.sub_decisions if f == family and n == name)


@dataclasses.dataclass(frozen=True)
class Plan:
    stem_widths: tuple[int, ...]
    stem_decision: int
    slots: tuple[LayerSlot, ...]
    endpoint_widths: tuple[tuple[str, tuple[int, ...], int], ...]  # (name, widths, decision)
    num_decisions: int
    max_choices: int


@functools.lru_cache(maxsize=32)
def plan(space: SearchSpace) -> Plan:
    """The supernet's static layout: every slot's widths and decision rows, in decision order."""
    pos = decision_index(space)
    stem = (space.widths(space.skeleton[0]), pos["stem.filters"])
    prev = stem
    slots, ends = [], []
    for bi, block in enumerate(space.skeleton[1:], start=1):
        own = (space.widths(block), pos[f"{block.name}.filters"])
        for layer in range(1, block.max_layers + 1):
            fams = space.slot_families(bi, layer)
            prefix = f"{block.name}.l{layer}"
            subs = tuple(
                (f, n, d)
                for f in fams
                for n in ("kernel", "expansion", "r_in", "r_out")
                if (d := pos.get(f"{prefix}.{f}.{n}")) is not None
            )
            cin = prev if layer == 1 else own
            last = layer == block.max_layers
            slots.append(
                LayerSlot(
                    f"{block.name}_l{layer}",
                    block.name,
                    layer,
                    block.stride if layer == 1 else 1,
                    layer > 1,
                    fams,
                    pos[f"{prefix}.family"],
                    *cin,
                    *own,
                    subs,
                    block.endpoint if last else None,
                )
            )
        if block.endpoint:
            ends.append((block.endpoint, *own))
        prev = own
    n = len(decisions(space))
    return Plan(*stem, tuple(slots), tuple(ends), n, max_choices(space))


def max_choices(space: SearchSpace) -> int:
    return max(len(d.choices) for d in decisions(space))


def one_hot_weights(space: SearchSpace, indices) -> np.ndarray:
    """float32 ``[D, C_max]``: row d one-hot at ``indices[d]`` (a sampled architecture)."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    decs = decisions(space)
    if idx.shape[0] != len(decs):
        raise ValueError(f"expected {len(decs)} indices, got {idx.shape[0]}")
    out = np.zeros((len(decs), max_choices(space)), np.float32)
    out[np.arange(len(decs)), idx] = 1.0
    return out


def uniform_weights(space: SearchSpace) -> np.ndarray:
    """float32 ``[D, C_max]``: 1/n over each decision's n valid choices (op warmup)."""
    decs = decisions(space)
    out = np.zeros((len(decs), max_choices(space)), np.float32)
    for i, d in enumerate(decs):
        out[i, : len(d.choices)] = 1.0 / len(d.choices)
    return out


def width_tables(space: SearchSpace, slot: LayerSlot, family: str) -> dict[str, tuple]:
    """Mask name -> (width table, the decisions indexing its axes) of one family of a slot.

    ``in`` / ``out``: the layer's input / output width; ``inner``: the expanded width (IBN, Fused)
    or Tucker's rank_out; ``rank_in``: Tucker's first rank; ``se``: the SE hidden width."""
    cin, cout = slot.cin_widths, slot.cout_widths
    t: dict[str, tuple] = {
        "in": (np.array(cin), (slot.cin_decision,)),
        "out": (np.array(cout), (slot.cout_decision,)),
    }
    grid = lambda widths, factors, f: np.array([[f(c, x) for x in factors] for c in widths])
    if family in (specs.IBN, specs.FUSED):
        decs = (slot.cin_decision, slot.sub(family, "expansion"))
        inner = grid(cin, space.expansions, lambda c, e: int(c * e))
        t["inner"] = (inner, decs)
        if space.se:
            t["se"] = (np.vectorize(lambda v: round8(v * SE_RATIO))(inner), decs)
    elif family == specs.IBN_NOEXP and space.se:
        t["se"] = (np.array([round8(c * SE_RATIO) for c in cin]), (slot.cin_decision,))
    elif family == specs.TUCKER:
        rank = lambda c, r: round8(c * r)
        t["rank_in"] = (grid(cin, space.ranks, rank), (slot.cin_decision, slot.sub(family, "r_in")))
        t["inner"] = (
            grid(cout, space.ranks, rank),
            (slot.cout_decision, slot.sub(family, "r_out")),
        )
    return t


def mixed_mask(table: np.ndarray, rows: list[Array]) -> Array:
    """sum over the table's cells of (product of their rows' weights) * prefix mask of the cell's
    width, as a ``[table.max()]`` vector."""
    prefix = (np.arange(table.max()) < table[..., None]).astype(np.float32)
    w = rows[0]
    for r in rows[1:]:
        w = w[..., None] * r
    return jnp.tensordot(w, prefix, axes=w.ndim)


def _row(weights: Array, decision: int, n: int) -> Array:
    return weights[decision, :n]


def branch_masks(space: SearchSpace, slot: LayerSlot, family: str, weights: Array) -> dict:
    """The channel masks of one family of a slot (see ``width_tables``)."""
    return {
        key: mixed_mask(
            table, [_row(weights, d, s) for d, s in zip(decs, table.shape, strict=True)]
        )
        for key, (table, decs) in width_tables(space, slot, family).items()
    }


def branch_sizes(space: SearchSpace, slot: LayerSlot, family: str) -> tuple[tuple[str, int], ...]:
    return tuple((k, int(t.max())) for k, (t, _) in width_tables(space, slot, family).items())


def branch_weights(space: SearchSpace, slot: LayerSlot, weights: Array) -> list:
    """(family, kernel, mixing weight) of every branch of a slot (``skip`` has none)."""
    fam_w = weights[slot.family_decision]
    out = []
    for fi, fam in enumerate(slot.families):
        if fam == SKIP:
            continue
        kd = slot.sub(fam, "kernel")
        out += [(fam, k, fam_w[fi] * weights[kd, ki]) for ki, k in enumerate(space.kernels)]
    return out


def endpoint_masks(space: SearchSpace, weights: Array) -> dict[str, Array]:
    return {
        name: mixed_mask(np.array(widths), [_row(weights, d, len(widths))])
        for name, widths, d in plan(space).endpoint_widths
    }


def stem_mask(space: SearchSpace, weights: Array) -> Array:
    p = plan(space)
    return mixed_mask(np.array(p.stem_widths), [_row(weights, p.stem_decision, len(p.stem_widths))])


def _set(tree: dict, path: tuple[str, ...], fn) -> dict:
    """A copy of a nested dict with the leaf at ``path`` replaced by ``fn(leaf)``."""
    if not path:
        return fn(tree)
    return {**tree, path[0]: _set(tree[path[0]], path[1:], fn)}


def mask_neck(neck: dict, masks: dict[str, Array]) -> dict:
    """Neck params with its first 1x1's input rows beyond the active C5 width zeroed."""
    m5 = masks[SSD_SOURCES[1]][None, None, :, None]
    return _set(neck, (extra_layer_names(NECK_PREFIX)[0][0], "kernel"), lambda k: k * m5)


def mask_head(head: dict, masks: dict[str, Array]) -> dict:
    """Head params with the entries that read C4 (BoxPredictor_0) and C5 (BoxPredictor_1) channels
    beyond the active widths zeroed: the depthwise kernels and the 1x1 predictors' input rows (a
    depthwise BN of a zero channel outputs its bias)."""
    for i, source in enumerate(SSD_SOURCES):
        m = masks[source]
        for name in ("BoxEncodingPredictor", "ClassPredictor"):
            bp = f"BoxPredictor_{i}"
            head = _set(head, (bp, f"{name}_depthwise", "kernel"), lambda k, m=m: k * m)
            head = _set(head, (bp, name, "kernel"), lambda k, m=m: k * m[None, None, :, None])
    return head


# ----------------------------------------------------------------------------------------------
# L2 of the active architecture, and the standalone copy.

# (kernel path inside a branch, input mask, output mask); None: not masked on that axis.
_SE = lambda c: [(("SqueezeExcite", "Conv"), c, "se"), (("SqueezeExcite", "Conv_1"), "se", c)]


def branch_kernels(family: str, se: bool) -> list[tuple[tuple[str, ...], str | None, str]]:
    """Every conv kernel of a branch with the masks of its input and output channels."""
    if family == specs.TUCKER:
        return [(("Conv",), "in", "rank_in"), (("Conv_1",), "rank_in", "inner"),
                (("Conv_2",), "inner", "out")]  # fmt: skip
    expand, dw, _, project = INNER_NAMES["mobiledet"][family]
    spatial = "in" if family == specs.IBN_NOEXP else "inner"
    out = []
    if family in (specs.IBN, specs.FUSED):
        out.append(((expand,), "in", "inner"))
    if family != specs.FUSED:
        out.append(((dw,), None, spatial))
    return out + (_SE(spatial) if se else []) + [((project,), spatial, "out")]


def _masked(kernel: Array, m_in: Array | None, m_out: Array) -> Array:
    k = kernel.astype(jnp.float32) * m_out
    return k if m_in is None else k * m_in[:, None]


def _sum_sq(x: Array) -> Array:
    return jnp.sum(jnp.square(x.astype(jnp.float32)))


def _unwrap(params: dict) -> dict:
    return params["params"] if "params" in params and "backbone" not in params else params


def active_l2(params: dict, weights: Array, space: SearchSpace) -> Array:
    """``0.5 * sum(w**2)`` over the conv kernels (``losses.l2_regularization``'s leaves: every
    ``kernel``, SE and predictor kernels included; no BN or bias) of the active architecture: each
    kernel times its input / output channel masks, each branch's sum times its mixing weight;
    the neck and head kernels whole, except the entries that read inactive C4 / C5 channels.
    With one-hot ``weights`` it equals the standalone model's L2 (tests/search); with soft ones
    it is the weighted mixture (an expectation over branches, with mixed masks)."""
    params, weights = _unwrap(params), jnp.asarray(weights, jnp.float32)
    bb = params["backbone"]
    total = _sum_sq(_masked(bb["stem"]["kernel"], None, stem_mask(space, weights)))
    for slot in plan(space).slots:
        masks = {f: branch_masks(space, slot, f, weights) for f in slot.families if f != SKIP}
        for fam, k, wb in branch_weights(space, slot, weights):
            branch, m = bb[slot.name][f"{fam}_k{k}"], masks[fam]
            part = jnp.zeros((), jnp.float32)
            for path, m_in, m_out in branch_kernels(fam, space.se and fam != specs.TUCKER):
                kernel = functools.reduce(lambda t, key: t[key], path, branch)["kernel"]
                part = part + _sum_sq(_masked(kernel, m.get(m_in), m[m_out]))
            total = total + wb * part
    em = endpoint_masks(space, weights)
    for tree in (mask_neck(params["neck"], em), mask_head(params["head"], em)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if getattr(path[-1], "key", None) == "kernel":
                total = total + _sum_sq(leaf)
    return 0.5 * total


def standalone_model(
    space: SearchSpace, indices, num_classes: int, anchors_per_location=None, **kwargs
) -> SSDLite:
    """The standalone ``SSDLite`` of an architecture (``kwargs``: e.g. ``conv_form``)."""
    return SSDLite(
        backbone_spec=decode(space, indices),
        num_classes=num_classes,
        anchors_per_location=tuple(anchors_per_location or REFERENCE_ANCHORS),
        **kwargs,
    )


def _branch_paths(space: SearchSpace, indices) -> list[tuple[str, ...]]:
    """The supernet path of each row of ``decode(space, indices)`` (the stem first)."""
    idx = np.asarray(indices).reshape(-1)
    paths = [("stem",)]
    for slot in plan(space).slots:
        fam = slot.families[idx[slot.family_decision]]
        if fam != SKIP:
            k = space.kernels[idx[slot.sub(fam, "kernel")]]
            paths.append((slot.name, f"{fam}_k{k}"))
    return paths


def _prefix(target, source):
    """``source`` sliced to the shapes of ``target`` (a tree of shape structs), leading entries."""
    if isinstance(target, dict):
        return {key: _prefix(value, source[key]) for key, value in target.items()}
    src = jnp.asarray(source)
    if src.ndim != len(target.shape) or any(
        a < b for a, b in zip(src.shape, target.shape, strict=True)
    ):
        raise ValueError(f"cannot slice {src.shape} to {target.shape}")
    return src[tuple(slice(0, n) for n in target.shape)].astype(target.dtype)


def standalone_variables(
    supernet_params: dict,
    space: SearchSpace,
    indices,
    num_classes: int,
    anchors_per_location=None,
) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` for ``standalone_model(space, indices, num_classes, ...)``:
    the chosen branches' prefix slices of the shared kernels and BN scales / biases, the neck and
    head sliced at their C4 / C5 inputs. ``batch_stats`` are placeholders (mean 0, variance 1):
    the supernet keeps none, so evaluate in train mode or re-estimate them."""
    sup = _unwrap(supernet_params)
    model = standalone_model(space, indices, num_classes, anchors_per_location)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    rows = resolve_blocks(model.backbone_spec)
    paths = _branch_paths(space, indices)
    target = shapes["params"]
    backbone = {}
    for row, path in zip(rows, paths, strict=True):
        source = functools.reduce(lambda t, key: t[key], path, sup["backbone"])
        backbone[row.name] = _prefix(target["backbone"][row.name], source)
    params = {
        "backbone": backbone,
        "neck": _prefix(target["neck"], sup["neck"]),
        "head": _prefix(target["head"], sup["head"]),
    }
    stats = jax.tree_util.tree_map_with_path(
        lambda p, s: (jnp.ones if p[-1].key == "var" else jnp.zeros)(s.shape, s.dtype),
        shapes["batch_stats"],
    )
    return {"params": params, "batch_stats": stats}
