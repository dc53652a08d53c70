"""Focal and smooth-L1 losses against plain numpy, the batch normalization and the L2 convention."""

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.detection import losses, target_assigner


def _np_focal(x, z, alpha=0.75, gamma=2.0):
    x = x.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    ce = -(z * np.log(p) + (1 - z) * np.log(1 - p))
    p_t = z * p + (1 - z) * (1 - p)
    return (z * alpha + (1 - z) * (1 - alpha)) * (1 - p_t) ** gamma * ce


def _np_huber(pred, target, delta=1.0):
    err = np.abs(pred.astype(np.float64) - target)
    return np.where(err <= delta, 0.5 * err**2, delta * (err - 0.5 * delta)).sum(-1)


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 4, (64, 91)).astype(np.float32)
    z = (rng.uniform(size=(64, 91)) < 0.1).astype(np.float32)
    np.testing.assert_allclose(
        losses.sigmoid_focal_loss(x, z, 0.75, 2.0), _np_focal(x, z), rtol=1e-5, atol=1e-7
    )
    # Stable for large logits (the naive log(sigmoid) would overflow).
    big = np.array([[-60.0, 60.0]], np.float32)
    out = np.asarray(losses.sigmoid_focal_loss(big, np.array([[1.0, 0.0]], np.float32), 0.75, 2.0))
    np.testing.assert_allclose(out, [[0.75 * 60.0, 0.25 * 60.0]], rtol=1e-6)


def test_smooth_l1_matches_numpy():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(0, 2, (2, 50, 4)), rng.normal(0, 2, (2, 50, 4))
    got = losses.smooth_l1_loss(pred.astype(np.float32), target.astype(np.float32), 1.0)
    np.testing.assert_allclose(got, _np_huber(pred, target), rtol=1e-5, atol=1e-6)


def _targets(rng, b, a, c):
    positive = rng.uniform(size=(b, a)) < 0.05
    positive[1] = False  # an image without matches
    cls = np.zeros((b, a, c + 1), np.float32)
    labels = rng.integers(0, c, (b, a))
    cls[positive, labels[positive] + 1] = 1.0
    reg = np.where(positive[..., None], rng.normal(0, 1, (b, a, 4)), 0).astype(np.float32)
    return target_assigner.Targets(
        cls_targets=cls,
        cls_weights=np.ones((b, a), np.float32),
        reg_targets=reg,
        positive=positive,
        matches=np.where(positive, 0, -1).astype(np.int32),
        num_matches=positive.sum(-1).astype(np.int32),
    )


def test_detection_loss_normalized_by_batch_matches():
    rng = np.random.default_rng(2)
    b, a, c = 3, 40, 5
    t = _targets(rng, b, a, c)
    logits = rng.normal(0, 2, (b, a, c + 1)).astype(np.float32)
    boxes = rng.normal(0, 1, (b, a, 4)).astype(np.float32)
    out = jax.jit(losses.detection_loss)(boxes, logits, t)
    n = max(t.positive.sum(), 1)  # summed over the whole batch, not per image
    cls = _np_focal(logits, t.cls_targets).sum() / n
    loc = (_np_huber(boxes, t.reg_targets) * t.positive).sum() / (n * 4)
    np.testing.assert_allclose(out["classification_loss"], cls, rtol=1e-5)
    np.testing.assert_allclose(out["localization_loss"], loc, rtol=1e-5)
    np.testing.assert_allclose(out["total_loss"], cls + loc, rtol=1e-5)
    assert float(out["num_matches"]) == t.positive.sum()

    # Masked examples drop out of both the sums and the normalizer.
    mask = np.array([True, True, False])
    masked = losses.detection_loss(boxes, logits, t, example_mask=mask)
    n2 = max(t.positive[:2].sum(), 1)
    cls2 = _np_focal(logits[:2], t.cls_targets[:2]).sum() / n2
    np.testing.assert_allclose(masked["classification_loss"], cls2, rtol=1e-5)


def test_detection_loss_without_matches_uses_normalizer_one():
    rng = np.random.default_rng(3)
    t = _targets(rng, 2, 10, 3)
    t = t._replace(positive=np.zeros_like(t.positive), cls_targets=np.zeros_like(t.cls_targets))
    logits = rng.normal(0, 1, (2, 10, 4)).astype(np.float32)
    out = losses.detection_loss(np.zeros((2, 10, 4), np.float32), logits, t)
    np.testing.assert_allclose(
        out["classification_loss"], _np_focal(logits, 0 * logits).sum(), rtol=1e-5
    )
    assert float(out["localization_loss"]) == 0.0


def test_l2_regularization_convention():
    params = {
        "params": {
            "conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)},
            "dw": {"kernel": jnp.full((3, 3, 1, 2), 1.0), "bias": jnp.full((2,), 100.0)},
            "BatchNorm": {"scale": jnp.full((4,), 100.0), "bias": jnp.full((4,), 100.0)},
        }
    }
    expected = 4e-5 * 0.5 * (72 * 4.0 + 18 * 1.0)
    np.testing.assert_allclose(losses.l2_regularization(params, 4e-5), expected, rtol=1e-6)
    only_dw = losses.l2_regularization(params, 4e-5, predicate=lambda p: p[-2:] == ("dw", "kernel"))
    np.testing.assert_allclose(only_dw, 4e-5 * 0.5 * 18, rtol=1e-6)
    grads = jax.grad(lambda p: losses.l2_regularization(p, 4e-5))(params)
    np.testing.assert_allclose(grads["params"]["conv"]["kernel"], 4e-5 * 2.0, rtol=1e-6)
    assert not np.any(np.asarray(grads["params"]["BatchNorm"]["scale"]))


def test_assign_and_loss_under_jit_with_finite_gradients():
    from mobiledet_jax.detection import anchors as anchor_lib

    rng = np.random.default_rng(4)
    anchors = anchor_lib.multiple_grid_anchors([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1)])
    yx = rng.uniform(0, 0.7, (2, 6, 2))
    gt = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (2, 6, 2))], -1).astype(np.float32)
    gt[:, 4:] = 0.0  # padding
    mask = np.array([[True] * 4 + [False] * 2, [False] * 6])
    classes = rng.integers(0, 3, (2, 6)).astype(np.int32)

    def loss(enc, logits):
        t = target_assigner.batch_assign_targets(anchors, gt, classes, mask, 3)
        return losses.detection_loss(enc, logits, t)["total_loss"]

    a = anchors.shape[0]
    enc = rng.normal(0, 1, (2, a, 4)).astype(np.float32)
    logits = rng.normal(0, 1, (2, a, 4)).astype(np.float32)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(enc, logits)
    enc_grad, logit_grad = np.asarray(grads[0]), np.asarray(grads[1])
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(enc_grad)) and np.all(np.isfinite(logit_grad))
    assert np.any(enc_grad[0]) and not np.any(enc_grad[1])  # image 1 has no gt: no loc gradient
