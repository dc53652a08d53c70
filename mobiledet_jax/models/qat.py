"""Quantization-aware training with qwix's ODML providers: the fake-quantized (int8) model.

Training builds ``qat_model`` into its step (``config.train.qat``); ``export.qat_convert`` turns
the trained model into the int8 file. Usage::

    qmodel = qat.qat_model(model, scheme="asymmetric")     # same apply() signature as the model
    variables = qat.fold_batch_norms(model, variables)      # train.qat_fold_bn (the default)
    quant_stats = qat.calibrate(qmodel, variables, images)  # images [B, H, W, 3] in [-1, 1]
    # training: qmodel.apply({..., 'quant_stats': qs}, x, train=False,   # BN frozen when folded
    #                        mutable=['batch_stats', 'quant_stats'])
    # export: qat_convert.convert(model, variables, quant_stats, (H, W))  # uint8 in, uint8 out

**What the fake-quant model computes, and what the int8 file computes** (the two are meant to be
one computation; the export report's parity and COCO rows compare them):

- *Quantization points*: qwix's ODML provider fake-quantizes the input of every conv and
  residual ADD (and of the MUL, hard-swish and sigmoid of MobileDet-CPU's activations and SE
  blocks) and the two model outputs, with per-tensor ranges (``quant_stats``: MobileDet-EdgeTPU
  has 245 conv inputs, 45 adds, 2 outputs). A conv's BatchNorm and ReLU6 sit between two points,
  as in the fused TFLite CONV_2D (one output quantization after bias and activation); the head
  convs' reshapes and concatenation carry the output's range, as the converter gives them.
  ``sigmoid`` has TFLite LOGISTIC's fixed output range [0, 255/256].
- *BatchNorm*: with ``train.qat_fold_bn`` the BN is folded into the kernel before QAT
  (``fold_batch_norms``: the starting model's moving statistics) and frozen, so the fake
  quantization sees the folded kernel the file holds. The file's int32 bias is the folded shift
  rounded to ``s_in * s_w``; the export rounds the model's biases onto that grid first
  (``export.qat_convert.convert_snapped``), so that both hold the same bias. As TF's QAT does,
  ``train.qat_bn_freeze_delay`` > 0 first trains that many steps with the conv folded with the
  moving statistics and corrected to batch statistics, which still learn (``models.bn_folding``:
  qwix fake-quantizes the folded kernel, ``fold_kernel``, and fuses the correction into the conv,
  ``corrected_batch_norm``); then the trainer folds the statistics in and freezes them. 0 (the
  default) freezes from the start, which suits fine-tuning a converged float model.
- *Weights*: symmetric int8 with TFLite's grid, scale ``absmax / 127`` and values in [-127, 127]
  (``WEIGHT_CALIBRATION``; qwix's own grid, ``absmax / 127.5``, reaches -128, which the converter
  clamps); per output channel in the ``asymmetric`` scheme, one scale per tensor in
  ``symmetric`` (which needs the folded kernel: a per-tensor scale does not commute with BN).
- *Activations*: ``asymmetric``: min/max ranges (a zero point per tensor), the file's; in
  ``symmetric``: abs-max ranges, zero point 0. A range is the mean over calibration images and
  training steps of each image's min/max (qwix's moving average), not their global extremes.
- *Rounding*: qwix rounds half to even in float; TFLite accumulates in int32 and requantizes
  with a float32 multiplier: a value a layer lands one step apart, and that compounds with
  depth (quickstart QAT model: 99.9% / 97.5% of the boxes / logits within one output step).
  ``models.qat_integer`` computes this model in the file's integer arithmetic (bit-equal to
  the file); the export compares files with that, after folding BN's trained scale into the
  kernels (``fold_batch_norms``) as the converter would.
- *Input*: the file takes uint8 pixels at scale 2/255, zero point 128, i.e. ``(p - 128) * 2/255``
  (``file_input``), half a step below ``preprocess(p)`` (an integer zero point cannot hold
  -1 + k * 2/255); the fake-quant model is compared with the file on ``file_input(p)``.
- *Post-processing*: the file's outputs are int8, dequantized at the interface (uint8); our
  post-processing (or the TFLite NMS op, which dequantizes its inputs) runs on those floats.

What makes MobileDet go through (qwix 0.1.8, litert-converter 0.5.0):

1. our convolutions call ``lax.conv_general_dilated`` with string dimension numbers, which qwix's
   conv handler does not parse: ``_Conv`` normalizes them first;
2. ``jax.nn.hard_swish`` (MobileDet-CPU) is registered as one quantized op, so the converter emits
   one int8 HARD_SWISH instead of a float island (docs/reference/export_findings.md, fix 1; the
   export then rewrites it for XNNPACK, ``export.int8_kernels``);
3. ``jax.nn.sigmoid`` (SE gates) is registered with TFLite LOGISTIC's fixed output range
   [0, 255/256] (fix 3). The ``scores`` head's sigmoid comes after the model (outside qwix's
   interception), so ``convert`` appends it to the int8 logits as an int8 LOGISTIC in the
   flatbuffer. Fix 2 (array constants) needs no code here: MobileDet uses ``jax.nn.relu6`` /
   ``jax.nn.hard_swish`` and no Python-scalar arithmetic inside the network.

Parameters must be ``jax.Array``s (``numpy`` arrays lose qwix's weight tags on ``astype``, which
would leave the convolutions float): ``_as_jax`` converts them. Anything that still stays float is
an error (``QatError``), never a silent float layer: ``qat_model`` checks that its rule covers every
convolution, ``calibrate`` that qwix fake-quantized every conv kernel while tracing, and ``convert``
checks the converted file with ``check_int8``.
"""

