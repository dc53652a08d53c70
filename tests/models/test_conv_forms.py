"""Convs compute the same numbers in every form (``layers.CONV_FORMS``), forward and backward, and
the backend picks the form: on CPU, shifted multiply-adds (depthwise) and a matmul over shifted
views (regular convs); the convolution for TPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import config_checks
from mobiledet_jax.models import as_convolutions, blocks, build_model, layers
from mobiledet_jax.models.random_weights import random_variables


class _Wrapper(nn.Module):
    detector: nn.Module

    def __call__(self, x):
        return self.detector(x)


def _numpy_conv(x, kernel, stride, depthwise=False):
    """Independent oracle: TF "SAME" padding, then the sum over each window, in float64
    (``kernel [k, k, 1, C]`` per channel when ``depthwise``, else ``[k, k, in, out]``)."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    oh, (pt, pb) = layers.same_pads(h, k, stride)
    ow, (pl, pr) = layers.same_pads(w, k, stride)
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((n, oh, ow, c if depthwise else kernel.shape[-1]))
    for y in range(oh):
        for z in range(ow):
            window = xp[:, y * stride : y * stride + k, z * stride : z * stride + k, :]
            if depthwise:
                out[:, y, z, :] = np.einsum("nijc,ijc->nc", window, kernel[:, :, 0, :])
            else:
                out[:, y, z, :] = np.einsum("nijc,ijco->no", window, kernel)
    return out


def _check_forms(conv, x, kernel, want, atol):
    """``conv(x, kernel, form)`` equals ``want`` in every form; gradients of x and the kernel in
    the shifted and automatic forms equal the convolution form's."""
    grads = {}
    for form in layers.CONV_FORMS:
        f = jax.jit(lambda x, kern, form=form: conv(x, kern, form))
        np.testing.assert_allclose(f(x, kernel), want, rtol=1e-5, atol=atol)
        loss = lambda x, kern, f=f: jnp.sum(jnp.sin(f(x, kern)))
        grads[form] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    for form in ("shifted", "auto"):
        for got, ref in zip(grads[form], grads["conv"], strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=atol)


def test_same_pads_match_tensorflow():
    # TF: out = ceil(n / s); pad_total = max((out - 1) * s + k - n, 0); before = total // 2
    assert layers.same_pads(8, 3, 2) == (4, (0, 1))  # even input, stride 2: pad after only
    assert layers.same_pads(9, 3, 2) == (5, (1, 1))
    assert layers.same_pads(7, 5, 1) == (7, (2, 2))
    assert layers.same_pads(1, 3, 2) == (1, (1, 1))


@pytest.mark.parametrize(
    "shape,k,stride",
    [((2, 8, 8, 4), 3, 1), ((2, 8, 8, 4), 3, 2), ((1, 9, 7, 3), 3, 2), ((1, 10, 10, 6), 5, 2)],
)
def test_forms_equal_forward_and_gradients(shape, k, stride):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(k, k, 1, shape[-1])).astype(np.float32)
    want = _numpy_conv(x, kernel, stride, depthwise=True)
    _check_forms(
        lambda x, kern, form: layers.depthwise_conv(x, kern, stride, form), x, kernel, want, 1e-5
    )


@pytest.mark.parametrize(
    "shape,k,stride,cout",
    [
        ((2, 6, 6, 5), 1, 1, 7),
        ((2, 8, 8, 4), 1, 2, 3),
        ((2, 8, 8, 4), 3, 1, 6),
        ((1, 9, 7, 3), 3, 2, 8),
        ((1, 10, 10, 6), 5, 2, 4),
    ],
)
def test_regular_forms_equal_forward_and_gradients(shape, k, stride, cout):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(k, k, shape[-1], cout)).astype(np.float32)
    want = _numpy_conv(x, kernel, stride)
    _check_forms(
        lambda x, kern, form: layers.regular_conv(x, kern, stride, form), x, kernel, want, 1e-4
    )


def test_regular_form_keeps_bfloat16():
    x = jnp.ones((1, 4, 4, 3), jnp.bfloat16)
    kernel = jnp.ones((3, 3, 3, 2), jnp.bfloat16)
    y = layers.regular_conv(x, kernel, 1, "shifted")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y[0, 1, 1], np.float32), [27.0, 27.0])  # 3*3*3 ones
    np.testing.assert_array_equal(np.asarray(y[0, 0, 0], np.float32), [12.0, 12.0])  # corner 2*2*3


