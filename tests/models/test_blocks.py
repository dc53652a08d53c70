"""Blocks: shapes and parameter counts by hand, TF "SAME" padding against TensorFlow, round8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobiledet_jax.models.blocks import InvertedBottleneck, Tucker
from mobiledet_jax.models.layers import ConvBN, SqueezeExcite, conv2d, round8


def _init(module, x, **kw):
    variables = module.init(jax.random.key(0), x, **kw)
    y = module.apply(variables, x, **kw)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
    return variables, y, n


def bn(c):  # gamma, beta, moving mean, moving variance
    return 4 * c


def test_round8():
    assert [round8(x) for x in (1, 4, 11.9, 12, 19.9, 20, 27.9, 28, 36, 144)] == [
        8, 8, 8, 16, 16, 24, 24, 32, 40, 144,
    ]  # fmt: skip


def test_ibn_shapes_and_params():
    x = jnp.ones((2, 33, 33, 16))
    m = InvertedBottleneck("ibn", out=24, inner=64, kernel=3, stride=2, residual=False,
                           activation="relu6")  # fmt: skip
    variables, (y, expansion), n = _init(m, x, train=False)
    assert y.shape == (2, 17, 17, 24)
    assert expansion.shape == (2, 33, 33, 64)
    assert n == (16 * 64 + bn(64)) + (3 * 3 * 64 + bn(64)) + (64 * 24 + bn(24))
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    assert flat["SeparableConv2d/kernel"].shape == (3, 3, 1, 64)
    assert set(k.split("/")[0] for k in flat) == {"Conv", "SeparableConv2d", "Conv_1"}


def test_ibn_with_se_and_residual():
    x = jax.random.normal(jax.random.key(1), (1, 10, 10, 32))
    m = InvertedBottleneck("ibn", out=32, inner=128, kernel=5, stride=1, residual=True,
                           activation="hard_swish", se_hidden=32)  # fmt: skip
    variables, (y, _), n = _init(m, x, train=False)
    se = (128 * 32 + 32) + (32 * 128 + 128)
    assert n == (32 * 128 + bn(128)) + (25 * 128 + bn(128)) + se + (128 * 32 + bn(32))
    # residual: zeroing the projection's BN gamma and beta leaves exactly the input
    params = jax.tree.map(lambda a: a, variables["params"])
    params["Conv_1"]["BatchNorm"]["scale"] = jnp.zeros(32)
    params["Conv_1"]["BatchNorm"]["bias"] = jnp.zeros(32)
    y0, _ = m.apply({**variables, "params": params}, x, train=False)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(x))


def test_ibn_noexp_and_fused():
    x = jnp.ones((1, 20, 20, 16))
    m = InvertedBottleneck("ibn_noexp", out=8, inner=0, kernel=3, stride=1, residual=False,
                           activation="hard_swish", se_hidden=8)  # fmt: skip
    _, (y, _), n = _init(m, x, train=False)
    assert y.shape == (1, 20, 20, 8)
    assert n == (9 * 16 + bn(16)) + (16 * 8 + 8 + 8 * 16 + 16) + (16 * 8 + bn(8))
    m = InvertedBottleneck("fused", out=40, inner=128, kernel=5, stride=2, residual=False,
                           activation="relu6")  # fmt: skip
    _, (y, _), n = _init(m, x, train=False)
    assert y.shape == (1, 10, 10, 40)
    assert n == (25 * 16 * 128 + bn(128)) + (128 * 40 + bn(40))


def test_tucker():
    x = jnp.ones((1, 80, 80, 32))
    m = Tucker(out=32, rank_in=8, rank_out=24, kernel=3, stride=1, residual=True,
               activation="relu6")  # fmt: skip
    _, (y, _), n = _init(m, x, train=False)
    assert y.shape == x.shape
    assert n == (32 * 8 + bn(8)) + (9 * 8 * 24 + bn(24)) + (24 * 32 + bn(32))


def test_residual_shape_mismatch_is_an_error():
    m = Tucker(out=16, rank_in=8, rank_out=8, kernel=3, stride=1, residual=True, activation="relu6")
    with pytest.raises(ValueError, match="residual"):
        m.init(jax.random.key(0), jnp.ones((1, 8, 8, 32)), train=False)


def test_squeeze_excite_is_a_gate():
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 16))
    m = SqueezeExcite(8, activation="hard_swish")
    variables = m.init(jax.random.key(0), x)
    y = m.apply(variables, x)
    p = variables["params"]
    pooled = np.asarray(x).mean(axis=(1, 2))
    h = pooled @ np.asarray(p["Conv"]["kernel"][0, 0]) + np.asarray(p["Conv"]["bias"])
    h = h * np.clip(h + 3, 0, 6) / 6
    g = h @ np.asarray(p["Conv_1"]["kernel"][0, 0]) + np.asarray(p["Conv_1"]["bias"])
    g = 1 / (1 + np.exp(-g))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) * g[:, None, None, :], rtol=1e-5,
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("size", [7, 8, 15, 16, 33])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2), (5, 2), (5, 1)])
def test_same_padding_matches_tensorflow(size, kernel, stride):
    import tensorflow as tf

    rng = np.random.default_rng(size * 31 + kernel * 7 + stride)
    x = rng.normal(size=(2, size, size + 1, 6)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 6, 5)).astype(np.float32)
    ref = tf.nn.conv2d(x, w, strides=stride, padding="SAME").numpy()
    ours = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(w), stride))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    dw = rng.normal(size=(kernel, kernel, 6, 1)).astype(np.float32)  # TF depthwise layout
    ref = tf.nn.depthwise_conv2d(x, dw, strides=[1, stride, stride, 1], padding="SAME").numpy()
    ours = np.asarray(conv2d(jnp.asarray(x), jnp.asarray(np.swapaxes(dw, 2, 3)), stride, groups=6))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_inference_formula_and_eps():
    x = jax.random.normal(jax.random.key(3), (1, 4, 4, 3))
    m = ConvBN(2, 1, activation="linear")
    v = m.init(jax.random.key(0), x, train=False)
    v = jax.tree.map(lambda a: a, v)
    v["batch_stats"]["BatchNorm"]["mean"] = jnp.array([0.5, -0.2])
    v["batch_stats"]["BatchNorm"]["var"] = jnp.array([0.03, 2.0])
    v["params"]["BatchNorm"]["scale"] = jnp.array([1.5, 0.7])
    v["params"]["BatchNorm"]["bias"] = jnp.array([0.1, -0.3])
    y = np.asarray(m.apply(v, x, train=False))
    z = np.asarray(x) @ np.asarray(v["params"]["kernel"][0, 0])
    ref = (z - [0.5, -0.2]) * np.array([1.5, 0.7]) / np.sqrt(np.array([0.03, 2.0]) + 0.01) + [
        0.1, -0.3,
    ]  # fmt: skip
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_batchnorm_training_statistics_are_stable_for_a_large_mean():
    """Train-mode BN normalizes with the batch variance computed in two passes (as TF's fused batch
    norm does). The one-pass E[x^2] - E[x]^2 loses it to float32 cancellation when a channel's mean
    dwarfs its spread: at init the deepest (1x1) SSD maps look like this, and the one-pass form put
    a 1% error into the gradient norm, different on 1 and 8 devices (tests/training/test_train_sharding.py)."""
    rng = np.random.default_rng(0)
    z = (300.0 + 0.2 * rng.standard_normal((8, 1, 1, 2))).astype(np.float32)  # one pixel per image
    m = ConvBN(2, 1, activation="linear")
    v = m.init(jax.random.key(0), jnp.asarray(z), train=False)
    v = {**v, "params": {**v["params"], "kernel": jnp.eye(2).reshape(1, 1, 2, 2)}}
    y, updates = m.apply(v, jnp.asarray(z), train=True, mutable=["batch_stats"])
    z64 = z.astype(np.float64)
    var = z64.var(axis=(0, 1, 2))  # float64 oracle
    ref = (z64 - z64.mean(axis=(0, 1, 2))) / np.sqrt(var + 0.01)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-3, atol=1e-3)
    # the running variance moves towards the batch variance (momentum 0.99, from 1)
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["BatchNorm"]["var"]), 0.99 + 0.01 * var, rtol=1e-6
    )
