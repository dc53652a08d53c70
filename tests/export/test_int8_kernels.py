"""int8 rewrites onto XNNPACK's kernels (export/int8_kernels.py): HARD_SWISH as MUL, ADD, MUL is
the numpy formula; a global AVERAGE_POOL_2D as MEAN is the same average; MobileDet-CPU int8 runs as
one XNNPACK partition with the converter's outputs up to the gate's rounding."""

import collections

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.export import convert, exporter, int8_kernels
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.tflite import flatbuffer, runtime

SIZE = (64, 64)


def _interpreter(tflite: bytes, xnnpack: bool = True):
    it = runtime._interpreter(tflite, 1, xnnpack)
    it.allocate_tensors()
    return it


def _int8_file(fn, shape, low, high) -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def rep():
        for _ in range(8):
            yield [rng.uniform(low, high, shape).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _quant(tflite):
    (x_info,), (y_info,) = flatbuffer.io_tensors(tflite)
    out = []
    for info in (x_info, y_info):
        scale, zero = flatbuffer.quantization(tflite, info.name)
        out.append((float(scale[0]), int(zero[0])))
    return out


def test_global_average_pool_as_mean_is_the_same_average():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 10, 12, 16), tf.float32)])
    def fn(x):
        return tf.nn.avg_pool2d(x, (10, 12), 1, "VALID")

    pool = _int8_file(fn, (1, 10, 12, 16), -3, 5)
    assert flatbuffer.op_counts(pool) == {"AVERAGE_POOL_2D": 1}
    mean = int8_kernels.rewrite(pool)
    assert flatbuffer.op_counts(mean) == {"MEAN": 1}
    (sx, zx), (sy, zy) = _quant(pool)
    q_x = np.random.default_rng(1).integers(-128, 128, (1, 10, 12, 16)).astype(np.int8)
    avg = (sx * (q_x.astype(np.float64) - zx)).mean(axis=(1, 2), keepdims=True)
    want = np.clip(np.round(avg / sy) + zy, -128, 127)
    for tflite in (pool, mean):
        for xnnpack in (True, False):
            got = _run(tflite, q_x, xnnpack).astype(int)
            assert got.shape == (1, 1, 1, 16) and np.abs(got - want).max() <= 1
    # a pool that is not global is kept
    assert int8_kernels.rewrite(pool, global_pool="avg_pool") == pool


@pytest.fixture(scope="module")
def one_op():
    """An int8 file that is one HARD_SWISH (int8 in, int8 out), from TFLiteConverter."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 16, 16, 8), tf.float32)])
    def fn(x):
        return x * tf.nn.relu6(x + 3.0) / 6.0

    tflite = _int8_file(fn, (1, 16, 16, 8), -7, 5)
    assert flatbuffer.op_counts(tflite) == {"HARD_SWISH": 1}
    return tflite


def _run(tflite, q_x, xnnpack=True):
    it = _interpreter(tflite, xnnpack)
    it.set_tensor(it.get_input_details()[0]["index"], q_x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_rewritten_op_is_the_numpy_formula(one_op):
    rewritten = int8_kernels.rewrite(one_op)
    assert flatbuffer.op_counts(rewritten) == {"ADD": 1, "MUL": 2}
    x_quant, y_quant = _quant(one_op)
    q_x = np.arange(-128, 128, dtype=np.int8)  # every int8 input value, twice over
    q_x = np.resize(q_x, (1, 16, 16, 8)).astype(np.int8)
    want = int8_kernels.reference(q_x, x_quant, y_quant).astype(int)
    for xnnpack in (True, False):  # XNNPACK and TFLite's built-in int8 kernels
        got = _run(rewritten, q_x, xnnpack).astype(int)
        assert np.abs(got - want).max() <= 1
        # XNNPACK: all equal (measured); the built-in kernels' fixed-point requantization rounds
        # near-ties the other way (4 of the 256 values here)
        assert (got == want).mean() >= (0.99 if xnnpack else 0.97)
    # and the fused op computes the same function up to the gate's rounding (a step of 1/255)
    fused = _run(one_op, q_x).astype(int)
    assert np.abs(fused - want).max() <= 2


def test_op_mode_and_float_files_are_left_alone(one_op):
    assert int8_kernels.rewrite(one_op, "op") == one_op
    with pytest.raises(ValueError, match="int8_hard_swish"):
        int8_kernels.rewrite(one_op, "fused")
    with pytest.raises(ValueError, match="int8_hard_swish"):
        exporter.ExportOptions(int8_hard_swish="fused").resolved_format()
    with pytest.raises(ValueError, match="int8_global_pool"):
        exporter.ExportOptions(int8_global_pool="max").resolved_format()


@pytest.fixture(scope="module")
def cpu_exports():
    mc = config_lib.model_config("mobiledet_cpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, 3
    model = build_model(mc)
    variables = random_weights.random_variables(model, SIZE, seed=3)
    rep = list(np.random.default_rng(1).integers(0, 256, (8, *SIZE, 3)).astype(np.uint8))
    files = {
        "op": convert.convert(model, variables, SIZE, "int8", representative_images=rep,
                              int8_hard_swish="op", int8_global_pool="avg_pool"),
        "mul_add": convert.convert(model, variables, SIZE, "int8", representative_images=rep),
    }  # fmt: skip
    float_file = convert.convert(model, variables, SIZE, "float32")
    return model, variables, files, float_file


@pytest.mark.slow
def test_mobiledet_cpu_int8_runs_as_one_xnnpack_partition(cpu_exports):
    model, variables, files, float_file = cpu_exports
    op, mul_add = flatbuffer.op_counts(files["op"]), flatbuffer.op_counts(files["mul_add"])
    n = op["HARD_SWISH"]
    assert n > 40 and "HARD_SWISH" not in mul_add
    assert mul_add["MUL"] == op["MUL"] + 2 * n and mul_add["ADD"] == op["ADD"] + n
    pools = op["AVERAGE_POOL_2D"]  # one per squeeze-excite block, all global
    assert pools > 10 and "AVERAGE_POOL_2D" not in mul_add and mul_add["MEAN"] == pools
    assert flatbuffer.op_counts(float_file)["HARD_SWISH"] == n  # float files keep the op
    convert.check_fused(files["mul_add"], convert.count_convs(variables))

    def partitions(tflite):
        ops = _interpreter(tflite)._get_ops_details()
        return collections.Counter(o["op_name"] for o in ops)["DELEGATE"]

    # XNNPACK takes the whole rewritten graph; with HARD_SWISH it is cut at each one
    assert partitions(files["mul_add"]) == 1
    assert partitions(files["op"]) > n / 2
    # same outputs as the converter's HARD_SWISH up to the gate's rounding, and as close to JAX
    pixels = list(np.random.default_rng(2).integers(0, 256, (2, *SIZE, 3)).astype(np.uint8))
    stats = {m: exporter.parity(f, model, variables, pixels, "logits") for m, f in files.items()}
    for name in convert.HEADS["logits"]:
        a, b = stats["mul_add"][name], stats["op"][name]
        assert a["mean_abs_diff"] < 1.5 * b["mean_abs_diff"] + 0.5 * b["output_step"], (name, a, b)
    outs = {m: runtime.TFLiteModel(f).invoke(pixels[0][None]) for m, f in files.items()}
    for name in convert.HEADS["logits"]:
        step = stats["op"][name]["output_step"]
        diff = np.abs(outs["mul_add"][name] - outs["op"][name])
        assert diff.mean() < step, (name, diff.mean() / step)
