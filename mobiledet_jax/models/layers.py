"""Layer primitives with TF1 Object Detection API semantics.

Every convolution uses TF "SAME" padding (``lax.conv_general_dilated(padding="SAME")`` computes the same
pads as TensorFlow, asymmetric for stride 2 on even inputs). Parameter names mirror the TF1 variable
names so a checkpoint maps one to one: a conv scope holds ``kernel`` (TF ``weights`` /
``depthwise_weights``), optionally ``bias`` (TF ``biases``) and a ``BatchNorm`` child whose ``scale``,
``bias``, ``mean`` and ``var`` are TF's ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance``.

Kernel layouts: regular convs are HWIO ``[kh, kw, in, out]`` like TF; depthwise convs are
``[kh, kw, 1, C]`` (TF stores ``[kh, kw, C, 1]``).

Convolutions compute in one of ``CONV_FORMS`` (``depthwise_conv``, ``regular_conv``): by default
the form is chosen by the backend the program compiles for. On TPU and GPU that is the convolution.
On CPU it is the "shifted" forms, built from strided views of the padded input: a depthwise conv as
per-channel multiply-adds over them (XLA's grouped convolutions are slow there), a regular conv as
one matmul over them (im2col; a 1x1 conv is a matmul of its input), because XLA's CPU backend
computes a convolution's filter gradient as a convolution whose window spans the whole feature
map, 3-10x slower than the matmul that is its gradient in the shifted form. Both forms compute the
same sum; export and QAT pin ``"conv"`` (``models.as_convolutions``). The shifted forms compile
about twice as slowly (more, smaller HLO ops), so runs of a few steps may prefer ``"conv"``
(``config.model.conv_form``).
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobiledet_jax.models import bn_folding

Array = jax.Array
Initializer = Callable[..., Array]

# TF1 He-normal (variance_scaling scale 2, fan_in, truncated normal). JAX's truncated normal divides
# the stddev by 0.87962566103423978 like TF1, so docs/reference/architectures.md's sqrt(2/fan_in)/0.8796 holds
# for regular kernels (fan_in = kh*kw*in) and depthwise kernels (fan_in = kh*kw).
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def truncated_normal(stddev: float) -> Initializer:
    """TF1 ``tf.truncated_normal_initializer(stddev)``: the stddev before truncation at 2 sigma."""

    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


def round8(x: float) -> int:
    """Width rounding (docs/reference/architectures.md): round half up to a multiple of 8, floor of 8."""
    return max(8, int(8 * math.floor(x / 8 + 0.5)))


def relu6(x: Array) -> Array:
    return jax.nn.relu6(x)


def hard_swish(x: Array) -> Array:
    """TF1's "swish6": x * relu6(x + 3) / 6 (lowers to TFLite HARD_SWISH)."""
    return jax.nn.hard_swish(x)


def identity(x: Array) -> Array:
    return x


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu6": relu6,
    "hard_swish": hard_swish,
    "relu": jax.nn.relu,
    "linear": identity,
}


@dataclasses.dataclass(frozen=True)
class NormConfig:
    """BatchNorm settings of one part of the network (TF ``decay`` is Flax ``momentum``).

    ``one_pass_min_pixels`` > 0: a train-mode BN over at least that many pixels per image (H x W)
    computes its batch statistics in one pass, shifted by the running mean (``OnePassBatchNorm``),
    which XLA fuses into the convolution that produces the input; 0: two passes everywhere."""

    momentum: float
    epsilon: float
    one_pass_min_pixels: int = 0


BACKBONE_NORM = NormConfig(momentum=0.99, epsilon=0.01)  # docs/reference/architectures.md
HEAD_NORM = NormConfig(momentum=0.97, epsilon=0.001)  # docs/reference/head_and_anchors.md


def conv2d(x: Array, kernel: Array, stride: int, groups: int = 1) -> Array:
    """NHWC convolution with TF "SAME" padding."""
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


CONV_FORMS = ("auto", "conv", "shifted")  # how convolutions compute (module docstring)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
    """Output size and (before, after) padding of TF "SAME" along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _accumulation_dtype(dtype) -> Any:
    """float32, or the input's own type where it is wider (float64 reference programs)."""
    return jnp.promote_types(dtype, jnp.float32)


def _strided_views(x: Array, k: int, stride: int) -> list[Array]:
    """The k*k strided views of ``x`` padded TF-"SAME": view (i, j) holds, at every output
    position, the input pixel that the kernel tap (i, j) multiplies."""
    n, h, w, c = x.shape
    oh, pad_h = same_pads(h, k, stride)
    ow, pad_w = same_pads(w, k, stride)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    return [
        lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(k)
        for j in range(k)
    ]


