"""The QAT model in TFLite's integer arithmetic (``models.qat_integer``) equals the int8 file.

Oracle: the LiteRT interpreter with XNNPACK (its default CPU kernels) running the file converted
from the same model; the float fake-quant model is the baseline it improves on. Plus the pieces
by hand: the correctly rounded multiplier, XNNPACK's fixed-point ADD and the requantization.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.export import qat_convert
from mobiledet_jax.models import build_model, preprocess, qat, qat_integer, random_weights
from mobiledet_jax.tflite import flatbuffer, runtime

SIZE = (64, 64)
NAMES = ("box_encodings", "class_logits")


def test_multiplier_is_ieee_division_traced_or_not():
    rng = np.random.default_rng(0)
    r = rng.uniform(1e-6, 1e-2, 50_000).astype(np.float32)
    for scale in (np.float32(0.0230831634), np.float32(0.1234567)):
        want = r / scale  # numpy: IEEE float32 division
        traced = np.asarray(jax.jit(qat_integer._multiplier)(r, scale))
        assert np.array_equal(traced, want)
        assert np.array_equal(np.asarray(qat_integer._multiplier(r, scale)), want)


def test_fixed_point_add_by_hand():
    # s_a / s = 0.5, s_b / s = 0.25: exponent of 0.5 is -1, shift 21, multipliers 2^20 and 2^19
    a, b = jnp.asarray([3, -3, 100]), jnp.asarray([1, 1, 100])
    out = qat_integer._fixed_point_add(a, 0.5, b, 0.25, 1.0, 10)
    # 3 * 0.5 + 0.25 = 1.75 -> 2; -1.5 + 0.25 = -1.25 -> -1 (rounding half up); 75 -> 75
    assert np.asarray(out).tolist() == [12, 9, 85]


def test_requantize_clamps_as_the_fused_relu6():
    acc = jnp.asarray([-100, 0, 9, 11, 10_000], jnp.int32)
    r = jnp.full((5,), 0.25, jnp.float32)  # real values -25, 0, 2.25, 2.75, 2500
    q = qat_integer._requantize(acc, r, 0.0, 6.0, 0.5, -128)
    # multiplier 0.5: 4.5 and 5.5 round half to even (4, 6); ReLU6's top is -128 + 6 / 0.5
    assert np.asarray(q).tolist() == [-128, -128, -124, -122, -116]


@pytest.fixture(scope="module")
def converted():
    mc = config_lib.model_config("mobiledet_gpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, 3
    model = build_model(mc)
    variables = qat.fold_batch_norms(model, random_weights.random_variables(model, SIZE, seed=3))
    pixels = np.random.default_rng(1).integers(0, 256, (4, *SIZE, 3)).astype(np.uint8)
    qmodel = qat.qat_model(model)
    quant_stats = qat.calibrate(qmodel, variables, preprocess(jnp.asarray(pixels)))
    # QAT trains BN's scale on: it leaves the identity, and the export folds it again
    rng = np.random.default_rng(2)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x * rng.uniform(0.9, 1.1, x.shape).astype(np.float32)
            if "BatchNorm" in str(path) and str(path[-1]).endswith("'scale']")
            else x
        ),
        jax.tree.map(np.asarray, variables["params"]),
    )
    variables = qat.fold_batch_norms(model, {**variables, "params": params})
    variables = {**variables, "quant_stats": quant_stats}
    tflite, snapped = qat_convert.convert_snapped(model, variables, quant_stats, SIZE)
    return model, snapped, pixels, tflite


@pytest.mark.slow
def test_integer_model_equals_the_file_value_for_value(converted):
    model, variables, pixels, tflite = converted
    imodel = qat_integer.integer_model(model, variables, variables["quant_stats"])
    qmodel = qat.qat_model(model)
    v = {k: jax.tree.map(jnp.asarray, variables[k]) for k in ("params", "batch_stats")}
    qs = jax.tree.map(jnp.asarray, variables["quant_stats"])
    integer = jax.jit(lambda x: imodel.apply(v, qat.file_input(x), train=False))
    fake = jax.jit(lambda x: qmodel.apply({**v, "quant_stats": qs}, qat.file_input(x), train=False))
    interpreter = runtime.TFLiteModel(tflite)  # XNNPACK
    equal = {n: [] for n in NAMES}
    within = {n: [] for n in NAMES}
    float_within = {n: [] for n in NAMES}
    for p in pixels:
        got = interpreter.invoke(p[None])
        ours, theirs = integer(jnp.asarray(p[None])), fake(jnp.asarray(p[None]))
        for n in NAMES:
            step = float(flatbuffer.quantization(tflite, n)[0][0])
            equal[n].append(np.abs(got[n] - np.asarray(ours[n])) <= 0.01 * step)
            within[n].append(np.abs(got[n] - np.asarray(ours[n])) <= 1.0001 * step)
            float_within[n].append(np.abs(got[n] - np.asarray(theirs[n])) <= 1.0001 * step)
    for n in NAMES:
        print(n, "equal", np.mean(equal[n]), "within one step", np.mean(within[n]),
              "float fake-quant within one step", np.mean(float_within[n]))  # fmt: skip
        assert np.mean(equal[n]) == 1.0, n  # every value, bit for bit
    # the float fake-quant model is not (here: 99.87% of the boxes within one step)
    assert min(np.mean(float_within[n]) for n in NAMES) < 1.0
