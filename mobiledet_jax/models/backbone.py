"""A backbone built from a ``BackboneSpec`` table, returning its named endpoints (C1..C5)."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobiledet_jax.models import specs
from mobiledet_jax.models.blocks import InvertedBottleneck, Tucker
from mobiledet_jax.models.layers import ConvBN, NormConfig, he_normal, round8, truncated_normal

Array = jax.Array

SCOPE_NAMES = {
    "mobiledet": {
        specs.CONV: "Conv",
        specs.IBN: "IBN",
        specs.IBN_NOEXP: "IBNNoExpansion",
        specs.FUSED: "FusedConv",
        specs.TUCKER: "TuckerConv",
    },
    "mobilenet": {
        specs.CONV: "Conv",
        specs.IBN: "expanded_conv",
        specs.IBN_NOEXP: "expanded_conv",
        specs.FUSED: "expanded_conv",
        specs.TUCKER: "tucker",
    },
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """slim MobileNet's rounding: nearest multiple, at least ``min_value`` (default ``divisor``), never
    more than 10% down."""
    new = max(
        divisor if min_value is None else min_value, int(value + divisor / 2) // divisor * divisor
    )
    if new < 0.9 * value:
        new += divisor
    return int(new)


@dataclasses.dataclass(frozen=True)
class ResolvedBlock:
    """A table row with every width computed for a given input width and width multiplier."""

    name: str
    spec: specs.BlockSpec
    cin: int
    out: int
    inner: int  # expansion width (IBN/Fused), rank_out (Tucker), else 0
    rank_in: int  # Tucker only
    se_hidden: int
    activation: str


def resolve_blocks(
    spec: specs.BackboneSpec, width_multiplier: float = 1.0, in_channels: int = 3
) -> list[ResolvedBlock]:
    """Decode the table: scope names, and the exact widths of every block (docs/reference/architectures.md).

    Under ``residual_rule="slim"`` each resolved block's ``spec`` carries the residual flag slim's
    ``expanded_conv`` decides (stride 1 and equal input and output widths).
    """
    if spec.residual_rule not in ("explicit", "slim"):
        raise ValueError(f"unknown residual_rule {spec.residual_rule!r}")
    counters: dict[str, int] = {}
    names = SCOPE_NAMES[spec.naming]
    cin = in_channels
    out_blocks = []
    for row in spec.blocks:
        base = names[row.block]
        n = counters.get(base, 0)
        counters[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        if spec.expansion_rule == "exact":
            out = round8(row.out * width_multiplier)
        else:
            out = make_divisible(row.out * width_multiplier, min_value=spec.min_depth)
        inner = rank_in = se_hidden = 0
        if row.block in (specs.IBN, specs.FUSED):
            if spec.expansion_rule == "exact":
                inner = int(cin * row.expansion)  # TF1 MobileDet: no rounding
            else:
                inner = make_divisible(cin * row.expansion)
        elif row.block == specs.TUCKER:
            rank_in = round8(cin * row.in_ratio)
            inner = round8(out * row.out_ratio)
        if row.se:
            se_input = inner if row.block in (specs.IBN, specs.FUSED) else cin
            if spec.expansion_rule == "exact":
                se_hidden = round8(se_input * spec.se_ratio)
            else:
                se_hidden = make_divisible(se_input * spec.se_ratio)
        activation = row.activation or spec.activation
        if spec.residual_rule == "slim" and row.block != specs.CONV:
            row = dataclasses.replace(row, residual=row.stride == 1 and cin == out)
        out_blocks.append(ResolvedBlock(name, row, cin, out, inner, rank_in, se_hidden, activation))
        cin = out
    return out_blocks


def endpoint_widths(spec: specs.BackboneSpec, width_multiplier: float = 1.0) -> dict[str, int]:
    """Channels of every named endpoint."""
    widths = {}
    for b in resolve_blocks(spec, width_multiplier):
        if b.spec.endpoint:
            widths[b.spec.endpoint] = b.out
        if b.spec.expansion_endpoint:
            widths[b.spec.expansion_endpoint] = b.inner if b.inner else b.cin
    return widths


class Backbone(nn.Module):
    """The feature extractor's backbone. ``__call__`` returns a dict endpoint name -> NHWC array."""

    spec: specs.BackboneSpec
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS
    bn_one_pass_min_pixels: int = 0  # layers.NormConfig.one_pass_min_pixels

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        endpoints = {}
        spec = self.spec
        norm = NormConfig(
            momentum=spec.bn_momentum,
            epsilon=spec.bn_epsilon,
            one_pass_min_pixels=self.bn_one_pass_min_pixels,
        )
        kernel_init = truncated_normal(spec.init_stddev) if spec.init_stddev > 0 else he_normal
        for b in resolve_blocks(spec, self.width_multiplier, x.shape[-1]):
            row = b.spec
            common = dict(
                norm=norm,
                kernel_init=kernel_init,
                dtype=self.dtype,
                conv_form=self.conv_form,
                name=b.name,
            )
            if row.block == specs.CONV:
                x = ConvBN(b.out, row.kernel, row.stride, activation=b.activation, **common)(
                    x, train
                )
                expansion = x
            elif row.block == specs.TUCKER:
                x, expansion = Tucker(
                    b.out,
                    b.rank_in,
                    b.inner,
                    row.kernel,
                    row.stride,
                    row.residual,
                    b.activation,
                    **common,
                )(x, train)
            else:
                x, expansion = InvertedBottleneck(
                    row.block,
                    b.out,
                    b.inner,
                    row.kernel,
                    row.stride,
                    row.residual,
                    b.activation,
                    se_hidden=b.se_hidden,
                    se_activation=spec.se_activation,
                    se_gate=spec.se_gate,
                    naming=spec.naming,
                    **common,
                )(x, train)
            if row.endpoint:
                endpoints[row.endpoint] = x
            if row.expansion_endpoint:
                endpoints[row.expansion_endpoint] = expansion
        return endpoints
