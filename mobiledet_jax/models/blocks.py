"""The block zoo: IBN (with and without expansion), Fused IBN and Tucker (docs/reference/architectures.md).

Each block is bias-free convs + BatchNorm; the projection is linear; the residual is the explicit flag
of the layer table (an identity add with no activation after it). Inner layer names follow the naming
scheme of the backbone family so that parameter paths mirror the TF1 variable names.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobiledet_jax.models.layers import (
    BACKBONE_NORM,
    ConvBN,
    Initializer,
    NormConfig,
    SqueezeExcite,
    he_normal,
)

Array = jax.Array

# Inner layer names per naming scheme: expansion conv, depthwise conv, SE, projection.
INNER_NAMES = {
    "mobiledet": {
        "ibn": ("Conv", "SeparableConv2d", "SqueezeExcite", "Conv_1"),
        "ibn_noexp": (None, "SeparableConv2d", "SqueezeExcite", "Conv"),
        "fused": ("Conv", None, "SqueezeExcite", "Conv_1"),
    },
    "mobilenet": {
        "ibn": ("expand", "depthwise", "squeeze_excite", "project"),
        "ibn_noexp": (None, "depthwise", "squeeze_excite", "project"),
        "fused": ("expand", None, "squeeze_excite", "project"),
    },
}


class InvertedBottleneck(nn.Module):
    """IBN, IBN-noexp and Fused IBN.

    - ``ibn``: 1x1 expand to ``inner``, BN, act; depthwise k x k (stride), BN, act; [SE]; 1x1 project.
    - ``ibn_noexp``: depthwise k x k (stride), BN, act; [SE]; 1x1 project.
    - ``fused``: full k x k expand to ``inner`` (stride), BN, act; [SE]; 1x1 project.

    Returns ``(output, expansion_output)``; the latter is the activation entering the spatial conv of
    an IBN (TF's ``expansion_output``), else the input.
    """

    kind: str
    out: int
    inner: int
    kernel: int
    stride: int
    residual: bool
    activation: str
    se_hidden: int = 0  # 0: no SE
    se_activation: str = "relu6"
    se_gate: str = "sigmoid"
    naming: str = "mobiledet"
    norm: NormConfig = BACKBONE_NORM
    kernel_init: Initializer = he_normal  # every conv kernel of the block, SE included
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        expand_name, dw_name, se_name, project_name = INNER_NAMES[self.naming][self.kind]
        common = dict(
            norm=self.norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            conv_form=self.conv_form,
        )
        h = x
        if self.kind == "ibn":
            h = ConvBN(self.inner, 1, activation=self.activation, name=expand_name, **common)(
                h, train
            )
        expansion_output = h
        if self.kind == "fused":
            h = ConvBN(
                self.inner,
                self.kernel,
                self.stride,
                activation=self.activation,
                name=expand_name,
                **common,
            )(h, train)
        else:
            h = ConvBN(
                0,
                self.kernel,
                self.stride,
                depthwise=True,
                activation=self.activation,
                name=dw_name,
                **common,
            )(h, train)
        if self.se_hidden:
            h = SqueezeExcite(
                self.se_hidden,
                activation=self.se_activation,
                gate=self.se_gate,
                kernel_init=self.kernel_init,
                conv_form=self.conv_form,
                name=se_name,
            )(h)
        h = ConvBN(self.out, 1, activation="linear", name=project_name, **common)(h, train)
        if self.residual:
            if x.shape != h.shape:
                raise ValueError(f"residual needs equal shapes, got {x.shape} and {h.shape}")
            h = h + x
        return h, expansion_output


class Tucker(nn.Module):
    """Tucker block: 1x1 to ``rank_in``, BN, act; k x k to ``rank_out`` (stride), BN, act; 1x1 linear."""

    out: int
    rank_in: int
    rank_out: int
    kernel: int
    stride: int
    residual: bool
    activation: str
    norm: NormConfig = BACKBONE_NORM
    kernel_init: Initializer = he_normal
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        common = dict(
            norm=self.norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            conv_form=self.conv_form,
        )
        h = ConvBN(self.rank_in, 1, activation=self.activation, name="Conv", **common)(x, train)
        expansion_output = h
        h = ConvBN(
            self.rank_out,
            self.kernel,
            self.stride,
            activation=self.activation,
            name="Conv_1",
            **common,
        )(h, train)
        h = ConvBN(self.out, 1, activation="linear", name="Conv_2", **common)(h, train)
        if self.residual:
            if x.shape != h.shape:
                raise ValueError(f"residual needs equal shapes, got {x.shape} and {h.shape}")
            h = h + x
        return h, expansion_output
