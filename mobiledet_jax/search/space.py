"""Search spaces as data: a fixed skeleton of blocks, a width decision per block and an op decision
per layer slot, decoding to the existing ``models.specs.BackboneSpec`` (no new block code).

The skeleton (strides, layers per block, base widths, endpoints) is TuNAS' ProxylessNAS-style
detection skeleton; the released MobileDet-CPU, -EdgeTPU and -DSP tables are points of it
(``encode`` finds their indices; MobileDet-GPU's 128-wide blocks are not on the width grid).

Decisions come in one fixed order: for each block its ``filters``; then for each layer slot its
``family`` and, for each family of that slot, the family's sub-decisions (kernel, expansion, or
Tucker ranks). A sub-decision is *active* only when its parent family is the one chosen; an
architecture is one int per decision (``indices``), inactive ones conventionally 0.

Rules (docs/search.md): layer 1 of a block carries the block's stride and no residual; layers
2..n are stride-1 residual layers and may be ``skip`` (they vanish from the decoded table) in
blocks b2..b6; b1 chooses between an IBN without expansion and (when the space has it) a Tucker
block; all layers of a block share its width. Widths are ``round8(base * m)``, duplicates dropped.
"""

import dataclasses
import math

import numpy as np

from mobiledet_jax.models import specs
from mobiledet_jax.models.layers import round8

SKIP = "skip"
FAMILY_VARIANTS = {
    "ibn": ("ibn",),
    "ibn_fused": ("ibn", "fused"),
    "ibn_fused_tucker": ("ibn", "fused", "tucker"),
}
TARGETS = ("cpu", "edgetpu", "dsp", "gpu")
SEARCHED_SCOPE = "MobileDetSearched"


@dataclasses.dataclass(frozen=True)
class SkeletonBlock:
    """One block of the skeleton: stride of its first layer, its layer slots, base width."""

    name: str
    stride: int
    max_layers: int
    base: int
    endpoint: str | None = None