from __future__ import annotations

import contextvars
import functools
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from jax import lax
from qwix._src import aux_data
from qwix._src.providers import odml_ops
from qwix._src.utils import flax_util

from mobiledet_jax.models import bn_folding
from mobiledet_jax.models.factory import as_convolutions

INPUT_RANGE = (-1.0, 1.0)  # the model input: preprocess() output
# config.model.int8_scheme: "asymmetric" is TFLite's int8 scheme (per-channel symmetric weights,
# per-tensor asymmetric activations: min/max ranges, any zero point); "symmetric" has zero point 0
# activations (abs-max ranges) and one weight scale per tensor, as the DSP / NNAPI delegates that
# require symmetric int8 take it. TFLite's fixed-range ops keep their ranges (LOGISTIC: [0, 1)).
SCHEMES = ("asymmetric", "symmetric")
# TFLite's int8 weights: scale abs-max / 127, values in [-127, 127]. qwix's abs-max scale is
# abs-max / 127.5 (its bound for int8), whose -128 the converter clamps to -127: widening qwix's
# range by 127.5 / 127 gives TFLite's grid exactly, so fake-quant and file weights are equal.
WEIGHT_CALIBRATION = f"absmax,{127.5 / 127.0!r}"


class QatError(RuntimeError):
    """QAT was requested but a layer would not be quantized."""


def file_input(pixels):
    """The model input an int8 file's uint8 pixels stand for: ``(p - 128) * 2/255``. The file's
    input scale is 2/255 with an integer zero point (128), so pixel 0 is -1.0039 and 255 is
    0.9961, not ``preprocess``'s -1 and 1: half a step apart, which the fake quantization of
    ``preprocess(p)`` would round either way. Compare a file with its fake-quant model on this."""
    return (jnp.asarray(pixels).astype(jnp.float32) - 128.0) * (2.0 / 255.0)


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"int8_scheme must be one of {SCHEMES}, got {scheme!r}")


def rules(module_path: str = ".*", scheme: str = "asymmetric") -> list:
    check_scheme(scheme)
    act = "absmax" if scheme == "symmetric" else "minmax"
    return [
        qwix.QuantizationRule(
            module_path=module_path,
            weight_qtype="int8",
            act_qtype="int8",
            act_calibration_method=act,
            weight_calibration_method=WEIGHT_CALIBRATION,
        )
    ]


def provider_options(scheme: str = "asymmetric") -> dict:
    """Keyword arguments of qwix's ODML providers (QAT and conversion) for ``scheme``."""
    check_scheme(scheme)
    return {
        "fixed_range_for_inputs": INPUT_RANGE,
        "disable_per_channel_weights": scheme == "symmetric",
    }


# While ``calibrate`` traces the QAT model: module paths of the convs whose kernel qwix fake-quantizes.
_FAKE_QUANT_CONVS: contextvars.ContextVar[set | None] = contextvars.ContextVar(
    "fake_quant_convs", default=None
)


