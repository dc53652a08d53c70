"""SSDLite neck (four extra layers) and box predictor, and the whole detector (docs/reference/head_and_anchors.md).

Outputs, for a batch of preprocessed images ``[B, H, W, 3]`` in [-1, 1]:
  - ``box_encodings`` ``[B, A, 4]``: (ty, tx, th, tw) Faster R-CNN codes, in the reference anchor order
    (map, then y, then x, then anchor type);
  - ``class_logits`` ``[B, A, num_classes + 1]``: logits, column 0 = background;
  - ``feature_maps``: the six SSD maps (C4, C5, and the four extra layers).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobiledet_jax import pixels
from mobiledet_jax.detection.anchors import anchors_per_location as reference_anchors_per_location
from mobiledet_jax.models import specs
from mobiledet_jax.models.backbone import Backbone
from mobiledet_jax.models.layers import HEAD_NORM, ConvBias, ConvBN, truncated_normal

Array = jax.Array

EXTRA_LAYER_DEPTHS = (512, 256, 256, 128)  # layer_depth of maps 3..6
MIN_DEPTH = 16
HEAD_STDDEV = 0.03


def preprocess(images: Array) -> Array:
    """Pixels in [0, 255] (uint8 or float) to [-1, 1] (``mobiledet_jax.pixels.normalize``)."""
    return pixels.normalize(jnp.asarray(images).astype(jnp.float32))


def extra_layer_names(prefix: str, width_multiplier: float = 1.0) -> list[tuple[str, str, str]]:
    """TF names of the (1x1, depthwise, 1x1) convs of each extra layer, e.g. C5_1_Conv2d_2_1x1_256."""
    names = []
    for i, depth in enumerate(EXTRA_LAYER_DEPTHS, start=2):
        d, half = _depth(depth, width_multiplier), _depth(depth // 2, width_multiplier)
        names.append(
            (
                f"{prefix}_1_Conv2d_{i}_1x1_{half}",
                f"{prefix}_2_Conv2d_{i}_3x3_s2_{d}_depthwise",
                f"{prefix}_2_Conv2d_{i}_3x3_s2_{d}",
            )
        )
    return names


def _depth(d: int, width_multiplier: float) -> int:
    return max(int(d * width_multiplier), MIN_DEPTH)


class SSDLiteNeck(nn.Module):
    """Four new maps, each: 1x1 conv to d/2, depthwise 3x3 stride 2, 1x1 conv to d (BN + ReLU6)."""

    prefix: str = "C5"
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        maps = []
        init = truncated_normal(HEAD_STDDEV)
        common = dict(norm=HEAD_NORM, kernel_init=init, dtype=self.dtype, conv_form=self.conv_form)
        for (n1, ndw, n2), depth in zip(
            extra_layer_names(self.prefix, self.width_multiplier), EXTRA_LAYER_DEPTHS, strict=True
        ):
            d, half = (
                _depth(depth, self.width_multiplier),
                _depth(depth // 2, self.width_multiplier),
            )
            x = ConvBN(half, 1, name=n1, **common)(x, train)
            x = ConvBN(0, 3, 2, depthwise=True, name=ndw, **common)(x, train)
            x = ConvBN(d, 1, name=n2, **common)(x, train)
            maps.append(x)
        return maps


class BoxPredictor(nn.Module):
    """One map's unshared head: a box and a class branch (depthwise 3x3 + BN + ReLU6, 1x1 + bias)."""

    anchors: int
    num_slots: int  # num_classes + 1
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        init = nn.initializers.normal(HEAD_STDDEV)
        common = dict(norm=HEAD_NORM, kernel_init=init, dtype=self.dtype, conv_form=self.conv_form)
        b = ConvBN(0, 3, depthwise=True, name="BoxEncodingPredictor_depthwise", **common)(x, train)
        b = ConvBias(
            self.anchors * 4,
            kernel_init=init,
            conv_form=self.conv_form,
            name="BoxEncodingPredictor",
        )(b)
        c = ConvBN(0, 3, depthwise=True, name="ClassPredictor_depthwise", **common)(x, train)
        # The use_depthwise ClassPredictor ignores class_prediction_bias_init: its bias starts at 0.
        c = ConvBias(
            self.anchors * self.num_slots,
            kernel_init=init,
            conv_form=self.conv_form,
            name="ClassPredictor",
        )(c)
        batch = x.shape[0]
        return b.reshape(batch, -1, 4), c.reshape(batch, -1, self.num_slots)


class SSDLiteHead(nn.Module):
    """Separate BoxPredictor_i per map; predictions concatenated in map order."""

    num_classes: int
    anchors_per_location: Sequence[int]
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # layers.CONV_FORMS

    @nn.compact
    def __call__(self, maps: Sequence[Array], train: bool = False) -> tuple[Array, Array]:
        if len(maps) != len(self.anchors_per_location):
            raise ValueError(f"{len(maps)} maps but {len(self.anchors_per_location)} anchor counts")
        boxes, logits = [], []
        for i, (m, a) in enumerate(zip(maps, self.anchors_per_location, strict=True)):
            b, c = BoxPredictor(
                a,
                self.num_classes + 1,
                dtype=self.dtype,
                conv_form=self.conv_form,
                name=f"BoxPredictor_{i}",
            )(m, train)
            boxes.append(b)
            logits.append(c)
        return jnp.concatenate(boxes, axis=1), jnp.concatenate(logits, axis=1)


class SSDLite(nn.Module):
    """SSDLite detector: backbone endpoints -> six maps -> box encodings and class logits."""

    backbone_spec: specs.BackboneSpec
    num_classes: int = 90
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    # anchor types per location of each map (``detection.anchors.anchors_per_location``); None:
    # the reference anchors'
    anchors_per_location: tuple[int, ...] | None = None
    # how convs compute (``layers.CONV_FORMS``): the same numbers in every form; export and QAT
    # use "conv" (one CONV_2D / DEPTHWISE_CONV_2D in TFLite, a conv qwix fake-quantizes)
    conv_form: str = "auto"
    # backbone BatchNorms over maps of at least this many pixels take their train-mode statistics
    # in one pass (``layers.OnePassBatchNorm``); 0: two passes everywhere (``config.model``)
    bn_one_pass_min_pixels: int = 0

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [B, H, W, 3], got shape {images.shape}")
        x = images.astype(self.dtype)
        endpoints = Backbone(
            self.backbone_spec,
            self.width_multiplier,
            self.dtype,
            self.conv_form,
            self.bn_one_pass_min_pixels,
            name="backbone",
        )(x, train)
        src1, src2 = self.backbone_spec.ssd_sources
        extra = SSDLiteNeck(
            self.backbone_spec.extra_layer_prefix,
            self.width_multiplier,
            self.dtype,
            self.conv_form,
            name="neck",
        )(endpoints[src2], train)
        maps = [endpoints[src1], endpoints[src2], *extra]
        per_location = self.anchors_per_location or reference_anchors_per_location()
        boxes, logits = SSDLiteHead(
            self.num_classes, per_location, self.dtype, self.conv_form, name="head"
        )(maps, train)
        return {
            "box_encodings": boxes.astype(jnp.float32),
            "class_logits": logits.astype(jnp.float32),
            "feature_maps": maps,
            "endpoints": endpoints,
        }
