"""qwix QAT prototype: a fake-quantized tiny MobileDet converts to a fully int8 TFLite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.export import qat_convert
from mobiledet_jax.models import build_model, preprocess, qat, random_weights
from mobiledet_jax.tflite import flatbuffer, runtime

SIZE = (64, 64)


@pytest.fixture(scope="module")
def setup():
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, 3
    model = build_model(mc)
    variables = random_weights.random_variables(model, SIZE, seed=6)
    pixels = np.random.default_rng(0).integers(0, 256, (2, *SIZE, 3)).astype(np.uint8)
    return model, variables, pixels


@pytest.mark.slow
def test_qat_model_converts_to_full_int8(setup):
    model, variables, pixels = setup
    qmodel = qat.qat_model(model)
    images = preprocess(jnp.asarray(pixels))
    quant_stats = qat.calibrate(qmodel, variables, images)
    v = jax.tree.map(jnp.asarray, {k: variables[k] for k in ("params", "batch_stats")})
    # (a training step through qmodel works too, but takes minutes op by op on 2 CPUs: the
    # training loop will exercise it)
    tflite = qat_convert.convert(model, variables, quant_stats, SIZE)
    ops = flatbuffer.op_counts(tflite)
    assert ops["CONV_2D"] + ops["DEPTHWISE_CONV_2D"] == 93
    assert set(ops) <= {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE",
                        "QUANTIZE", "DEQUANTIZE"}  # fmt: skip
    (inp,), outs = flatbuffer.io_tensors(tflite)
    assert inp.dtype == "UINT8" and [o.dtype for o in outs] == ["UINT8", "UINT8"]
    assert [o.name for o in outs] == ["box_encodings", "class_logits"]
    # the int8 file computes what the fake-quant JAX model computes (uint8 input: (p - 128) * 2/255)
    m = runtime.TFLiteModel(tflite)
    got = m.invoke(pixels[:1])
    x = (jnp.asarray(pixels[:1], jnp.float32) - 128.0) * (2.0 / 255.0)
    fake_quant = jax.jit(  # under jit: qwix's op-by-op interception compiles once
        lambda x: qmodel.apply(
            {**v, "quant_stats": quant_stats}, x, train=False, mutable=["quant_stats"]
        )[0]
    )
    ref = fake_quant(x)
    for name in ("box_encodings", "class_logits"):
        step = float(flatbuffer.quantization(tflite, name)[0][0])
        diff = np.abs(got[name] - np.asarray(ref[name]))
        # the fake-quant model is not yet exactly the converted graph: up to ~6.3 output steps
        # apart on this random model (host-dependent), one step on average
        assert diff.max() < 8 * step and diff.mean() < step, (name, diff.max() / step)


def test_unquantized_layers_are_an_error(setup):
    model, variables, pixels = setup
    with pytest.raises(qat.QatError, match=r"36 conv layer\(s\) not quantized: \['head/"):
        qat.qat_model(model, module_path="backbone/.*")  # the 12 neck and 24 head convs left out
    assert len(qat.conv_paths(model)) == 93
    with pytest.raises(qat.QatError, match="no quant_stats"):
        qat_convert.convert(model, variables, {}, SIZE)


def test_check_int8_flags_float_ops(setup):
    model, variables, _ = setup
    from mobiledet_jax.export import convert

    with pytest.raises(qat.QatError, match=r"op\(s\) left in float"):
        qat_convert.check_int8(convert.convert(model, variables, SIZE, "float32"))


@pytest.mark.slow
def test_symmetric_scheme_has_zero_points_0_and_per_tensor_weights(setup):
    """config.model.int8_scheme="symmetric": post-training ranges through qwix (abs-max), the
    file passes the DSP preflight's symmetric rule; TFLite's own scheme does not."""
    from mobiledet_jax.export import convert, delegate_rules, exporter

    model, variables, pixels = setup
    stats = exporter.symmetric_ptq_stats(model, variables, list(pixels))
    folded = qat.fold_batch_norms(model, variables)
    tflite = qat_convert.convert(model, folded, stats, SIZE, scheme="symmetric")
    qat_convert.check_int8(tflite)
    for op in flatbuffer.list_ops(tflite):
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert op.inputs[1].num_scales == 1, op.inputs[1].name
        for t in (*op.inputs, *op.outputs):
            if t is not None and t.dtype == "INT8" and not t.is_constant:
                assert t.zero_points == (0,), (op.name, t.name, t.zero_points)
    result = delegate_rules.check(tflite, "dsp", require_symmetric=True)
    assert result.ok, result.table()
    # the scores head: LOGISTIC's fixed output quantization (zero point -128) is exempt, also
    # where the uint8 output carries it
    scores = qat_convert.convert(model, folded, stats, SIZE, head="scores", scheme="symmetric")
    assert flatbuffer.op_counts(scores)["LOGISTIC"] == 1
    assert delegate_rules.check(scores, "dsp", require_symmetric=True).ok
    # the same model in TFLite's scheme (asymmetric activations, per-channel weights)
    ptq = convert.convert(model, variables, SIZE, "int8", representative_images=list(pixels))
    strict = delegate_rules.check(ptq, "dsp", require_symmetric=True)
    assert delegate_rules.check(ptq, "dsp").ok and not strict.ok
    reasons = {op.reason for op in strict.failing}
    assert "per-channel weights, not per-tensor" in reasons
    # the fake-quant model in the symmetric scheme computes what the file computes
    qmodel = qat.qat_model(model, scheme="symmetric")
    v = {k: folded[k] for k in ("params", "batch_stats")}
    x = (jnp.asarray(pixels[:1], jnp.float32) - 128.0) * (2.0 / 255.0)
    ref = jax.jit(lambda x: qmodel.apply({**v, "quant_stats": stats}, x, train=False))(x)
    got = runtime.TFLiteModel(tflite).invoke(pixels[:1])
    for name in ("box_encodings", "class_logits"):
        step = float(flatbuffer.quantization(tflite, name)[0][0])
        assert np.abs(got[name] - np.asarray(ref[name])).mean() < step, name
    with pytest.raises(ValueError, match="int8_scheme"):
        qat.qat_model(model, scheme="affine")


def test_fold_batch_norms_keeps_the_function(setup):
    model, variables, pixels = setup
    folded = qat.fold_batch_norms(model, variables)
    eps = qat.batch_norm_epsilons(model)
    assert len(eps) == 81 and set(eps.values()) == {0.01, 0.001}  # backbone, neck and head
    bn = folded["params"]["backbone"]["Conv"]["BatchNorm"]
    assert np.all(np.asarray(bn["scale"]) == 1.0)
    var = np.asarray(folded["batch_stats"]["backbone"]["Conv"]["BatchNorm"]["var"])
    assert np.all(np.float32(var + np.float32(0.01)) == 1.0)  # rsqrt(var + eps) is exactly 1
    x = preprocess(jnp.asarray(pixels))
    a, b = (model.apply(v, x, train=False) for v in (variables, folded))
    for name in ("box_encodings", "class_logits"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), atol=2e-5)


@pytest.mark.slow
def test_snapped_biases_are_the_files_biases(setup):
    """convert_snapped: the second file's int32 biases are exactly the snapped variables' biases,
    which moved by at most half a bias step from the trained ones."""
    model, variables, pixels = setup
    folded = qat.fold_batch_norms(model, variables)
    qmodel = qat.qat_model(model)
    stats = qat.calibrate(qmodel, folded, preprocess(jnp.asarray(pixels)))
    tflite, snapped = qat_convert.convert_snapped(model, {**folded, "quant_stats": stats}, stats,
                                                  SIZE)  # fmt: skip
    model_t = flatbuffer.read(tflite)
    sg = model_t.subgraphs[0]
    checked = 0
    for op in flatbuffer.list_ops(tflite):
        if op.name != "CONV_2D" or "backbone/Conv/" not in op.inputs[1].name + "/":
            continue
        bias_t = sg.tensors[op.inputs[2].index]
        q = np.frombuffer(bytes(model_t.buffers[bias_t.buffer].data), np.int32)
        file_bias = q * np.asarray(bias_t.quantization.scale, np.float64)
        want = np.asarray(snapped["params"]["backbone"]["Conv"]["BatchNorm"]["bias"], np.float64)
        before = np.asarray(folded["params"]["backbone"]["Conv"]["BatchNorm"]["bias"], np.float64)
        step = np.asarray(bias_t.quantization.scale, np.float64)
        np.testing.assert_allclose(file_bias, want, rtol=1e-6, atol=1e-9)
        assert np.all(np.abs(want - before) <= 0.5 * step * (1 + 1e-5))
        checked += 1
    assert checked == 1