# TuNAS detection skeleton (stem, b1..b7); C4 and C5 feed the SSDLite neck and head.
FULL_SKELETON = (
    SkeletonBlock("stem", 2, 1, 32),
    SkeletonBlock("b1", 1, 1, 16, "C1"),
    SkeletonBlock("b2", 2, 4, 32, "C2"),
    SkeletonBlock("b3", 2, 4, 48, "C3"),
    SkeletonBlock("b4", 2, 4, 96),
    SkeletonBlock("b5", 1, 4, 96, "C4"),
    SkeletonBlock("b6", 2, 4, 160),
    SkeletonBlock("b7", 1, 1, 192, "C5"),
)
FULL_MULTIPLIERS = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A search space. ``families``: the op families of the searched layers of b2..b7 (b1 picks
    between ``ibn_noexp`` and, when "tucker" is here, ``tucker``)."""

    name: str
    target: str
    skeleton: tuple[SkeletonBlock, ...] = FULL_SKELETON
    multipliers: tuple[float, ...] = FULL_MULTIPLIERS
    families: tuple[str, ...] = FAMILY_VARIANTS["ibn_fused_tucker"]
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[float, ...] = (4.0, 8.0)
    ranks: tuple[float, ...] = (0.25, 0.75)
    activation: str = "relu6"
    se: bool = False  # squeeze-excite in IBN / IBN-noexp / Fused layers (never in Tucker)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected one of {TARGETS}")
        for f in self.families:
            if f not in ("ibn", "fused", "tucker"):
                raise ValueError(f"unknown op family {f!r}")
        if self.skeleton[0].name != "stem":
            raise ValueError("the skeleton's first block must be the stem")

    def widths(self, block: SkeletonBlock) -> tuple[int, ...]:
        """The block's output width choices: sorted, duplicates after rounding dropped."""
        return tuple(sorted({round8(block.base * m) for m in self.multipliers}))

    def slot_families(self, block_index: int, layer: int) -> tuple[str, ...]:
        """Family choices of a layer slot (``layer`` counts from 1)."""
        block = self.skeleton[block_index]
        if block.name == "b1" or block_index == 1:
            return ("ibn_noexp",) + (("tucker",) if "tucker" in self.families else ())
        if layer == 1:
            return self.families
        return self.families + (SKIP,)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One categorical choice. Active when ``parent`` is -1, or when the parent is active and
    chose ``parent_value`` (an index into its choices)."""

    name: str
    choices: tuple
    parent: int = -1
    parent_value: int = -1


def _sub_decisions(space: SearchSpace, family: str) -> list[tuple[str, tuple]]:
    if family in ("ibn", "fused"):
        return [("kernel", space.kernels), ("expansion", space.expansions)]
    if family == "ibn_noexp":
        return [("kernel", space.kernels)]
    if family == "tucker":
        return [("kernel", space.kernels), ("r_in", space.ranks), ("r_out", space.ranks)]
    return []


def decisions(space: SearchSpace) -> tuple[Decision, ...]:
    """Every decision of the space, in the fixed order (parents before their children)."""
    out: list[Decision] = []
    for bi, block in enumerate(space.skeleton):
        out.append(Decision(f"{block.name}.filters", space.widths(block)))
        if block.name == "stem":
            continue
        for layer in range(1, block.max_layers + 1):
            fams = space.slot_families(bi, layer)
            parent = len(out)
            out.append(Decision(f"{block.name}.l{layer}.family", fams))
            for fi, fam in enumerate(fams):
                for sub, choices in _sub_decisions(space, fam):
                    out.append(Decision(f"{block.name}.l{layer}.{fam}.{sub}", choices, parent, fi))
    return tuple(out)


def decision_index(space: SearchSpace) -> dict[str, int]:
    """Decision name -> its position in ``decisions(space)``."""
    return {d.name: i for i, d in enumerate(decisions(space))}


def active_mask(space: SearchSpace, indices) -> np.ndarray:
    """Which decisions matter for ``indices`` (bool per decision)."""
    return active_from_parents(decisions(space), indices)


def active_from_parents(decs: tuple[Decision, ...], indices) -> np.ndarray:
    idx = np.asarray(indices)
    active = np.zeros(len(decs), bool)
    for i, d in enumerate(decs):
        active[i] = d.parent < 0 or (active[d.parent] and idx[d.parent] == d.parent_value)
    return active


def _check_indices(decs, indices) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.shape[0] != len(decs):
        raise ValueError(f"expected {len(decs)} decisions, got {idx.shape[0]}")
    for d, i in zip(decs, idx, strict=True):
        if not 0 <= i < len(d.choices):
            raise ValueError(f"decision {d.name}: index {i} out of range({len(d.choices)})")
    return idx


def decode(space: SearchSpace, indices) -> specs.BackboneSpec:
    """The ``BackboneSpec`` of an architecture (skipped layers dropped)."""
    decs = decisions(space)
    idx = _check_indices(decs, indices)
    pos = decision_index(space)

    def choice(name):
        i = pos[name]
        return decs[i].choices[idx[i]]

    rows: list[specs.BlockSpec] = []
    for block in space.skeleton:
        width = choice(f"{block.name}.filters")
        if block.name == "stem":
            rows.append(specs.conv(3, block.stride, width))
            continue
        block_rows = []
        for layer in range(1, block.max_layers + 1):
            prefix = f"{block.name}.l{layer}"
            fam = choice(f"{prefix}.family")
            if fam == SKIP:
                continue
            sub = {name: choice(f"{prefix}.{fam}.{name}") for name, _ in _sub_decisions(space, fam)}
            block_rows.append(
                specs.BlockSpec(
                    fam,
                    sub["kernel"],
                    block.stride if layer == 1 else 1,
                    width,
                    expansion=float(sub.get("expansion", 1.0)),
                    in_ratio=float(sub.get("r_in", 0.0)),
                    out_ratio=float(sub.get("r_out", 0.0)),
                    residual=layer > 1,
                    se=space.se and fam != "tucker",
                )
            )
        if block.endpoint:
            block_rows[-1] = dataclasses.replace(block_rows[-1], endpoint=block.endpoint)
        rows.extend(block_rows)
    return specs.BackboneSpec(
        scope=SEARCHED_SCOPE,
        activation=space.activation,
        blocks=tuple(rows),
        se_activation=space.activation if space.se else "relu6",
    )


class NotInSpaceError(ValueError):
    """A backbone table that is not a point of the space."""


def _group(spec: specs.BackboneSpec) -> list[list[specs.BlockSpec]]:
    """Rows grouped into skeleton blocks: the stem, then a new block at every non-residual row."""
    rows = list(spec.blocks)
    if not rows or rows[0].block != specs.CONV:
        raise NotInSpaceError("the table must start with the stem conv")
    groups = [[rows[0]]]
    for row in rows[1:]:
        if row.block == specs.CONV:
            raise NotInSpaceError("only the stem may be a plain conv")
        if row.residual and len(groups) > 1:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def encode(space: SearchSpace, spec: specs.BackboneSpec) -> np.ndarray:
    """The indices of a backbone table in ``space`` (NotInSpaceError naming the first mismatch)."""
    decs = decisions(space)
    pos = decision_index(space)
    idx = np.zeros(len(decs), np.int64)
    if spec.activation != space.activation:
        raise NotInSpaceError(
            f"activation {spec.activation!r}, the space uses {space.activation!r}"
        )
    groups = _group(spec)
    if len(groups) != len(space.skeleton):
        raise NotInSpaceError(
            f"{len(groups)} blocks (stem included), the skeleton has {len(space.skeleton)}"
        )

    def put(name, value):
        d = decs[pos[name]]
        matches = [i for i, c in enumerate(d.choices) if c == value]
        if not matches:
            raise NotInSpaceError(f"{name}: {value!r} is not one of {d.choices}")
        idx[pos[name]] = matches[0]

    for block, rows in zip(space.skeleton, groups, strict=True):
        widths = {r.out for r in rows}
        if len(widths) != 1:
            raise NotInSpaceError(f"{block.name}: layers of one block differ in width {widths}")
        put(f"{block.name}.filters", rows[0].out)
        if block.name == "stem":
            if rows[0].kernel != 3 or rows[0].stride != block.stride:
                raise NotInSpaceError("the stem must be a 3x3 stride-2 conv")
            continue
        if len(rows) > block.max_layers:
            raise NotInSpaceError(f"{block.name}: {len(rows)} layers, at most {block.max_layers}")
        if rows[0].stride != block.stride or any(r.stride != 1 for r in rows[1:]):
            raise NotInSpaceError(f"{block.name}: strides {[r.stride for r in rows]}")
        ends = [r.endpoint for r in rows if r.endpoint]
        if ends != ([block.endpoint] if block.endpoint else []) or (
            block.endpoint and rows[-1].endpoint != block.endpoint
        ):
            raise NotInSpaceError(f"{block.name}: endpoints {ends}, expected {block.endpoint}")
        for layer in range(1, block.max_layers + 1):
            prefix = f"{block.name}.l{layer}"
            if layer > len(rows):
                put(f"{prefix}.family", SKIP)
                continue
            row = rows[layer - 1]
            put(f"{prefix}.family", row.block)
            if row.se != (space.se and row.block != "tucker"):
                raise NotInSpaceError(f"{prefix}: squeeze-excite {row.se} does not fit the space")
            values = {
                "kernel": row.kernel,
                "expansion": row.expansion,
                "r_in": row.in_ratio,
                "r_out": row.out_ratio,
            }
            for name, _ in _sub_decisions(space, row.block):
                put(f"{prefix}.{row.block}.{name}", values[name])
    return idx


def random_indices(space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    """An architecture drawn uniformly per decision (inactive decisions set to 0)."""
    decs = decisions(space)
    idx = np.array([rng.integers(len(d.choices)) for d in decs], np.int64)
    return np.where(active_from_parents(decs, idx), idx, 0)


def log10_size(space: SearchSpace) -> float:
    """log10 of the number of distinct architectures (decoded tables) of the space."""
    total = 0.0
    decs = decisions(space)
    for d_i, d in enumerate(decs):
        if d.name.endswith(".filters"):
            total += math.log10(len(d.choices))
        elif d.name.endswith(".family"):
            count = 0
            for fi in range(len(d.choices)):
                n = 1
                for c in decs:
                    if c.parent == d_i and c.parent_value == fi:
                        n *= len(c.choices)
                count += n
            total += math.log10(count)
    return total


@dataclasses.dataclass(frozen=True)
class Slot:
    """One searchable layer position, for latency tables: its input size, stride, the widths it
    may see and produce, and every op template (a ``BlockSpec`` with ``out`` to be set)."""

    name: str  # "b3.l2"
    input_hw: int
    stride: int
    cin_choices: tuple[int, ...]
    cout_choices: tuple[int, ...]
    templates: tuple[specs.BlockSpec, ...]
    same_width: bool  # a residual layer: its input width is its output width

    def widths(self) -> list[tuple[int, int]]:
        """The (cin, cout) pairs this slot can meet."""
        if self.same_width:
            return [(c, c) for c in self.cout_choices]
        return [(a, b) for a in self.cin_choices for b in self.cout_choices]


def _templates(space: SearchSpace, bi: int, layer: int, stride: int) -> list[specs.BlockSpec]:
    out = []
    for fam in space.slot_families(bi, layer):
        if fam == SKIP:
            continue
        subs = _sub_decisions(space, fam)
        grids = [[]]
        for _, choices in subs:
            grids = [g + [c] for g in grids for c in choices]
        for g in grids:
            v = dict(zip([n for n, _ in subs], g, strict=True))
            out.append(
                specs.BlockSpec(
                    fam,
                    v["kernel"],
                    stride,
                    0,
                    expansion=float(v.get("expansion", 1.0)),
                    in_ratio=float(v.get("r_in", 0.0)),
                    out_ratio=float(v.get("r_out", 0.0)),
                    residual=layer > 1,
                    se=space.se and fam != "tucker",
                )
            )
    return out


def spatial_after(size: int, stride: int) -> int:
    """SAME-padded output size."""
    return -(-size // stride)


def slots(space: SearchSpace, image_size: int) -> tuple[Slot, ...]:
    """Every searchable layer position with its possible input / output widths and ops."""
    out = []
    hw = spatial_after(image_size, space.skeleton[0].stride)
    prev_widths = space.widths(space.skeleton[0])
    for bi, block in enumerate(space.skeleton[1:], start=1):
        widths = space.widths(block)
        for layer in range(1, block.max_layers + 1):
            stride = block.stride if layer == 1 else 1
            cin = prev_widths if layer == 1 else widths
            out.append(
                Slot(
                    f"{block.name}.l{layer}",
                    hw,
                    stride,
                    cin,
                    widths,
                    tuple(_templates(space, bi, layer, stride)),
                    layer > 1,
                )
            )
            if layer == 1:
                hw = spatial_after(hw, stride)
        prev_widths = widths
    return tuple(out)


def _space(name, target, variant, **kw) -> SearchSpace:
    cpu = dict(activation="hard_swish", se=True) if target == "cpu" else {}
    kernels = dict(kernels=(3,)) if target == "dsp" else {}
    return SearchSpace(name, target, families=FAMILY_VARIANTS[variant], **{**cpu, **kernels, **kw})


def _small_skeleton(max_layers: int) -> tuple[SkeletonBlock, ...]:
    """The skeleton at half the base widths (16-8-16-24-48-48-80-96), at most ``max_layers``."""
    return tuple(
        dataclasses.replace(b, base=b.base // 2, max_layers=min(b.max_layers, max_layers))
        for b in FULL_SKELETON
    )


SPACES = {
    f"{target}_{variant}": _space(f"{target}_{variant}", target, variant)
    for target in TARGETS
    for variant in FAMILY_VARIANTS
}
# The 2-core CPU demonstration (configs/search_tiny.py): IBN + Fused, ReLU6 without SE (cheap on
# two cores; blocks add up within a few percent there), three widths, at most two layers a block.
SPACES["tiny"] = SearchSpace(
    "tiny",
    "cpu",
    skeleton=_small_skeleton(2),
    multipliers=(0.5, 1.0, 1.5),
    families=FAMILY_VARIANTS["ibn_fused"],
)
# The CI search (configs/search_test.py): one layer a block, every family.
SPACES["test"] = SearchSpace(
    "test",
    "cpu",
    skeleton=_small_skeleton(1),
    multipliers=(0.5, 1.0),
    families=("ibn", "fused", "tucker"),
)


def get_space(name: str) -> SearchSpace:
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; expected one of {sorted(SPACES)}")
    return SPACES[name]
