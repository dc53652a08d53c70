"""Faster R-CNN box coder (TF OD API ``faster_rcnn_box_coder``, scales 10, 10, 5, 5).

Boxes and anchors are normalized ``[ymin, xmin, ymax, xmax]``; codes are ``(ty, tx, th, tw)``:
``ty = 10 * (yc - yca) / ha``, ``tx = 10 * (xc - xca) / wa``, ``th = 5 * log(h / ha)``,
``tw = 5 * log(w / wa)``. All functions broadcast over leading dimensions and are jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
CODE_SIZE = 4
# TF adds this to the sizes in ``encode`` to avoid log(0) and division by zero.
_EPSILON = 1e-8


def center_size(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``[..., 4]`` corners -> ``(ycenter, xcenter, height, width)``, each ``[...]``."""
    ymin, xmin, ymax, xmax = (boxes[..., i] for i in range(4))
    height = ymax - ymin
    width = xmax - xmin
    return ymin + height / 2.0, xmin + width / 2.0, height, width


def encode(
    boxes: jax.Array, anchors: jax.Array, scale_factors: tuple[float, ...] = SCALE_FACTORS
) -> jax.Array:
    """Encode boxes ``[..., 4]`` relative to anchors ``[..., 4]`` -> codes ``[..., 4]`` (ty, tx, th, tw)."""
    yca, xca, ha, wa = center_size(anchors)
    yc, xc, h, w = center_size(boxes)
    ha, wa, h, w = ha + _EPSILON, wa + _EPSILON, h + _EPSILON, w + _EPSILON
    ty = (yc - yca) / ha * scale_factors[0]
    tx = (xc - xca) / wa * scale_factors[1]
    th = jnp.log(h / ha) * scale_factors[2]
    tw = jnp.log(w / wa) * scale_factors[3]
    return jnp.stack([ty, tx, th, tw], axis=-1)


def decode(
    codes: jax.Array, anchors: jax.Array, scale_factors: tuple[float, ...] = SCALE_FACTORS
) -> jax.Array:
    """Decode codes ``[..., 4]`` (ty, tx, th, tw) with anchors ``[..., 4]`` -> boxes ``[..., 4]``.

    The boxes are normalized ``[ymin, xmin, ymax, xmax]`` and not clipped.
    """
    yca, xca, ha, wa = center_size(anchors)
    ty = codes[..., 0] / scale_factors[0]
    tx = codes[..., 1] / scale_factors[1]
    th = codes[..., 2] / scale_factors[2]
    tw = codes[..., 3] / scale_factors[3]
    w = jnp.exp(tw) * wa
    h = jnp.exp(th) * ha
    yc = ty * ha + yca
    xc = tx * wa + xca
    return jnp.stack([yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0], axis=-1)
