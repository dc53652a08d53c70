"""BatchNorm folded with correction (``models.bn_folding``): the same function as conv + BN.

Without quantization the folded conv with correction must compute exactly what conv + BatchNorm
computes: on batch statistics in training (and the same moving-average update), on the moving
statistics in evaluation, where it is also the conv of ``qat.fold_batch_norms``' variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax.models import bn_folding, qat
from mobiledet_jax.models.layers import ConvBN


def _variables(module, x, zero_gamma=True):
    v = module.init(jax.random.key(0), x, train=False)
    rng = np.random.default_rng(1)
    bn = v["params"]["BatchNorm"]
    c = bn["scale"].shape
    v["params"]["BatchNorm"] = {
        "scale": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
        .at[0]
        .set(0.0 if zero_gamma else 1.0),
        "bias": jnp.asarray(rng.normal(size=c), jnp.float32),
    }
    v["batch_stats"]["BatchNorm"] = {
        "mean": jnp.asarray(rng.normal(size=c), jnp.float32),
        "var": jnp.asarray(rng.uniform(0.2, 2.0, c), jnp.float32),
    }
    return v


@pytest.mark.parametrize(
    "depthwise, kernel, stride", [(False, 1, 1), (False, 3, 2), (True, 3, 1), (True, 5, 2)]
)
def test_corrected_fold_is_conv_plus_batch_norm(depthwise, kernel, stride):
    module = ConvBN(12, kernel, stride, depthwise=depthwise, conv_form="conv")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9, 9, 12)), jnp.float32)
    v = _variables(module, x)

    def apply(v, train, correct):
        if correct:
            with bn_folding.batch_norm_correction():
                return module.apply(v, x, train=train, mutable=["batch_stats"])
        return module.apply(v, x, train=train, mutable=["batch_stats"])

    for train in (True, False):
        ref, ref_stats = apply(v, train, correct=False)
        out, stats = apply(v, train, correct=True)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        for name in ("mean", "var"):  # the moving averages move alike (train) or not at all
            got = stats["batch_stats"]["BatchNorm"][name]
            want = ref_stats["batch_stats"]["BatchNorm"][name]
            np.testing.assert_allclose(got[1:], want[1:], rtol=1e-5, atol=1e-6)
            # gamma = 0 (channel 0): its folded conv is 0, so its statistics stay as they were
            np.testing.assert_allclose(got[0], v["batch_stats"]["BatchNorm"][name][0], rtol=1e-6)
    # evaluation: the folded conv, i.e. the variables qat.fold_batch_norms writes
    folded = qat.fold_batch_norms(module, v)
    ref, _ = module.apply(folded, x, train=False, mutable=["batch_stats"])
    out, _ = apply(v, False, correct=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_same_variables_and_gradients():
    """The corrected form has nn.BatchNorm's variable tree; gradients reach kernel, scale, bias."""
    module = ConvBN(8, 3, 1, conv_form="conv")
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 4)), jnp.float32)
    with bn_folding.batch_norm_correction():
        corrected = module.init(jax.random.key(0), x, train=False)
    plain = module.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(corrected) == jax.tree.structure(plain)
    v = _variables(module, x, zero_gamma=False)

    def loss(params, correct):
        variables = {"params": params, "batch_stats": v["batch_stats"]}
        if correct:
            with bn_folding.batch_norm_correction():
                y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
        else:
            y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    g_ref = jax.grad(loss)(v["params"], False)
    g = jax.grad(loss)(v["params"], True)
    np.testing.assert_allclose(g["kernel"], g_ref["kernel"], rtol=1e-4, atol=1e-5)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(
            g["BatchNorm"][name], g_ref["BatchNorm"][name], rtol=1e-4, atol=1e-5
        )


class _TwoConvs(nn.Module):
    """A regular and a depthwise ConvBN: the two kinds of conv QAT folds."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = ConvBN(8, 3, 2, conv_form="conv", name="regular")(x, train)
        return ConvBN(8, 3, 1, depthwise=True, conv_form="conv", name="depthwise")(x, train)


def _randomized(v):
    rng = np.random.default_rng(3)
    out = jax.tree.map(lambda a: a, v)
    for layer in ("regular", "depthwise"):
        c = v["params"][layer]["BatchNorm"]["scale"].shape
        out["params"][layer]["BatchNorm"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, c))
        out["params"][layer]["BatchNorm"]["bias"] = jnp.asarray(rng.normal(size=c), jnp.float32)
        out["batch_stats"][layer]["BatchNorm"]["mean"] = jnp.asarray(rng.normal(size=c) * 0.1)
        out["batch_stats"][layer]["BatchNorm"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, c))
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), out)


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
def test_qat_sees_the_folded_kernel(scheme):
    """Under qwix, the corrected form fake-quantizes every folded kernel (``calibrate`` checks
    it), keeps the frozen form's ``quant_stats`` tree, and in evaluation computes the frozen
    fake-quant model of ``fold_batch_norms``' variables (per-tensor weight scales, the symmetric
    scheme, tell a folded kernel's grid from the unfolded one's)."""
    model = _TwoConvs()
    images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    v = _randomized(model.init(jax.random.key(0), images, train=False))
    qmodel = qat.qat_model(model, scheme=scheme)
    folded = qat.fold_batch_norms(model, v)
    with bn_folding.batch_norm_correction():
        stats = qat.calibrate(qmodel, v, images)
    assert jax.tree.structure(stats) == jax.tree.structure(qat.calibrate(qmodel, folded, images))

    @jax.jit
    def evaluate(variables):
        return qmodel.apply({**variables, "quant_stats": stats}, images, train=False)

    frozen = evaluate({k: folded[k] for k in ("params", "batch_stats")})
    with bn_folding.batch_norm_correction():
        corrected = jax.jit(evaluate.__wrapped__)({k: v[k] for k in ("params", "batch_stats")})
    diff = np.abs(np.asarray(corrected) - np.asarray(frozen))
    if scheme == "asymmetric":  # per-channel int8 kernels: the same numbers
        np.testing.assert_array_less(diff, 1e-6)
    else:  # per tensor: not bit-equal (a few outputs a step or three apart; cause not pinned down)
        step = float(np.max(np.abs(frozen))) / 127
        assert np.mean(diff < 1e-6) > 0.8 and diff.max() <= 3.01 * step

    # training: batch statistics, the moving averages and the activation ranges move
    with bn_folding.batch_norm_correction():
        out, updates = jax.jit(
            lambda variables: qmodel.apply(
                {**variables, "quant_stats": stats},
                images,
                train=True,
                mutable=["batch_stats", "quant_stats"],
            )
        )({k: v[k] for k in ("params", "batch_stats")})
    assert np.isfinite(out).all()
    # the statistics' moving averages are BN state, not ops qwix quantizes: no new ranges
    assert jax.tree.structure(updates["quant_stats"]) == jax.tree.structure(stats)
    moved = updates["batch_stats"]["regular"]["BatchNorm"]["mean"]
    assert not np.allclose(moved, v["batch_stats"]["regular"]["BatchNorm"]["mean"])
