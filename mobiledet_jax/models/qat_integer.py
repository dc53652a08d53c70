"""The QAT model in TFLite's integer arithmetic: the int8 file's numbers, computed in JAX.

``integer_model(model, variables, quant_stats)`` is the fake-quant model of ``models.qat`` (same
modules, same ``quant_stats``, same BN-folded kernels) evaluated the way the int8 file's kernels
evaluate it on a CPU (TFLite's XNNPACK delegate, the interpreter's default), so that the file and
this model agree value for value rather than to within rounding::

    imodel = qat_integer.integer_model(model, variables, quant_stats)
    out = imodel.apply(variables, qat.file_input(pixels), train=False)   # inference only

Why not the float fake-quant model: it rounds where the file rounds but computes in between in
float (the conv of dequantized values, the bias and the requantization as one float division).
TFLite instead accumulates ``(q_in - zp_in) * q_w`` exactly in int32, adds the int32 bias and
requantizes with a float32 multiplier; the two land one step apart on a value now and then
(one in 10^4 to 10^5), and a quantized MobileDet is chaotic at the step level: a single flipped
value is a few flipped values one layer later. On the quickstart's QAT model the first such flip
came around layer 25 and half of the last layers' values were one or more steps apart, so the
raw outputs were within one output step on only 90% (noise images) to 97.5% (val images) of the
logits. Here every step is the kernel's:

- *scales*: computed statically from ``quant_stats`` as the converter receives them (qwix's
  conversion provider, the same float32 values the file holds; scales computed inside a jitted
  QAT step can differ from them in the last bit); the int8 weights rounded from the exact
  quotient ``w / s``, as the converter rounds them;
- *convolutions* (regular and depthwise): ``acc = conv(q_in, q_w) - zp_in * conv(1, q_w)`` in
  int32 (int8 operands: what XNNPACK does with the zero point; padding contributes nothing), then
  the BatchNorm / bias shift as the int32 bias ``round(b / (s_in * s_w))`` (exact: the export
  snaps every bias onto that grid, ``export.qat_convert.snap_biases``);
- *requantization*: ``q = rne(clamp(float32(acc) * float32(float32(s_in * s_w) / s_out),
  lo - zp, hi - zp)) + zp`` (XNNPACK's fp32 requantization, rounding half to even), with the
  fused ReLU / ReLU6 as the clamp bounds TFLite computes (``zp + round(6 / s_out)``);
- *residual adds*: XNNPACK's fixed-point ADD: multipliers ``rne(s_a / s_out * 2^shift)`` with
  ``shift = 20 - exponent(max ratio)``, the sum shifted right with rounding;
- reshapes and concatenations carry the integers through unchanged (their scales are the
  output's, as the converter makes them).

How: the accumulators travel with the float values as qwix auxiliary data (``_ACC``: int32
accumulator, per-element ``s_in * s_w`` and clamp bounds; ``_ADD``: the two integer operands and
their scales), through the primitives between a conv and the next quantization point
(``_IntegerPrimitiveBind``); each quantization point with such data computes the kernel's integers
instead of rounding the float. A value with none (the model input) is quantized as the fake-quant
model does. Ops whose kernels are not emulated here (hard-swish, the squeeze-excite gate,
MEAN) are computed as the fake-quant model computes them; MobileDet-GPU, -EdgeTPU and -DSP have
none of them. Verified against the interpreter: tests/models/test_qat_integer.py, and the export
report's parity rows (``export.exporter.reference_model``).

Evaluation only: integer convolutions have no gradient. XLA's CPU runs them; accelerators that
lack int8 x int8 -> int32 convolutions would need the float form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from jax import lax
from qwix._src import aux_data, interception
from qwix._src.core import qarray
from qwix._src.providers import odml_ops
from qwix._src.utils import flax_util

from mobiledet_jax.models.factory import as_convolutions
from mobiledet_jax.models.qat import _as_jax, _Conv, provider_options, register_ops, rules

_INT = "mobiledet_int8"  # on a quantized value: (q int8, scale, zero point or None)
_ACC = "mobiledet_acc"  # on a conv's result: (acc int32, per-element s_in * s_w, lo, hi)
_ADD = "mobiledet_add"  # on a residual add's result: (A, s_a, B, s_b) with A = q_a - zp_a

# primitives that move values without changing them: the accumulators move the same way
_MOVING = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev"}


def _float_bits(x: np.float32) -> int:
    return int(np.frombuffer(np.float32(x).tobytes(), np.uint32)[0])


def _requantize(acc, r, lo, hi, scale, zp):
    """XNNPACK's fp32 requantization of int32 ``acc`` into the int8 tensor ``(scale, zp)``."""
    zp = jnp.zeros((), jnp.int32) if zp is None else jnp.asarray(zp, jnp.int32).reshape(())
    scale = jnp.asarray(scale, jnp.float32).reshape(())
    q_lo = jnp.full((), -128, jnp.int32)
    q_hi = jnp.full((), 127, jnp.int32)
    if lo is not None:  # TFLite's activation range: zp + round(bound / scale), clipped to int8
        q_lo = jnp.maximum(q_lo, zp + jnp.round(jnp.float32(lo) / scale).astype(jnp.int32))
    if hi is not None:
        q_hi = jnp.minimum(q_hi, zp + jnp.round(jnp.float32(hi) / scale).astype(jnp.int32))
    y = acc.astype(jnp.float32) * _multiplier(r, scale)
    y = jnp.clip(y, (q_lo - zp).astype(jnp.float32), (q_hi - zp).astype(jnp.float32))
    return jnp.round(y).astype(jnp.int32) + zp  # jnp.round: half to even, as the kernels


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _multiplier(r, scale):
    """``float32(r / scale)``, correctly rounded: XLA's CPU divides through an approximate
    reciprocal (62% of quotients bit-equal to IEEE division in a test), which moves rounding
    ties. ``r`` and ``scale`` are concrete when the variables are constants of the traced
    function (``export.convert.serving_function``); traced ones get the reciprocal refined by
    one Newton step and a final exact-residual correction."""
    if _concrete(r) and _concrete(scale):
        return jnp.asarray(np.asarray(r, np.float32) / np.float32(np.asarray(scale).reshape(())))
    q = r / scale
    # one ulp either way: keep the candidate with the smaller |r - c * scale| (Dekker products)
    cands = [jnp.nextafter(q, -jnp.inf), q, jnp.nextafter(q, jnp.inf)]
    errs = [jnp.abs(_residual(r, c, scale)) for c in cands]
    best = jnp.where(errs[0] < errs[1], cands[0], q)
    best_err = jnp.minimum(errs[0], errs[1])
    return jnp.where(errs[2] < best_err, cands[2], best)


