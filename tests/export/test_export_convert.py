"""JAX -> TFLite conversion: fused graphs, parity with JAX, float16 and int8 post-training
quantization (tiny MobileDet-EdgeTPU at 128x128; fidelity at full size is test_export_tf1)."""

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.export import convert, exporter
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.tflite import flatbuffer

SIZE = (128, 128)


@pytest.fixture(scope="module")
def tiny():
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, 3
    model = build_model(mc)
    return model, random_weights.random_variables(model, SIZE, seed=1)


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, *SIZE, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def exports(tiny, pixels):
    model, variables = tiny
    rep = list(np.random.default_rng(1).integers(0, 256, (16, *SIZE, 3)).astype(np.uint8))
    return {
        fmt: convert.convert(model, variables, SIZE, fmt, representative_images=rep)
        for fmt in convert.FORMATS
    }


def test_float32_graph_is_fused_and_named(tiny, exports):
    model, variables = tiny
    tfl = exports["float32"]
    summary = convert.check_fused(tfl, convert.count_convs(variables))
    ops = summary["ops"]
    # one op per conv kernel, BN folded: no stray MUL/ADD beyond the residuals and normalization
    assert ops["CONV_2D"] + ops["DEPTHWISE_CONV_2D"] == convert.count_convs(variables) == 93
    # the in-graph normalization x * float32(2/255) + float32(-1) (pixels.normalize): one MUL and
    # one ADD; the other 15 ADDs are the residual adds of the EdgeTPU table
    assert ops["MUL"] == 1 and "SUB" not in ops
    assert ops["ADD"] == 15 + 1
    assert not {"TRANSPOSE", "PAD", "BATCH_MATMUL"} & set(ops)
    # every conv that is followed by ReLU6 in the model carries it fused
    fused = summary["conv_activations"]
    assert fused["CONV_2D/RELU6"] + fused["DEPTHWISE_CONV_2D/RELU6"] == 59
    (inp,), outs = flatbuffer.io_tensors(tfl)
    assert (inp.name, inp.dtype, inp.shape) == ("images", "UINT8", (1, *SIZE, 3))
    assert [o.name for o in outs] == ["box_encodings", "class_logits"]
    assert [o.shape for o in outs] == [(1, 330, 4), (1, 330, 4)]


def test_float32_parity(tiny, exports, pixels):
    model, variables = tiny
    stats = exporter.parity(exports["float32"], model, variables, list(pixels), "logits")
    for s in stats.values():
        assert s["relative"] < 1e-4, stats  # measured 2e-6


def test_float16_stores_half_weights(tiny, exports, pixels):
    model, variables = tiny
    ops = flatbuffer.op_counts(exports["float16"])
    assert ops["DEQUANTIZE"] >= 93  # float16 weights dequantized at load
    assert len(exports["float16"]) < 0.7 * len(exports["float32"])  # 0.62 here
    stats = exporter.parity(exports["float16"], model, variables, list(pixels), "logits")
    for s in stats.values():
        assert s["relative"] < 1e-2, stats  # measured 2e-3


def test_int8_is_fully_integer(tiny, exports):
    _, variables = tiny
    tfl = exports["int8"]
    convert.check_fused(tfl, convert.count_convs(variables))
    for op in flatbuffer.list_ops(tfl):
        for t in (*op.inputs, *op.outputs):
            if t is None or (t.dtype == "INT32" and t.is_constant):
                continue  # biases
            assert t.dtype in ("INT8", "UINT8"), (op.name, t.name, t.dtype)
            assert t.num_scales >= 1
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weights = op.inputs[1]
            assert weights.num_scales == weights.shape[0 if op.name == "CONV_2D" else 3]
    scale, zero = flatbuffer.quantization(tfl, "images")
    assert (float(scale[0]), int(zero[0])) == (1.0, 0)  # raw pixels go in unchanged


def test_int8_error_is_a_few_quantization_steps(tiny, exports, pixels):
    model, variables = tiny
    stats = exporter.parity(exports["int8"], model, variables, list(pixels), "logits")
    for name, s in stats.items():
        # measured on this random model and noise images: at most 14 output steps, 1.4 on
        # average (EXPORT_NOTES' sigmoid toy net: 5 and < 1)
        assert s["max_abs_diff_steps"] < 30, (name, s)
        assert s["mean_abs_diff"] < 3 * s["output_step"], (name, s)


def test_check_fused_rejects_unfolded_or_foreign_graphs(exports):
    with pytest.raises(convert.ConversionError, match="conv ops"):
        convert.check_fused(exports["float32"], expected_convs=94)
    model = flatbuffer.read(exports["float32"])
    from ai_edge_litert import schema_py_generated as schema

    code = next(c for c in model.operatorCodes if c.builtinCode == schema.BuiltinOperator.MUL)
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.TRANSPOSE
    with pytest.raises(convert.ConversionError, match="TRANSPOSE"):
        convert.check_fused(flatbuffer.write(model))


def test_non_square_input(tiny):
    model, variables = tiny
    size = (96, 128)
    tfl = convert.convert(model, variables, size, "float32")
    (inp,), (boxes, logits) = flatbuffer.io_tensors(tfl)
    from mobiledet_jax.detection import anchors

    assert inp.shape == (1, *size, 3) and boxes.shape == (1, anchors.num_anchors(*size), 4)
    px = list(np.random.default_rng(2).integers(0, 256, (2, *size, 3)).astype(np.uint8))
    for s in exporter.parity(tfl, model, variables, px, "logits").values():
        assert s["relative"] < 1e-4


def test_int8_needs_representative_images(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match="representative"):
        convert.convert(model, variables, SIZE, "int8", representative_images=[])


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_export_traces_the_model_in_float32(dtype):
    """A model trained with "auto" (bfloat16 on a TPU host) or bfloat16 exports a float32 graph."""
    config = config_lib.base_config("mobiledet_edgetpu")
    config.model.compute_dtype = dtype
    config.lock()
    out = exporter.float32_model_config(config.model)
    assert out.compute_dtype == "float32"
    assert config.model.compute_dtype == dtype  # the caller's config is untouched
    assert build_model(out).dtype == np.float32
    config.model.compute_dtype = "float32"
    assert exporter.float32_model_config(config.model) is config.model