class _Conv(odml_ops.DotEinsumConv):
    """qwix's conv handler, fed ``ConvDimensionNumbers`` instead of ``("NHWC", "HWIO", "NHWC")``.

    It also records (during ``calibrate``) which convs it quantized: those whose kernel carries
    qwix's weight tag, i.e. gets per-channel int8 fake quantization.
    """

    def __call__(self, *args, **kwargs):
        dn = kwargs.get("dimension_numbers")
        if dn is not None and not isinstance(dn, lax.ConvDimensionNumbers):
            kwargs["dimension_numbers"] = lax.conv_dimension_numbers(
                args[0].shape, args[1].shape, dn
            )
        seen = _FAKE_QUANT_CONVS.get()
        if seen is not None and aux_data.get(args[1], odml_ops.AuxDataKey.WEIGHT_NAME, None):
            seen.add("/".join(flax_util.get_current_module().path))
        return super().__call__(*args, **kwargs)


class _FoldKernel(odml_ops.QuantizedOp):
    """``bn_folding.fold_kernel``: the folded kernel is the conv's weight (keeps the kernel's tag,
    so the conv fake-quantizes it per channel as it does the kernel itself)."""

    input_idx = [0]

    def __call__(self, kernel, factor):
        out = self._call_original_op(kernel, factor)
        name = aux_data.get(kernel, odml_ops.AuxDataKey.WEIGHT_NAME, None)
        if name is not None:
            aux_data.set(out, odml_ops.AuxDataKey.WEIGHT_NAME, name)
        return out


class _CorrectedBatchNorm(odml_ops.QuantizedOp):
    """``bn_folding.corrected_batch_norm``: fused into the conv before it, as qwix's BatchNorm
    handler fuses ``nn.BatchNorm`` (no quantization point between the conv and its activation)."""

    input_idx = [0]

    def __call__(self, y, *args, **kwargs):
        out, mean, var = self._call_original_op(y, *args, **kwargs)
        for stat in (mean, var):  # BN's state, never an activation to quantize
            aux_data.set(stat, odml_ops.AuxDataKey.IS_ACTIVATION, False)
        if aux_data.get(y, odml_ops.AuxDataKey.IS_ACTIVATION, False):
            if aux_data.get(y, odml_ops.AuxDataKey.ALLOW_FUSION, False):
                aux_data.set(out, odml_ops.AuxDataKey.ALLOW_FUSION, True)
            self._fake_quant_output(out, aux_data.get(y, odml_ops.AuxDataKey.FQ_RULE, None))
        return out, mean, var


def register_ops(provider):
    """The registrations MobileDet needs, on a QAT or a conversion provider."""
    for fn, handler in (
        (bn_folding.fold_kernel, _FoldKernel),
        (bn_folding.corrected_batch_norm, _CorrectedBatchNorm),
    ):
        provider._ops[f"{fn.__module__}.{fn.__name__}"] = handler
    conv = provider._ops["jax.lax.conv_general_dilated"]
    provider._ops["jax.lax.conv_general_dilated"] = functools.partial(
        _Conv, *conv.args, **conv.keywords
    )
    provider._ops["jax.nn.hard_swish"] = functools.partial(odml_ops.QuantizedOp, input_idx=[0])
    provider._ops["jax.nn.sigmoid"] = functools.partial(
        odml_ops.QuantizedOp, input_idx=[0], fixed_range_for_output=(0.0, 255 / 256)
    )
    return provider


def batch_norm_epsilons(model, image_size=(64, 64)) -> dict[str, float]:
    """``{"backbone/Conv/BatchNorm": 0.01, ...}``: every BatchNorm's module path and epsilon
    (read from the modules while tracing shapes only)."""
    found: dict[str, float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            found["/".join(context.module.path)] = float(context.module.epsilon)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_size, 3)), train=False)
        )
    return found


def fold_batch_norms(model, variables, factors: dict | None = None) -> dict:
    """``variables`` with every BatchNorm folded into the kernel of the conv before it, as the
    converter folds it: ``kernel * s`` and BN bias ``beta - mean * s`` (``s = gamma /
    sqrt(var + eps)``, per output channel), the BN left as the identity plus that bias (scale 1,
    mean 0, variance ``1 - eps``, so that ``rsqrt(var + eps)`` is exactly 1). In inference mode
    the model computes the same function (to float rounding); in QAT (``train.qat_fold_bn``) the
    fake quantization then sees the folded kernel the int8 file holds (per-tensor weight scales
    need that: they do not commute with BN's per-channel scale), and BN stays frozen.
    ``factors``: a dict to fill with each folded kernel's path (``backbone/Conv/kernel``) and its
    per-output-channel factor (numpy)."""
    params = flax.traverse_util.flatten_dict(jax.tree.map(_host, variables["params"]), sep="/")
    stats = flax.traverse_util.flatten_dict(jax.tree.map(_host, variables["batch_stats"]), sep="/")
    for path, eps in batch_norm_epsilons(model).items():
        scope = path.rpartition("/")[0]  # "" for a ConvBN applied on its own
        conv = f"{scope}/kernel" if scope else "kernel"
        if conv not in params:
            raise QatError(f"BatchNorm {path} does not follow a conv kernel")
        eps32 = np.float32(eps)
        kernel, s = _fold(params[conv], params[path + "/scale"], stats[path + "/var"], eps32)
        params[conv] = np.asarray(kernel)  # output channels are the last axis
        if factors is not None:
            factors[conv] = np.asarray(s)
        params[path + "/bias"] = (params[path + "/bias"] - stats[path + "/mean"] * s).astype(
            np.float32
        )
        params[path + "/scale"] = np.ones_like(s, np.float32)
        stats[path + "/mean"] = np.zeros_like(s, np.float32)
        stats[path + "/var"] = np.full_like(s, np.float32(1.0) - eps32, np.float32)
    out = dict(variables)
    out["params"] = _as_jax(flax.traverse_util.unflatten_dict(params, sep="/"))
    out["batch_stats"] = _as_jax(flax.traverse_util.unflatten_dict(stats, sep="/"))
    return out