def _split(a):
    c = a * np.float32(4097.0)  # Veltkamp: 2^12 + 1 for float32
    hi = c - (c - a)
    return hi, a - hi


def _residual(r, c, scale):
    """``r - c * scale`` with the product's rounding error kept (Dekker's TwoProduct)."""
    scale = jnp.asarray(scale, jnp.float32).reshape(())
    p = c * scale
    ch, cl = _split(c)
    sh, sl = _split(scale)
    e = ((ch * sh - p) + ch * sl + cl * sh) + cl * sl
    return (r - p) - e


def _fixed_point_add(a, s_a, b, s_b, scale, zp):
    """XNNPACK's int8 ADD of ``a = q_a - zp_a`` and ``b`` (static scales) into ``(scale, zp)``."""
    s_a, s_b, scale = (np.float32(np.asarray(v).reshape(())) for v in (s_a, s_b, scale))
    ra, rb = np.float32(s_a / scale), np.float32(s_b / scale)
    exponent = (_float_bits(max(abs(ra), abs(rb))) >> 23) - 127
    shift = 20 - exponent
    ma = int(np.rint(ra * np.float32(2.0**shift)))
    mb = int(np.rint(rb * np.float32(2.0**shift)))
    zp = 0 if zp is None else int(np.asarray(zp).reshape(()))
    acc = (1 << (shift - 1)) + a * ma + b * mb
    return jnp.clip((acc >> shift) + zp, -128, 127)


