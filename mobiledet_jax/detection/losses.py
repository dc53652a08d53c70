"""SSD losses with the TF OD API conventions (``ssd_meta_arch.loss``; docs/reference/recipe.md).

- Classification: sigmoid focal loss (alpha 0.75, gamma 2) over all ``C + 1`` slots of every anchor,
  weighted by the target assigner's class weights, summed.
- Localization: smooth L1 (Huber, delta 1) over the 4 codes, on positive anchors only, summed.
- Normalization: both are divided by ``max(total matches, 1)`` where the total is summed over the
  **whole batch** passed in (TF: ``normalizer = max(reduce_sum(batch_reg_weights), 1)``), and the
  localization loss is also divided by the code size 4.

Note: the reference trained on 32 TPU replicas of 16 images; each replica normalized by its own
matches and the gradients were averaged. Calling ``detection_loss`` on a global (sharded) batch
normalizes by the global match count instead, a small, deliberate difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import box_coder
from mobiledet_jax.detection.target_assigner import Targets


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Loss constants (``config.detection.loss``; ``reference()``: focal alpha 0.75, gamma 2,
    Huber delta 1, both weights 1)."""

    focal_alpha: float
    focal_gamma: float
    huber_delta: float
    classification_weight: float
    localization_weight: float

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> LossSettings:
        return cls(**{f.name: float(cfg[f.name]) for f in dataclasses.fields(cls)})

    @classmethod
    def reference(cls) -> LossSettings:
        return cls.from_config(config_lib.detection_config().loss)


def sigmoid_focal_loss(
    logits: jax.Array, targets: jax.Array, alpha: float, gamma: float
) -> jax.Array:
    """Per-entry sigmoid focal loss, ``logits`` and ``targets`` ``[..., K]`` -> ``[..., K]``.

    ``alpha`` weights target-1 entries and ``1 - alpha`` target-0 entries (TF convention).
    """
    logits = logits.astype(jnp.float32)
    cross_entropy = (
        jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    )
    probs = jax.nn.sigmoid(logits)
    p_t = targets * probs + (1.0 - targets) * (1.0 - probs)
    modulating = (1.0 - p_t) ** gamma if gamma else 1.0
    alpha_weight = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    return modulating * alpha_weight * cross_entropy


def smooth_l1_loss(predictions: jax.Array, targets: jax.Array, delta: float) -> jax.Array:
    """Huber loss summed over the last (code) axis: ``[..., 4]`` -> ``[...]``."""
    abs_error = jnp.abs(predictions.astype(jnp.float32) - targets)
    quadratic = jnp.minimum(abs_error, delta)
    linear = abs_error - quadratic
    return jnp.sum(0.5 * quadratic**2 + delta * linear, axis=-1)


def detection_loss(
    box_encodings: jax.Array,
    class_logits: jax.Array,
    targets: Targets,
    example_mask: jax.Array | None = None,
    settings: LossSettings | None = None,
) -> dict[str, jax.Array]:
    """SSD loss terms for a batch.

    Args:
      box_encodings: ``[B, A, 4]`` predicted (ty, tx, th, tw).
      class_logits: ``[B, A, C + 1]`` logits, column 0 = background.
      targets: batched ``Targets`` (``batch_assign_targets``), fields with leading ``[B]``.
      example_mask: optional ``[B]`` bool; False examples (batch padding) contribute nothing.
      settings: focal, Huber and weight constants (default: ``LossSettings.reference()``).

    Returns:
      dict of scalars: ``classification_loss``, ``localization_loss``, ``total_loss`` (their sum,
      without L2) and ``num_matches`` (float, before the ``max(., 1)``).
    """
    s = settings or LossSettings.reference()
    positive = targets.positive.astype(jnp.float32)  # [B, A]
    cls_weights = targets.cls_weights
    if example_mask is not None:
        m = example_mask.astype(jnp.float32)[:, None]
        positive = positive * m
        cls_weights = cls_weights * m
    focal = sigmoid_focal_loss(
        class_logits, targets.cls_targets, s.focal_alpha, s.focal_gamma
    )  # [B, A, C+1]
    cls_sum = jnp.sum(focal * cls_weights[..., None])
    huber = smooth_l1_loss(box_encodings, targets.reg_targets, s.huber_delta)
    loc_sum = jnp.sum(huber * positive)
    num_matches = jnp.sum(positive)
    normalizer = jnp.maximum(num_matches, 1.0)
    cls_loss = s.classification_weight * cls_sum / normalizer
    loc_loss = s.localization_weight * loc_sum / (normalizer * box_coder.CODE_SIZE)
    return {
        "classification_loss": cls_loss,
        "localization_loss": loc_loss,
        "total_loss": cls_loss + loc_loss,
        "num_matches": num_matches,
    }


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_names(path) -> tuple[str, ...]:
    """A ``jax.tree_util`` key path as a tuple of plain strings, e.g. ``('backbone', 'kernel')``."""
    return tuple(_key_name(k) for k in path)


def is_conv_kernel(names: tuple[str, ...]) -> bool:
    """Default L2 predicate: leaves named ``kernel`` (Flax conv kernels, depthwise included)."""
    return bool(names) and names[-1] == "kernel"


def l2_regularization(
    params,
    weight: float,
    predicate: Callable[[tuple[str, ...]], bool] = is_conv_kernel,
) -> jax.Array:
    """slim ``l2_regularizer`` convention: ``weight * 0.5 * sum(w ** 2)`` over selected leaves.

    Args:
      params: any pytree of arrays (e.g. Flax ``variables['params']``).
      weight: ``config.train.l2_weight`` (4e-5 in the reference; backbone, neck and head alike).
      predicate: called with the leaf's key path as strings (``path_names``); True to include.
        The default takes leaves named ``kernel``, so BN scale/bias and conv biases are excluded.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        if predicate(path_names(path)):
            total = total + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return weight * 0.5 * total
