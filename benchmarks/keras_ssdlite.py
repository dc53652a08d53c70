"""The same SSDLite-MobileDet built natively in Keras from the ``BackboneSpec`` tables, with the
weights of a Flax model copied in: the baseline of ``tflite_latency.py``.

Layer for layer as the Flax modules (``mobiledet_jax.models``): Conv2D / DepthwiseConv2D (bias-free,
padding "same") + BatchNormalization (docs/reference/architectures.md epsilons) + ReLU(6) or hard-swish; squeeze-excite as
GlobalAveragePooling2D(keepdims) -> 1x1 conv + act -> 1x1 conv -> sigmoid -> multiply; identity
residual adds; the SSDLite neck and the unshared box/class heads, reshaped and concatenated in map
order. Input: uint8 pixels, cast and rescaled by 2/255 - 1 inside the model, as in our export
(``preprocessed=True``: float32 images already in [-1, 1], as our train step takes them).

BatchNorm momenta are ours (backbone 0.99, neck and head 0.97), so called with ``training=True`` the
model trains as ours: batch statistics, moving averages updated at the same rate. ``batchnorm``
"fused" (what ``train_step_vs_tf.py`` times) computes training-mode BN with TensorFlow's fused
kernel (``FusedBatchNormV3`` and its gradient, what TF1 slim and tf.keras 2 use by default);
"keras" keeps Keras 3's unfused ``tf.nn.moments`` + ``tf.nn.batch_normalization``. Inference is
the same either way.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from mobiledet_jax.detection.anchors import anchors_per_location
from mobiledet_jax.models import backbone as backbone_lib
from mobiledet_jax.models import specs
from mobiledet_jax.models.layers import BACKBONE_NORM, HEAD_NORM
from mobiledet_jax.models.ssdlite import (
    EXTRA_LAYER_DEPTHS,
    _depth,
    extra_layer_names,
)


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras BatchNormalization whose training mode runs TensorFlow's fused batch-norm kernel.

    Normalizes with the biased batch variance (as Keras and ours); the moving variance is updated
    with the unbiased one the fused kernel returns (as TF1). Inference is Keras's own.
    """

    def call(self, inputs, training=None, mask=None):
        if not training or not self.trainable or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        y, mean, var = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
        )
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
        return y


BATCHNORMS = {"keras": layers.BatchNormalization, "fused": FusedBatchNormalization}


class _Builder:
    """Creates layers named after the Flax parameter paths and remembers how to fill them."""

    def __init__(self, batchnorm: str = "keras"):
        self.copies = []  # (keras layer, flax path tuple, kind)
        self.batchnorm = BATCHNORMS[batchnorm]

    def _name(self, path):
        return "/".join(path).replace("/", "__")

    def act(self, x, activation: str):
        if activation == "relu6":
            return layers.ReLU(6.0)(x)
        if activation == "hard_swish":
            return layers.Activation("hard_swish")(x)
        if activation == "relu":
            return layers.ReLU()(x)
        if activation == "linear":
            return x
        raise ValueError(activation)

    def conv_bn(self, x, path, features, k, stride=1, depthwise=False, act="relu6", norm=None):
        norm = norm or BACKBONE_NORM
        if depthwise:
            conv = layers.DepthwiseConv2D(k, stride, "same", use_bias=False, name=self._name(path))
        else:
            conv = layers.Conv2D(features, k, stride, "same", use_bias=False, name=self._name(path))
        bn = self.batchnorm(
            momentum=norm.momentum, epsilon=norm.epsilon, name=self._name((*path, "BatchNorm"))
        )
        self.copies += [(conv, path, "dw" if depthwise else "conv"), (bn, path, "bn")]
        return self.act(bn(conv(x)), act)

    def conv_bias(self, x, path, features, k=1):
        conv = layers.Conv2D(features, k, 1, "same", use_bias=True, name=self._name(path))
        self.copies.append((conv, path, "conv_bias"))
        return conv(x)

    def squeeze_excite(self, x, path, hidden, activation, gate):
        if gate != "sigmoid":
            raise NotImplementedError("hard-sigmoid SE (MobileNetV3 baselines) is not built")
        s = layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = self.act(self.conv_bias(s, (*path, "Conv"), hidden), activation)
        s = layers.Activation("sigmoid")(self.conv_bias(s, (*path, "Conv_1"), x.shape[-1]))
        return layers.Multiply()([x, s])


