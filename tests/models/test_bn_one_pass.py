"""``layers.OnePassBatchNorm`` (``config.model.bn_one_pass_min_pixels``): the one-pass, shifted
train-mode BatchNorm statistics give the two-pass model's outputs, statistics and gradients within
float32 rounding, and the very same inference outputs.

It exists for the TPU (XLA fuses the one-pass statistics into the convolution that writes the
input; ``benchmarks/aot_table.py`` measures the bytes); the reference (TF1) path is the two-pass
default, untouched."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobiledet_jax.config import base_config
from mobiledet_jax.models import build_model
from mobiledet_jax.models.layers import ConvBN, NormConfig

ONE_PASS = NormConfig(momentum=0.99, epsilon=0.01, one_pass_min_pixels=64)
TWO_PASS = NormConfig(momentum=0.99, epsilon=0.01)


def test_conv_bn_train_and_eval_match_two_pass():
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 8)) * 2.0 + 3.0  # mean 3, spread 2
    two, one = ConvBN(16, 3, norm=TWO_PASS), ConvBN(16, 3, norm=ONE_PASS)
    v = two.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(v) == jax.tree.structure(one.init(jax.random.key(0), x, train=False))
    # running statistics away from the batch's, as after some training
    v["batch_stats"]["BatchNorm"]["mean"] = jnp.linspace(-1.0, 4.0, 16)
    v["batch_stats"]["BatchNorm"]["var"] = jnp.linspace(0.5, 3.0, 16)

    def loss(params, m):
        y, upd = m.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(y * jnp.cos(y)), (y, upd)

    outs = {}
    for name, m in (("two", two), ("one", one)):
        (value, (y, upd)), g = jax.value_and_grad(loss, has_aux=True)(v["params"], m)
        outs[name] = (value, y, upd, g)
    (l2, y2, u2, g2), (l1, y1, u1, g1) = outs["two"], outs["one"]
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    # inference is the same computation, bit for bit
    np.testing.assert_array_equal(
        one.apply(v, x, train=False), two.apply(v, x, train=False)
    )  # fmt: skip


def test_small_maps_keep_two_pass():
    """Below ``one_pass_min_pixels`` (e.g. the 1x1 SSD maps, where a channel's mean can dwarf its
    spread) the layer is the two-pass ``nn.BatchNorm``: identical train-mode outputs."""
    rng = np.random.default_rng(0)
    z = jnp.asarray((300.0 + 0.2 * rng.standard_normal((8, 1, 1, 2))).astype(np.float32))
    v = ConvBN(2, 1, norm=TWO_PASS).init(jax.random.key(0), z, train=False)
    y2, _ = ConvBN(2, 1, norm=TWO_PASS).apply(v, z, train=True, mutable=["batch_stats"])
    y1, _ = ConvBN(2, 1, norm=ONE_PASS).apply(v, z, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(y1, y2)


def test_whole_model_float32_outputs_within_tolerance():
    """MobileDet-EdgeTPU (width 0.25, 128x128): one pass on maps of 32x32 and more (the two
    largest stages) against the reference two-pass model, same variables, train mode."""
    config = base_config("mobiledet_edgetpu")
    config.model.num_classes = 4
    config.model.width_multiplier = 0.25
    config.model.image_size = 128
    ref = build_model(config.model)
    one_pass = ml_collections.ConfigDict(config.model.to_dict())
    one_pass.bn_one_pass_min_pixels = 32 * 32
    fast = build_model(one_pass)
    images = jax.random.uniform(jax.random.key(2), (2, 128, 128, 3), minval=-1.0, maxval=1.0)
    v = ref.init(jax.random.key(0), images, train=False)
    out_ref, stats_ref = ref.apply(v, images, train=True, mutable=["batch_stats"])
    out, stats = fast.apply(v, images, train=True, mutable=["batch_stats"])
    for key in ("box_encodings", "class_logits"):
        scale = float(jnp.abs(out_ref[key]).max())
        np.testing.assert_allclose(out[key], out_ref[key], rtol=1e-4, atol=1e-4 * scale)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in ("box_encodings", "class_logits"):  # inference: identical
        np.testing.assert_array_equal(
            fast.apply(v, images, train=False)[key], ref.apply(v, images, train=False)[key]
        )