def test_backend_chooses_the_form():
    x = jnp.zeros((1, 8, 8, 4))
    kernel = jnp.zeros((3, 3, 1, 4))
    traced = jax.jit(lambda x, k: layers.depthwise_conv(x, k, 1)).trace(x, kernel)
    assert "convolution" not in traced.lower(lowering_platforms=("cpu",)).as_text()
    tpu = traced.lower(lowering_platforms=("tpu",)).as_text()
    assert "convolution" in tpu and "feature_group_count = 4" in tpu
    with pytest.raises(ValueError, match="conv form must be one of"):
        layers.depthwise_conv(x, kernel, 1, "fast")
    regular = jnp.zeros((3, 3, 4, 5))
    traced = jax.jit(lambda x, k: layers.regular_conv(x, k, 2)).trace(x, regular)
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert "convolution" not in cpu and "dot_general" in cpu
    assert "convolution" in traced.lower(lowering_platforms=("tpu",)).as_text()
    with pytest.raises(ValueError, match="conv form must be one of"):
        layers.regular_conv(x, regular, 1, "fast")


def test_whole_model_equal_in_every_form():
    """The detector's outputs in the backend's form equal the convolution form's (the form the
    TF1 reference tests and the export use)."""
    cfg = ml_collections.ConfigDict(config_lib.base_config().model.to_dict())
    cfg.name, cfg.width_multiplier, cfg.num_classes = "mobiledet_edgetpu", 0.35, 3
    model = build_model(cfg)
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 3)), jnp.float32)
    variables = random_variables(model, images.shape[1:3])
    pinned = as_convolutions(model)
    assert model.conv_form == "auto" and pinned.conv_form == "conv"
    assert as_convolutions(pinned) is pinned
    wrapped = as_convolutions(_Wrapper(model))  # a detector held by another module is pinned too
    assert wrapped.detector.conv_form == "conv"
    got = jax.jit(lambda v, x: model.apply(v, x)["class_logits"])(variables, images)
    want = jax.jit(lambda v, x: pinned.apply(v, x)["class_logits"])(variables, images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_block_gradients_equal_in_every_form():
    """Training gradients of an IBN block with squeeze-excite (expand, depthwise stride 2, SE,
    project, batch statistics), a Fused block and a Tucker block."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 10, 10, 8)), jnp.float32)
    for block in (
        blocks.InvertedBottleneck("ibn", 8, 24, 3, 2, False, "relu6", se_hidden=8),
        blocks.InvertedBottleneck("fused", 8, 16, 3, 1, True, "relu6"),
        blocks.Tucker(8, 4, 6, 3, 2, False, "relu6"),
    ):
        _check_block_gradients(block, x)


def _check_block_gradients(block, x):
    variables = block.init(jax.random.key(0), x, train=True)

    def grads(form):
        b = block.clone(conv_form=form)

        def loss(params, x):
            (y, _), _ = b.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.tanh(y))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)

    ref = grads("conv")
    for form in ("shifted", "auto"):
        for got, want in zip(jax.tree.leaves(grads(form)), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_config_names_the_form():
    """``config.model.conv_form`` reaches every conv of the built detector; the checks' choices are
    the layers' forms."""
    assert config_checks.CONV_FORMS == layers.CONV_FORMS
    cfg = ml_collections.ConfigDict(config_lib.base_config().model.to_dict())
    cfg.width_multiplier, cfg.num_classes = 0.35, 3
    assert cfg.conv_form == "auto"
    images = jnp.zeros((1, 64, 64, 3), jnp.float32)
    convolutions = {}
    for form in layers.CONV_FORMS:
        cfg.conv_form = form
        model = build_model(cfg)
        variables = random_variables(model, images.shape[1:3])
        lowered = jax.jit(model.apply).trace(variables, images).lower(lowering_platforms=("cpu",))
        convolutions[form] = lowered.as_text().count("stablehlo.convolution")
    assert convolutions["auto"] == convolutions["shifted"] == 0 < convolutions["conv"]
