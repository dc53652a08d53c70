"""Backbone architectures as data: the layer tables of docs/reference/architectures.md as dataclasses.

A backbone is a ``BackboneSpec``: a tuple of ``BlockSpec`` rows plus family-wide settings. Variants are
rows, not code; ``blocks.py`` holds the one implementation of each block type and ``backbone.py`` walks
the rows.
"""

import dataclasses
import json

# Block types.
CONV = "conv"  # k x k conv, BN, act (the stem, and the final 1x1 of the MobileNets)
IBN = "ibn"  # 1x1 expand, depthwise k x k, [SE], 1x1 linear projection
IBN_NOEXP = "ibn_noexp"  # depthwise k x k, [SE], 1x1 linear projection
FUSED = "fused"  # full k x k expand, [SE], 1x1 linear projection
TUCKER = "tucker"  # 1x1 compress, full k x k, 1x1 linear restore
BLOCK_TYPES = (CONV, IBN, IBN_NOEXP, FUSED, TUCKER)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One row of a backbone table.

    Attributes:
      block: one of BLOCK_TYPES.
      kernel, stride: of the block's spatial conv.
      out: output channels before the width multiplier.
      expansion: inner width factor of IBN/Fused (E = in * expansion, see BackboneSpec.expansion_rule).
      in_ratio, out_ratio: Tucker compression ratios (r_in = round8(in*in_ratio), r_out =
        round8(out*out_ratio)).
      residual: the explicit residual flag (identity add, no activation after it).
      se: squeeze-excite after the spatial conv.
      activation: per-block override of the family activation (MobileNetV3 mixes ReLU and hard-swish).
      endpoint: name of the endpoint taken at the block output (e.g. "C4").
      expansion_endpoint: name of an endpoint taken at the expansion (or depthwise-input) activation,
        as TF's ``layer_15/expansion_output`` for MobileNetV2.
    """

    block: str
    kernel: int
    stride: int
    out: int
    expansion: float = 1.0
    in_ratio: float = 0.0
    out_ratio: float = 0.0
    residual: bool = False
    se: bool = False
    activation: str | None = None
    endpoint: str | None = None
    expansion_endpoint: str | None = None

    def __post_init__(self):
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}")
        if self.block == TUCKER and not (self.in_ratio > 0 and self.out_ratio > 0):
            raise ValueError("a Tucker block needs in_ratio and out_ratio")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A whole backbone.

    Attributes:
      scope: the TF1 scope name (e.g. "MobileDetEdgeTPU"), used in variable names.
      activation: the family activation ("relu6", "hard_swish" or "relu").
      blocks: the rows.
      ssd_sources: the two endpoints feeding SSD maps 1 and 2.
      naming: "mobiledet" (IBN / FusedConv / TuckerConv scopes with Conv, Conv_1, SeparableConv2d inside)
        or "mobilenet" (slim MobileNet: expanded_conv_n with expand / depthwise / project inside).
      expansion_rule: "exact" (E = in*e, TF1 MobileDet) or "divisible8" (slim MobileNet make_divisible).
      se_width_source: "expanded" (SE hidden from the SE input width: MobileDet-CPU, MobileNetV3).
      se_activation: inner SE activation; se_gate: "sigmoid" or "hard_sigmoid".
      extra_layer_prefix: TF name prefix of the SSDLite extra layers ("C5" -> C5_1_Conv2d_2_1x1_256).
      residual_rule: "explicit" (the rows' flags) or "slim" (slim ``expanded_conv``: an identity residual
        whenever the stride is 1 and the input and output widths match, decided after the width
        multiplier; the rows' flags are then ignored).
      min_depth: floor of the block output widths under the "divisible8" rule (slim ``depth_multiplier``
        min_depth, which the TF1 SSD feature extractors set to the config's min_depth).
      bn_momentum, bn_epsilon: BatchNorm of the backbone (TF ``decay`` and ``epsilon``).
      init_stddev: backbone conv kernel init: 0 for He-normal (TF1 MobileDet), else a truncated normal
        of this stddev (the slim / OD API ``truncated_normal_initializer``).
    """

    scope: str
    activation: str
    blocks: tuple[BlockSpec, ...]
    ssd_sources: tuple[str, str] = ("C4", "C5")
    naming: str = "mobiledet"
    expansion_rule: str = "exact"
    se_ratio: float = 0.25
    se_activation: str = "relu6"
    se_gate: str = "sigmoid"
    extra_layer_prefix: str = "C5"
    residual_rule: str = "explicit"
    min_depth: int = 8
    bn_momentum: float = 0.99
    bn_epsilon: float = 0.01
    init_stddev: float = 0.0