def depthwise_shifted(x: Array, kernel: Array, stride: int) -> Array:
    """Depthwise k x k conv as k*k per-channel multiply-adds over strided views of the padded input.

    The same sum as ``conv2d(..., groups=C)`` (TF "SAME" pads), in a form XLA's CPU backend fuses
    into one vectorized loop, forward and backward (its grouped-convolution kernels and their
    gradients run 5-30x slower than this on a CPU; ``benchmarks/train_step_vs_tf.py``).
    Accumulates in float32 (float64 for float64 inputs), like the convolution.
    """
    c = x.shape[-1]
    k = kernel.shape[0]
    acc = _accumulation_dtype(x.dtype)
    weights = kernel.reshape(k * k, c).astype(acc)
    out = None
    for tap, view in enumerate(_strided_views(x, k, stride)):
        term = view.astype(acc) * weights[tap]
        out = term if out is None else out + term
    return out.astype(x.dtype)


def conv_shifted(x: Array, kernel: Array, stride: int) -> Array:
    """Regular k x k conv (``kernel [k, k, in, out]``) as one matmul over the concatenated strided
    views (im2col): the same sum as ``conv2d`` (TF "SAME" pads), whose gradients are a matmul (the
    filter's) and a matmul plus the views' transposes (the input's), both fast on XLA's CPU
    backend. A 1x1 stride-1 conv is the matmul of its input. Accumulates in float32 (float64
    for float64 inputs) like the convolution; holds k*k copies of the input for the backward pass (CPU memory, not TPU HBM)."""
    k, _, cin, cout = kernel.shape
    if k == 1 and stride == 1:
        patches = x
    else:
        # channel index tap * cin + c, the order of the reshaped kernel's rows
        patches = jnp.concatenate(_strided_views(x, k, stride), axis=-1)
    return lax.dot_general(
        patches,
        kernel.reshape(k * k * cin, cout).astype(x.dtype),
        (((3,), (0,)), ((), ())),
        preferred_element_type=_accumulation_dtype(x.dtype),
    ).astype(x.dtype)


def _in_form(form: str, x: Array, kernel: Array, conv: Callable, shifted: Callable) -> Array:
    """``conv`` or ``shifted`` of ``(x, kernel)`` as ``form`` says; ``"auto"``: chosen by the backend
    the program is compiled for (``lax.platform_dependent``): shifted on CPU, the convolution
    elsewhere, so an AOT compile for a TPU on a CPU host still gets the convolution."""
    if form not in CONV_FORMS:
        raise ValueError(f"conv form must be one of {CONV_FORMS}, got {form!r}")
    if form == "conv":
        return conv(x, kernel)
    if form == "shifted":
        return shifted(x, kernel)
    return lax.platform_dependent(x, kernel, cpu=shifted, default=conv)


def regular_conv(x: Array, kernel: Array, stride: int, form: str = "auto") -> Array:
    """Regular conv (``kernel [k, k, in, out]``) in one of ``CONV_FORMS``: ``"conv"`` is
    ``conv2d``, ``"shifted"`` is ``conv_shifted``, ``"auto"`` by backend (``_in_form``)."""
    return _in_form(
        form,
        x,
        kernel,
        lambda x, kernel: conv2d(x, kernel, stride),
        lambda x, kernel: conv_shifted(x, kernel, stride),
    )


def depthwise_conv(x: Array, kernel: Array, stride: int, form: str = "auto") -> Array:
    """Depthwise conv (``kernel [k, k, 1, C]``) in one of ``CONV_FORMS``: ``"conv"`` is
    ``lax.conv_general_dilated`` with ``feature_group_count=C`` (what TPUs and GPUs run best, what
    jax2tf turns into one DEPTHWISE_CONV_2D and what qwix fake-quantizes), ``"shifted"`` is
    ``depthwise_shifted``, ``"auto"`` by backend (``_in_form``)."""
    groups = x.shape[-1]
    return _in_form(
        form,
        x,
        kernel,
        lambda x, kernel: conv2d(x, kernel, stride, groups=groups),
        lambda x, kernel: depthwise_shifted(x, kernel, stride),
    )


