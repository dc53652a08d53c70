"""Learning-rate schedules (docs/reference/recipe.md, "Schedules")."""

import jax.numpy as jnp
import ml_collections


def cosine_decay_with_warmup(
    base_lr: float,
    total_steps: int,
    warmup_lr: float = 0.0,
    warmup_steps: int = 0,
    hold_steps: int = 0,
):
    """TF Object Detection API ``learning_schedules.cosine_decay_with_warmup``.

    - ``step < warmup_steps``: ``warmup_lr + (base_lr - warmup_lr) * step / warmup_steps``;
    - then ``base_lr`` for ``hold_steps``;
    - then ``0.5 * base_lr * (1 + cos(pi * (step - warmup - hold) / (total - warmup - hold)))``;
    - ``0`` past ``total_steps``.
    """
    if total_steps < warmup_steps + hold_steps:
        raise ValueError(
            f"total_steps ({total_steps}) must be at least warmup_steps + hold_steps "
            f"({warmup_steps} + {hold_steps}): lower train.warmup_steps for a short run"
        )
    if warmup_steps and base_lr < warmup_lr:
        raise ValueError(f"base_lr ({base_lr}) must be at least warmup_lr ({warmup_lr})")
    decay_steps = max(total_steps - warmup_steps - hold_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        lr = (
            0.5 * base_lr * (1 + jnp.cos(jnp.pi * (step - warmup_steps - hold_steps) / decay_steps))
        )
        if hold_steps > 0:
            lr = jnp.where(step > warmup_steps + hold_steps, lr, base_lr)
        if warmup_steps > 0:
            slope = (base_lr - warmup_lr) / warmup_steps
            lr = jnp.where(step < warmup_steps, slope * step + warmup_lr, lr)
        return jnp.where(step > total_steps, 0.0, lr)

    return schedule


def from_config(train: ml_collections.ConfigDict):
    """The schedule of a ``config.train`` block."""
    return cosine_decay_with_warmup(
        train.base_lr, train.num_steps, train.warmup_lr, train.warmup_steps, train.hold_steps
    )