def _rows(*groups):
    out = []
    for g in groups:
        out.extend(g if isinstance(g, list) else [g])
    return tuple(out)


def _rep(n, row, endpoint=None):
    """n copies of a row; the endpoint, if any, goes on the last copy."""
    rows = [row] * n
    if endpoint:
        rows[-1] = dataclasses.replace(row, endpoint=endpoint)
    return rows


def conv(k, s, out, **kw):
    return BlockSpec(CONV, k, s, out, **kw)


def ibn(k, s, out, e, res=False, **kw):
    return BlockSpec(IBN, k, s, out, expansion=e, residual=res, **kw)


def noexp(k, s, out, **kw):
    return BlockSpec(IBN_NOEXP, k, s, out, **kw)


def fused(k, s, out, e, res=False, **kw):
    return BlockSpec(FUSED, k, s, out, expansion=e, residual=res, **kw)


def tucker(k, s, out, rin, rout, res=False, **kw):
    return BlockSpec(TUCKER, k, s, out, in_ratio=rin, out_ratio=rout, residual=res, **kw)


def _cpu_ibn(k, s, out, e, res=False, **kw):
    return ibn(k, s, out, e, res, se=True, **kw)


MOBILEDET_CPU = BackboneSpec(
    scope="MobileDetCPU",
    activation="hard_swish",
    se_activation="hard_swish",
    blocks=_rows(
        conv(3, 2, 16),
        noexp(3, 1, 8, se=True, endpoint="C1"),
        _cpu_ibn(3, 2, 16, 4, endpoint="C2"),
        _cpu_ibn(3, 2, 32, 8),
        _rep(3, _cpu_ibn(3, 1, 32, 4, True), endpoint="C3"),
        _cpu_ibn(5, 2, 72, 8),
        _cpu_ibn(3, 1, 72, 8, True),
        _cpu_ibn(5, 1, 72, 4, True),
        _cpu_ibn(3, 1, 72, 4, True),
        _cpu_ibn(3, 1, 72, 8, False),
        _rep(3, _cpu_ibn(3, 1, 72, 8, True), endpoint="C4"),
        _cpu_ibn(5, 2, 104, 8),
        _rep(2, _cpu_ibn(5, 1, 104, 4, True)),
        _cpu_ibn(3, 1, 104, 4, True),
        _cpu_ibn(3, 1, 144, 8, endpoint="C5"),
    ),
)

MOBILEDET_DSP = BackboneSpec(
    scope="MobileDetDSP",
    activation="relu6",
    blocks=_rows(
        conv(3, 2, 32),
        noexp(3, 1, 24, endpoint="C1"),
        fused(3, 2, 32, 4),
        fused(3, 1, 32, 4, True),
        ibn(3, 1, 32, 4, True),
        tucker(3, 1, 32, 0.25, 0.75, True, endpoint="C2"),
        fused(3, 2, 64, 8),
        ibn(3, 1, 64, 4, True),
        _rep(2, fused(3, 1, 64, 4, True), endpoint="C3"),
        fused(3, 2, 120, 8),
        ibn(3, 1, 120, 4, True),
        _rep(2, ibn(3, 1, 120, 8, True)),
        fused(3, 1, 144, 8),
        _rep(3, ibn(3, 1, 144, 8, True), endpoint="C4"),
        ibn(3, 2, 160, 4),
        ibn(3, 1, 160, 4, True),
        fused(3, 1, 160, 4, True),  # block 20: residual in TF1, not in TF2 (see dsp_block20)
        tucker(3, 1, 160, 0.75, 0.75, True),
        ibn(3, 1, 240, 8, endpoint="C5"),
    ),
)
DSP_BLOCK20_INDEX = 20