class ConvBN(nn.Module):
    """Bias-free k x k conv (regular or depthwise), BatchNorm, activation.

    ``features`` is ignored for depthwise convs (the output width equals the input width).
    """

    features: int
    kernel_size: int
    stride: int = 1
    depthwise: bool = False
    activation: str = "relu6"
    norm: NormConfig = BACKBONE_NORM
    kernel_init: Initializer = he_normal
    dtype: Any = jnp.float32
    conv_form: str = "auto"  # CONV_FORMS: how the conv computes

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        cin = x.shape[-1]
        k = self.kernel_size
        if self.depthwise:
            kernel = self.param("kernel", self.kernel_init, (k, k, 1, cin), jnp.float32)
            conv = functools.partial(depthwise_conv, stride=self.stride, form=self.conv_form)
        else:
            kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32)
            conv = functools.partial(regular_conv, stride=self.stride, form=self.conv_form)
        if bn_folding.correcting():  # QAT before the BN freeze (models/bn_folding.py)
            bn = bn_folding.FoldedBatchNorm(
                kernel.shape[-1], self.norm.epsilon, self.norm.momentum, name="BatchNorm"
            )
            factor = bn.factor()
            y = conv(x, bn_folding.fold_kernel(kernel, factor).astype(x.dtype))
            return ACTIVATIONS[self.activation](bn.correct(y, factor, train).astype(self.dtype))
        y = conv(x, kernel.astype(x.dtype))
        one_pass = 0 < self.norm.one_pass_min_pixels <= y.shape[1] * y.shape[2]
        y = (OnePassBatchNorm if one_pass else nn.BatchNorm)(
            use_running_average=not train,
            momentum=self.norm.momentum,
            epsilon=self.norm.epsilon,
            dtype=self.dtype,
            # two-pass batch variance, as TF's fused batch norm: the one-pass E[x^2] - E[x]^2
            # cancels catastrophically in float32 when a channel's mean dwarfs its spread
            use_fast_variance=False,
            name="BatchNorm",
        )(y)
        return ACTIVATIONS[self.activation](y)


class OnePassBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` (same variables, same inference math) whose train-mode statistics take one
    pass over the input: with the running mean ``s`` as a shift (held constant),
    ``mean = s + E[x - s]`` and ``var = E[(x - s)^2] - E[x - s]^2``, both float32 reductions of the
    input alone, which XLA fuses into the convolution that writes it instead of re-reading it for
    a second, centered pass. The gradient is the two-pass form's (``s`` is a constant). The shift
    keeps the cancellation of the one-pass form small once the running mean is near the batch
    mean; at initialization (running mean 0) it is the plain one-pass form, which is why
    ``NormConfig.one_pass_min_pixels`` keeps it to large maps, whose channels average many
    pixels (the catastrophic case, a mean 1000x its spread, is a 1x1 map of a few images)."""

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = (x.shape[-1],)
        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features
        )
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            shift = lax.stop_gradient(ra_mean.value)
            d = x.astype(jnp.float32) - shift
            m1, m2 = jnp.mean(d, axes), jnp.mean(d * d, axes)
            mean, var = shift + m1, jnp.maximum(m2 - m1 * m1, 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        # flax's _normalize, in its order: (x - mean) * (rsqrt(var + eps) * scale) + bias
        y = x - mean
        y = y * (lax.rsqrt(var + self.epsilon) * scale)
        return jnp.asarray(y + bias, self.dtype or x.dtype)


class ConvBias(nn.Module):
    """k x k conv (regular or depthwise) with a bias and no normalization or activation."""

    features: int
    kernel_size: int = 1
    depthwise: bool = False
    kernel_init: Initializer = he_normal
    bias_init: Initializer = nn.initializers.zeros
    conv_form: str = "auto"  # CONV_FORMS: how the conv computes

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cin = x.shape[-1]
        k = self.kernel_size
        if self.depthwise:
            kernel = self.param("kernel", self.kernel_init, (k, k, 1, cin), jnp.float32)
            y = depthwise_conv(x, kernel.astype(x.dtype), 1, self.conv_form)
            width = cin
        else:
            kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32)
            y = regular_conv(x, kernel.astype(x.dtype), 1, self.conv_form)
            width = self.features
        bias = self.param("bias", self.bias_init, (width,), jnp.float32)
        return y + bias.astype(y.dtype)


class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv with bias + activation, 1x1 conv with bias, sigmoid gate.

    The pool is a full-window ``avg_pool`` (one AVERAGE_POOL_2D in TFLite, like TF1's AvgPool VALID).
    """

    hidden: int
    activation: str = "relu6"
    gate: str = "sigmoid"  # or "hard_sigmoid": slim MobileNetV3's relu6(x + 3) * 0.16667
    kernel_init: Initializer = he_normal
    conv_form: str = "auto"  # CONV_FORMS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, w = x.shape[1], x.shape[2]
        s = nn.avg_pool(x, (h, w), strides=(h, w), padding="VALID")
        conv = functools.partial(ConvBias, kernel_init=self.kernel_init, conv_form=self.conv_form)
        s = conv(self.hidden, 1, name="Conv")(s)
        s = ACTIVATIONS[self.activation](s)
        s = conv(x.shape[-1], 1, name="Conv_1")(s)
        if self.gate == "sigmoid":
            return x * jax.nn.sigmoid(s)
        if self.gate == "hard_sigmoid":
            # slim mobilenet_v3.py writes the constant as 0.16667, not 1/6; kept for output parity.
            return x * (jax.nn.relu6(s + 3.0) * 0.16667)
        raise ValueError(f"unknown SE gate {self.gate!r}")
