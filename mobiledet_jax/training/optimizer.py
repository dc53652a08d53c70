"""The optimizer of the reference recipe: SGD with momentum on the cosine-with-warmup schedule
(``schedules``), optionally with global-norm clipping. The L2 term is part of the loss
(``detection.losses.l2_regularization``), as in the TF Object Detection API."""

import ml_collections
import optax

from mobiledet_jax.training import schedules


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with momentum on the reference schedule; optional global-norm clipping."""
    sgd = optax.sgd(schedules.from_config(train), momentum=train.momentum, nesterov=False)
    if train.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), sgd)
    return sgd