@jax.jit
def _fold(kernel, scale, var, eps):
    """The folded kernel and the factor, computed as ``bn_folding``'s corrected conv computes them
    inside a training step (one XLA program: the same floats, so that the int8 grid of a kernel
    does not move when the BN freeze folds it)."""
    factor = scale / jnp.sqrt(var + eps)
    return bn_folding.fold_kernel(kernel, factor), factor


def _host(x) -> np.ndarray:
    """A (replicated) array on this host: a process's own copy when it spans several hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def conv_paths(model, image_size=(64, 64)) -> list[str]:
    """Module paths (``backbone/Conv``, ...) of every conv kernel of ``model`` (shapes only)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_size, 3)), train=False)
    )
    return kernel_paths(shapes["params"])


def kernel_paths(params) -> list[str]:
    """Module paths of the ``kernel`` leaves of a parameter tree."""
    out = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] == "kernel":
            out.append("/".join(keys[:-1]))
    return out


def check_covered(paths, module_path: str) -> None:
    """Raises QatError if the rule's ``module_path`` regex misses a conv (qwix: ``re.fullmatch``)."""
    missing = [p for p in paths if not re.fullmatch(module_path, p)]
    if missing:
        raise QatError(f"{len(missing)} conv layer(s) not quantized: {missing[:10]}")


def qat_model(model, module_path: str = ".*", scheme: str = "asymmetric"):
    """The fake-quantized model (same ``apply`` arguments; adds the ``quant_stats`` collection)
    in the int8 ``scheme`` (``SCHEMES``).

    Raises QatError when ``module_path`` would leave a convolution in float.
    """
    check_covered(conv_paths(model), module_path)
    provider = qwix.OdmlQatProvider(rules(module_path, scheme), **provider_options(scheme))
    # depthwise convs as convolutions: the op qwix fake-quantizes (never the CPU's shifted form)
    return qwix.quantize_model(as_convolutions(model), register_ops(provider))


def calibrate(qmodel, variables, images) -> dict:
    """Initial ``quant_stats`` (min/max of every fake-quantized tensor) from one pass over
    ``images`` [B, H, W, 3] in [-1, 1].

    Raises QatError when qwix did not fake-quantize the kernel of some conv of ``variables``
    (e.g. a conv computed by a function qwix does not intercept): QAT never trains a float layer.

    qwix disables jit *inside* the model to intercept ops; run eagerly, that compiles every
    primitive separately (about 1100 XLA compilations, 1-2 minutes for a tiny MobileDet). Under an
    outer ``jax.jit`` the same Python runs once as a trace and compiles once. The same holds for a
    QAT training step: jit it as a whole.
    """
    v = _as_jax({k: variables[k] for k in ("params", "batch_stats")})

    @jax.jit
    def stats(v, images):
        return qmodel.apply(v, images, train=False, mutable=["quant_stats"])[1]["quant_stats"]

    images = jnp.asarray(images)
    seen: set[str] = set()
    token = _FAKE_QUANT_CONVS.set(seen)
    try:
        lowered = stats.lower(v, images)  # the trace: qwix intercepts the ops here
    finally:
        _FAKE_QUANT_CONVS.reset(token)
    missing = [p for p in kernel_paths(v["params"]) if p not in seen]
    if missing:
        raise QatError(f"{len(missing)} conv layer(s) not fake-quantized by qwix: {missing[:10]}")
    return lowered.compile()(v, images)