class _IntegerPrimitiveBind(odml_ops.PrimitiveBindOp):
    """qwix's metadata forwarding, and the accumulators carried through the primitives between
    a conv and the next quantization point (bias and BN shift added, moves applied)."""

    def __call__(self, primitive, *args, **params):
        out = super().__call__(primitive, *args, **params)
        if not isinstance(out, jax.Array):
            return out
        name = primitive.name
        tagged = [aux_data.get(a, _ACC, None) if isinstance(a, jax.Array) else None for a in args]
        if name in _MOVING and tagged and tagged[0] is not None:
            acc, r, lo, hi = tagged[0]
            others = args[1:]
            aux_data.set(out, _ACC, (primitive.bind(acc, *others, **params),
                                     _bind_static(primitive, r, *others, **params), lo, hi))  # fmt: skip
        elif name in _MOVING and isinstance(args[0], jax.Array) and _has_int(args[0]):
            q, scale, zp = aux_data.get(args[0], _INT)
            aux_data.set(out, _INT, (primitive.bind(q, *args[1:], **params), scale, zp))
        elif name == "concatenate" and tagged and all(t is not None for t in tagged):
            if len({(t[2], t[3]) for t in tagged}) == 1:
                accs = primitive.bind(*[t[0] for t in tagged], **params)
                rs = _bind_static(primitive, *[t[1] for t in tagged], **params)
                aux_data.set(out, _ACC, (accs, rs, tagged[0][2], tagged[0][3]))
        elif name in ("add", "sub", "mul") and len(args) == 2:
            self._affine(name, args, tagged, out)
        elif name == "convert_element_type" and tagged and tagged[0] is not None:
            if jnp.issubdtype(out.dtype, jnp.floating):
                aux_data.set(out, _ACC, tagged[0])
        return out

    @staticmethod
    def _affine(name, args, tagged, out):
        """``acc + c`` / ``acc - c`` (a bias on the int32 grid) and ``acc * c`` (the folded BN's
        factor, 1) for ``c`` not an activation; the sum of two quantized values (a residual ADD)."""
        a, b = args
        if tagged[0] is not None and tagged[1] is None and not _is_activation(b):
            acc, r, lo, hi = tagged[0]
            if lo is not None or hi is not None:
                return  # an affine op after the clamp: not a conv's fused epilogue
            shape = out.shape
            with jax.ensure_compile_time_eval():  # eager when r and c are constants
                c = jnp.asarray(b, jnp.float32)
                if name == "mul":  # a per-channel factor: the accumulator's unit changes
                    r = jnp.broadcast_to(r * c, shape)
                else:
                    step = jnp.round(c / r).astype(jnp.int32)  # exact: b is on the grid
                    r = jnp.broadcast_to(r, shape)
            if name != "mul":
                acc = acc + step if name == "add" else acc - step
            aux_data.set(out, _ACC, (jnp.broadcast_to(acc, shape), r, None, None))
        elif name == "add" and tagged == [None, None]:
            ta, tb = aux_data.get(a, _INT, None), aux_data.get(b, _INT, None)
            if ta is not None and tb is not None:
                aux_data.set(out, _ADD, (_centered(ta), ta[1], _centered(tb), tb[1]))


def _bind_static(primitive, *args, **params):
    """``primitive.bind`` evaluated at once when every operand is a constant."""
    with jax.ensure_compile_time_eval():
        return primitive.bind(*args, **params)


def _has_int(x) -> bool:
    return aux_data.get(x, _INT, None) is not None


def _is_activation(x) -> bool:
    return isinstance(x, jax.Array) and aux_data.get(x, odml_ops.AuxDataKey.IS_ACTIVATION, False)


def _centered(t):
    q, _, zp = t
    q = q.astype(jnp.int32)
    return q if zp is None else q - jnp.asarray(zp, jnp.int32).reshape(())


class _IntegerConv(_Conv):
    """A conv of two quantized operands as the int8 kernel computes it (int32 accumulator)."""

    def _call_original_op(self, *args, **kwargs):
        tx, tw = aux_data.get(args[0], _INT, None), aux_data.get(args[1], _INT, None)
        if tx is None or tw is None:
            return super()._call_original_op(*args, **kwargs)
        (qx, sx, zx), (qw, sw, _) = tx, tw
        kw = dict(kwargs, preferred_element_type=jnp.int32)
        qw8 = jnp.asarray(qw).astype(jnp.int8)
        acc = lax.conv_general_dilated(qx.astype(jnp.int8), qw8, *args[2:], **kw)
        if zx is not None:
            ones = jnp.ones(qx.shape, jnp.int8)
            zx = jnp.asarray(zx, jnp.int32).reshape(())
            acc = acc - zx * lax.conv_general_dilated(ones, qw8, *args[2:], **kw)
        with jax.ensure_compile_time_eval():  # static scales: a constant
            r = np.float32(np.asarray(sx).reshape(())) * np.asarray(sw, np.float32).reshape(-1)
            r = jnp.broadcast_to(jnp.asarray(r), acc.shape)  # output channels last (NHWC)
        exact = acc.astype(jnp.float32) * r
        aux_data.set(exact, _ACC, (acc, r, None, None))
        return exact