MOBILEDET_EDGETPU = BackboneSpec(
    scope="MobileDetEdgeTPU",
    activation="relu6",
    blocks=_rows(
        conv(3, 2, 32),
        tucker(3, 1, 16, 0.25, 0.75, endpoint="C1"),
        fused(3, 2, 16, 8),
        fused(3, 1, 16, 4, True),
        fused(3, 1, 16, 8, True),
        fused(3, 1, 16, 4, True, endpoint="C2"),
        fused(5, 2, 40, 8),
        _rep(3, fused(3, 1, 40, 4, True), endpoint="C3"),
        ibn(3, 2, 72, 8),
        ibn(3, 1, 72, 8, True),
        _rep(2, fused(3, 1, 72, 4, True)),
        ibn(5, 1, 96, 8),
        ibn(5, 1, 96, 8, True),
        _rep(2, ibn(3, 1, 96, 8, True), endpoint="C4"),
        ibn(5, 2, 120, 8),
        ibn(3, 1, 120, 8, True),
        ibn(5, 1, 120, 4, True),
        ibn(3, 1, 120, 8, True),
        ibn(5, 1, 384, 8, endpoint="C5"),
    ),
)

MOBILEDET_GPU = BackboneSpec(
    scope="MobileDetGPU",
    activation="relu6",
    blocks=_rows(
        conv(3, 2, 32),
        tucker(3, 1, 16, 0.25, 0.25, endpoint="C1"),
        fused(3, 2, 32, 8),
        _rep(3, tucker(3, 1, 32, 0.25, 0.25, True), endpoint="C2"),
        fused(3, 2, 64, 8),
        _rep(2, fused(3, 1, 64, 8, True)),
        fused(3, 1, 64, 4, True, endpoint="C3"),
        fused(3, 2, 128, 8),
        _rep(3, fused(3, 1, 128, 4, True)),
        fused(3, 1, 128, 8, False),
        _rep(3, fused(3, 1, 128, 8, True), endpoint="C4"),
        fused(3, 2, 128, 4),
        _rep(3, fused(3, 1, 128, 4, True)),
        ibn(3, 1, 384, 8, endpoint="C5"),
    ),
)

MOBILEDETS = {
    "mobiledet_cpu": MOBILEDET_CPU,
    "mobiledet_dsp": MOBILEDET_DSP,
    "mobiledet_edgetpu": MOBILEDET_EDGETPU,
    "mobiledet_gpu": MOBILEDET_GPU,
}


def dsp_tf2_variant(spec: BackboneSpec = MOBILEDET_DSP) -> BackboneSpec:
    """MobileDet-DSP as the TF2 Model Garden builds it: block 20 without the residual."""
    blocks = list(spec.blocks)
    blocks[DSP_BLOCK20_INDEX] = dataclasses.replace(blocks[DSP_BLOCK20_INDEX], residual=False)
    return dataclasses.replace(spec, blocks=tuple(blocks))


SPEC_JSON_VERSION = 1


def spec_to_dict(spec: BackboneSpec) -> dict:
    """A backbone table as plain JSON data (every field; rows as lists of field dicts)."""
    out = dataclasses.asdict(spec)
    out["blocks"] = [dataclasses.asdict(b) for b in spec.blocks]
    out["ssd_sources"] = list(spec.ssd_sources)
    out["version"] = SPEC_JSON_VERSION
    return out


def spec_from_dict(data: dict) -> BackboneSpec:
    """The inverse of ``spec_to_dict``; unknown fields are an error (a table from a newer version)."""
    data = dict(data)
    version = data.pop("version", SPEC_JSON_VERSION)
    if version != SPEC_JSON_VERSION:
        raise ValueError(f"backbone table version {version}, this code reads {SPEC_JSON_VERSION}")
    block_fields = {f.name for f in dataclasses.fields(BlockSpec)}
    spec_fields = {f.name for f in dataclasses.fields(BackboneSpec)}
    unknown = set(data) - spec_fields
    if unknown:
        raise ValueError(f"unknown backbone table fields {sorted(unknown)}")
    rows = []
    for row in data.pop("blocks"):
        bad = set(row) - block_fields
        if bad:
            raise ValueError(f"unknown block fields {sorted(bad)}")
        rows.append(BlockSpec(**row))
    if "ssd_sources" in data:
        data["ssd_sources"] = tuple(data["ssd_sources"])
    return BackboneSpec(blocks=tuple(rows), **data)


def spec_to_json(spec: BackboneSpec) -> str:
    return json.dumps(spec_to_dict(spec), sort_keys=True)


def spec_from_json(text: str) -> BackboneSpec:
    return spec_from_dict(json.loads(text))
