"""BatchNorm folded into its conv with batch-statistics correction: QAT before the BN freeze.

TensorFlow's quantization-aware training (``tf.contrib.quantize``, Jacob et al. 2018, appendix C)
trains a conv + BatchNorm as the folded conv the int8 file will hold, while BatchNorm still
learns: the kernel is folded with the *moving* statistics, ``w * gamma / sigma`` (so its int8
grid moves slowly), and the conv output is corrected to what batch statistics give,
``y * sigma / sigma_B + (beta - gamma mu_B / sigma_B)``; the moving statistics keep updating. After
``train.qat_bn_freeze_delay`` steps the statistics freeze: the trainer folds them into the
variables (``qat.fold_batch_norms``) and QAT goes on with BN as a fixed bias, as the file has it.

While ``correcting()`` (the trainer traces its QAT step inside ``batch_norm_correction()``),
``layers.ConvBN`` computes that way with the same variables as ``nn.BatchNorm`` (``scale``,
``bias``; ``mean``, ``var``). In evaluation mode the correction is 1 and the bias uses the moving
statistics: exactly the folded conv. qwix sees the folded kernel as the conv's weight (per-channel
int8 fake quantization of ``w * gamma / sigma``, ``models.qat`` registers ``fold_kernel``) and the
correction as part of the fused conv (no quantization point between the conv and its activation).

One difference from TensorFlow, on purpose: TF computes the batch statistics with a second, float
convolution of the unfolded kernel; here they are the statistics of the fake-quantized conv's
output divided back by the fold factor (``y / f``), one convolution instead of two. They differ by
the weights' quantization error.

Outside QAT nothing here is used: ``ConvBN`` is conv + ``nn.BatchNorm``.
"""

import contextlib
import contextvars

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_CORRECTING = contextvars.ContextVar("bn_folding_correcting", default=False)


def correcting() -> bool:
    """Whether ``ConvBN`` is being traced as a folded conv with BN correction."""
    return _CORRECTING.get()


@contextlib.contextmanager
def batch_norm_correction():
    """Trace ``ConvBN`` layers as folded convs with BN correction (a trace-time switch: jit the
    function that applies the model inside it)."""
    token = _CORRECTING.set(True)
    try:
        yield
    finally:
        _CORRECTING.reset(token)


def fold_kernel(kernel: Array, factor: Array) -> Array:
    """The conv kernel with BN's per-output-channel factor folded in (the last axis)."""
    return kernel * factor.astype(kernel.dtype)


def corrected_batch_norm(
    y, factor, scale, bias, mean, var, epsilon: float, momentum: float, train: bool
):
    """``(out, new_mean, new_var)``: BatchNorm of ``z = y / factor`` (``y`` the folded conv's
    output) on batch statistics in ``train`` (``new_*``: the moving averages updated with them,
    flax's biased variance and momentum), on ``mean`` / ``var`` otherwise (returned unchanged).
    A channel with ``gamma = 0`` keeps its moving statistics (its folded conv is all zeros).
    One function, so that qwix sees no op of the statistics (``models.qat`` registers it)."""
    yf = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    safe = jnp.where(factor == 0, 1.0, factor)  # gamma = 0: w * 0 = 0, so z = y = 0, out = bias
    z = yf / safe
    axes = tuple(range(y.ndim - 1))
    if train:
        batch_mean = jnp.mean(z, axes)
        batch_var = jnp.mean(jnp.square(z - batch_mean), axes)  # two passes, as nn.BatchNorm's
        new_mean = jnp.where(factor == 0, mean, momentum * mean + (1.0 - momentum) * batch_mean)
        new_var = jnp.where(factor == 0, var, momentum * var + (1.0 - momentum) * batch_var)
    else:
        batch_mean, batch_var, new_mean, new_var = mean, var, mean, var
    out = (z - batch_mean) * (scale * lax.rsqrt(batch_var + epsilon)) + bias
    return out.astype(y.dtype), new_mean, new_var


class FoldedBatchNorm(nn.Module):
    """``nn.BatchNorm``'s variables (names, shapes, initial values) for a conv folded with it;
    ``ConvBN`` reads the fold factor, convolves in its own scope (where qwix records the conv),
    then calls ``correct``."""

    features: int
    epsilon: float
    momentum: float

    def setup(self):
        c = (self.features,)
        self.scale = self.param("scale", nn.initializers.ones, c, jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, c, jnp.float32)
        self.mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(c, jnp.float32))
        self.var = self.variable("batch_stats", "var", lambda: jnp.ones(c, jnp.float32))

    def factor(self) -> Array:
        """``gamma / sqrt(moving_var + eps)``, per output channel (the formula of
        ``qat.fold_batch_norms``; XLA may compute it as ``gamma * rsqrt(...)``, a float or two
        away, which can move a weight across a rounding boundary of a per-tensor int8 grid)."""
        return self.scale / jnp.sqrt(self.var.value + jnp.float32(self.epsilon))

    def correct(self, y: Array, factor: Array, train: bool) -> Array:
        out, mean, var = corrected_batch_norm(
            y, factor, self.scale, self.bias, self.mean.value, self.var.value, self.epsilon,
            self.momentum, train,
        )  # fmt: skip
        if train and not self.is_initializing():
            self.mean.value, self.var.value = mean, var
        return out


class Corrected:
    """``model`` whose ``apply`` traces its ``ConvBN`` layers corrected (inside
    ``batch_norm_correction``): the evaluator's model during QAT before the BN freeze. Folded
    variables (after the freeze) compute the same through it, so one compiled evaluation serves
    the whole run."""

    def __init__(self, model):
        self._model = model

    def apply(self, *args, **kwargs):
        with batch_norm_correction():
            return self._model.apply(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)