class _IntegerClamp(odml_ops.CustomJvpCall):
    """ReLU / ReLU6 after a conv: the clamp bounds of the fused activation."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        t = aux_data.get(args[1], _ACC, None) if isinstance(args[1], jax.Array) else None
        if t is not None and t[2] is None and args[0] in (jax.nn.relu, jax.nn.relu6):
            hi = 6.0 if args[0] is jax.nn.relu6 else None
            aux_data.set(out, _ACC, (t[0], t[1], 0.0, hi))
        return out


class IntegerProvider(qwix.OdmlConversionProvider):
    """qwix's conversion provider (static scales, as the file's), computing the file's integers."""

    def get_interceptors(self):
        interceptors = list(super().get_interceptors())
        bind_id = hash((id(self), 0))
        interceptors[0] = lambda: interception.Interceptor(
            mapping={interception.PRIMITIVE_BIND_KEY: _IntegerPrimitiveBind()}, id=bind_id
        )
        return interceptors

    def _fake_quant(self, array, how, quant_stat_name=None):
        with jax.ensure_compile_time_eval():
            weight_name = aux_data.get(array, odml_ops.AuxDataKey.WEIGHT_NAME, None)
            if weight_name is not None:  # as qwix's conversion provider computes them
                path = flax_util.get_current_module_path()
                weight = self._flatten_params[path + (weight_name,)]
                scale, zp = qarray.compute_scale_zero_point(
                    qarray.calibrate(weight, how), how.qtype
                )
            elif quant_stat_name is not None:
                scale, zp = self._compute_static_scale_zero_point(how, quant_stat_name)
            else:
                raise ValueError("dynamic-range activations have no integer form")
        acc = aux_data.get(array, _ACC, None)
        add = aux_data.get(array, _ADD, None)
        if weight_name is not None:
            q = _weight_values(array, weight, scale)
        elif acc is not None:
            q = _requantize(*acc, scale, zp)
        elif add is not None:
            q = _fixed_point_add(*add, scale, zp)
        else:
            q = qarray.quantize_with_scale_zero_point(array, how.qtype, scale, zp).qvalue
        q = q.astype(jnp.int8)
        zero = jnp.zeros((), jnp.float32) if zp is None else jnp.asarray(zp, jnp.float32)
        dq = (q.astype(jnp.float32) - zero) * jnp.asarray(scale, jnp.float32)
        aux_data.set(dq, _INT, (q, scale, zp))
        return dq


def _weight_values(array, weight, scale):
    """The int8 weights as the converter rounds them: ``round(w / s)`` of the exact quotient
    (float64; a float32 quotient lands on a tie and rounds the other way on about 1 weight in
    70,000, which the test model's file showed). ``array`` when it is a constant, else the
    parameter it was traced from."""
    w = np.asarray(array) if _concrete(array) else np.asarray(weight).reshape(array.shape)
    q = np.round(w.astype(np.float64) / np.asarray(scale, np.float64))
    return jnp.asarray(np.clip(q, -127, 127).astype(np.int8))


def register_integer_ops(provider):
    register_ops(provider)
    conv = provider._ops["jax.lax.conv_general_dilated"]
    provider._ops["jax.lax.conv_general_dilated"] = _with_class(conv, _IntegerConv)
    provider._ops["jax.custom_jvp.__call__"] = _IntegerClamp
    return provider


def _with_class(partial, cls):
    return functools.partial(cls, *partial.args, **partial.keywords)


def integer_model(model, variables, quant_stats, scheme: str = "asymmetric"):
    """The QAT ``model`` with ``variables``' weights and ``quant_stats``' ranges in the int8
    file's arithmetic (same ``apply`` arguments; inference only)."""
    v = _as_jax({k: variables[k] for k in ("params", "batch_stats")})
    provider = IntegerProvider(
        rules(scheme=scheme), v["params"], _as_jax(quant_stats), **provider_options(scheme)
    )
    return qwix.quantize_model(as_convolutions(model), register_integer_ops(provider))