def build(
    model_config,
    input_dtype: str = "uint8",
    batch_size: int | None = 1,
    preprocessed: bool = False,
    batchnorm: str = "keras",
) -> tuple[keras.Model, _Builder]:
    """The Keras model of ``config.model`` (MobileDet backbones) and its weight-copy plan.

    ``input_dtype`` "float32" takes float pixels (what the int8 converter path wants, as ours);
    ``preprocessed`` takes float32 images in [-1, 1] (no rescaling layer); ``batch_size`` is the
    input's static batch (None: any); ``batchnorm``: "keras" or "fused" (training mode, see above).
    """
    from mobiledet_jax.models import input_size, model_backbone_spec

    spec = model_backbone_spec(model_config)
    if spec.naming != "mobiledet":
        raise NotImplementedError("only the MobileDet tables are built in Keras")
    wm = model_config.width_multiplier
    h, w = input_size(model_config)
    b = _Builder(batchnorm)
    if preprocessed:
        input_dtype = "float32"
    inp = keras.Input((h, w, 3), batch_size=batch_size, dtype=input_dtype, name="images")
    x = layers.Identity(dtype="float32")(inp) if input_dtype != "float32" else inp
    if not preprocessed:
        x = layers.Rescaling(2.0 / 255.0, offset=-1.0)(x)
    if spec.bn_epsilon != BACKBONE_NORM.epsilon:
        raise NotImplementedError("a backbone epsilon other than BACKBONE_NORM's")
    endpoints = {}
    inner_names = {
        specs.IBN: ("Conv", "SeparableConv2d", "SqueezeExcite", "Conv_1"),
        specs.IBN_NOEXP: (None, "SeparableConv2d", "SqueezeExcite", "Conv"),
        specs.FUSED: ("Conv", None, "SqueezeExcite", "Conv_1"),
    }
    for blk in backbone_lib.resolve_blocks(spec, wm):
        row, p = blk.spec, ("backbone", blk.name)
        act = blk.activation
        inp_x = x
        if row.block == specs.CONV:
            x = b.conv_bn(x, p, blk.out, row.kernel, row.stride, act=act)
        elif row.block == specs.TUCKER:
            x = b.conv_bn(x, (*p, "Conv"), blk.rank_in, 1, act=act)
            x = b.conv_bn(x, (*p, "Conv_1"), blk.inner, row.kernel, row.stride, act=act)
            x = b.conv_bn(x, (*p, "Conv_2"), blk.out, 1, act="linear")
        else:
            expand, dw, se, project = inner_names[row.block]
            if row.block == specs.IBN:
                x = b.conv_bn(x, (*p, expand), blk.inner, 1, act=act)
            if row.block == specs.FUSED:
                x = b.conv_bn(x, (*p, expand), blk.inner, row.kernel, row.stride, act=act)
            else:
                x = b.conv_bn(x, (*p, dw), 0, row.kernel, row.stride, True, act=act)
            if blk.se_hidden:
                x = b.squeeze_excite(x, (*p, se), blk.se_hidden, spec.se_activation, spec.se_gate)
            x = b.conv_bn(x, (*p, project), blk.out, 1, act="linear")
        if row.block != specs.CONV and row.residual:
            x = layers.Add()([x, inp_x])
        if row.endpoint:
            endpoints[row.endpoint] = x
    src1, src2 = spec.ssd_sources
    maps, x = [endpoints[src1], endpoints[src2]], endpoints[src2]
    for (n1, ndw, n2), depth in zip(
        extra_layer_names(spec.extra_layer_prefix, wm), EXTRA_LAYER_DEPTHS, strict=True
    ):
        x = b.conv_bn(x, ("neck", n1), _depth(depth // 2, wm), 1, norm=HEAD_NORM)
        x = b.conv_bn(x, ("neck", ndw), 0, 3, 2, True, norm=HEAD_NORM)
        x = b.conv_bn(x, ("neck", n2), _depth(depth, wm), 1, norm=HEAD_NORM)
        maps.append(x)
    boxes, logits = [], []
    slots = model_config.num_classes + 1
    for i, (m, a) in enumerate(zip(maps, anchors_per_location(), strict=True)):
        p = ("head", f"BoxPredictor_{i}")
        bx = b.conv_bn(m, (*p, "BoxEncodingPredictor_depthwise"), 0, 3, 1, True, norm=HEAD_NORM)
        bx = b.conv_bias(bx, (*p, "BoxEncodingPredictor"), a * 4)
        cx = b.conv_bn(m, (*p, "ClassPredictor_depthwise"), 0, 3, 1, True, norm=HEAD_NORM)
        cx = b.conv_bias(cx, (*p, "ClassPredictor"), a * slots)
        n = m.shape[1] * m.shape[2] * a
        boxes.append(layers.Reshape((n, 4))(bx))
        logits.append(layers.Reshape((n, slots))(cx))
    out_b = layers.Concatenate(axis=1, name="box_encodings")(boxes)
    out_c = layers.Concatenate(axis=1, name="class_logits")(logits)
    return keras.Model(inp, [out_b, out_c], name=f"keras_{model_config.name}"), b


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def copy_weights(builder: _Builder, variables) -> None:
    """Fills the Keras layers with a Flax model's ``{'params', 'batch_stats'}``."""
    params, stats = variables["params"], variables["batch_stats"]
    for layer, path, kind in builder.copies:
        p = _get(params, path)
        if kind == "conv":
            layer.set_weights([np.asarray(p["kernel"])])
        elif kind == "dw":  # Flax [kh, kw, 1, C] -> Keras [kh, kw, C, 1]
            layer.set_weights([np.transpose(np.asarray(p["kernel"]), (0, 1, 3, 2))])
        elif kind == "conv_bias":
            layer.set_weights([np.asarray(p["kernel"]), np.asarray(p["bias"])])
        elif kind == "bn":
            bn_p, bn_s = p["BatchNorm"], _get(stats, path)["BatchNorm"]
            layer.set_weights(
                [np.asarray(v) for v in (bn_p["scale"], bn_p["bias"], bn_s["mean"], bn_s["var"])]
            )
        else:
            raise ValueError(kind)
