"""Our detection loss and learning-rate schedule written in TensorFlow, for ``train_step_vs_tf.py``.

The same terms as ``mobiledet_jax.detection.losses`` (TF OD API conventions,
docs/reference/recipe.md), on targets computed by our target assigner:

- sigmoid focal loss over all ``C + 1`` slots (``tf.nn.sigmoid_cross_entropy_with_logits``,
  ``(1 - p_t) ** gamma``, alpha on target-1 entries), weighted by the class weights, summed;
- smooth L1 (Huber) over the 4 codes of positive anchors, summed;
- both divided by ``max(matches in the batch, 1)``, the localization loss also by the code size 4;
- L2: ``weight * tf.nn.l2_loss(kernel)`` (slim's ``l2_regularizer``) over every conv kernel.

The schedule is ``mobiledet_jax.training.schedules.cosine_decay_with_warmup`` as a Keras
``LearningRateSchedule``: the optimizer's learning rate equals ours at every step.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from mobiledet_jax.detection import box_coder
from mobiledet_jax.detection.losses import LossSettings


def sigmoid_focal_loss(logits, targets, alpha: float, gamma: float):
    """Per-entry sigmoid focal loss ``[..., K]`` (TF OD API ``SigmoidFocalClassificationLoss``)."""
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    probs = tf.sigmoid(logits)
    p_t = targets * probs + (1.0 - targets) * (1.0 - probs)
    modulating = tf.pow(1.0 - p_t, gamma) if gamma else 1.0
    alpha_weight = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    return modulating * alpha_weight * cross_entropy


def smooth_l1_loss(predictions, targets, delta: float):
    """Huber loss summed over the code axis: ``[..., 4]`` -> ``[...]``."""
    abs_error = tf.abs(predictions - targets)
    quadratic = tf.minimum(abs_error, delta)
    linear = abs_error - quadratic
    return tf.reduce_sum(0.5 * quadratic * quadratic + delta * linear, axis=-1)


def detection_loss(box_encodings, class_logits, targets: dict, settings: LossSettings) -> dict:
    """The loss terms of a batch.

    ``targets``: ``cls_targets [B, A, C+1]``, ``cls_weights [B, A]``, ``reg_targets [B, A, 4]``
    and ``positive [B, A]`` (float 0/1), as ``target_assigner.batch_assign_targets`` gives them.
    """
    s = settings
    positive = targets["positive"]
    focal = sigmoid_focal_loss(class_logits, targets["cls_targets"], s.focal_alpha, s.focal_gamma)
    cls_sum = tf.reduce_sum(focal * targets["cls_weights"][..., None])
    huber = smooth_l1_loss(box_encodings, targets["reg_targets"], s.huber_delta)
    loc_sum = tf.reduce_sum(huber * positive)
    num_matches = tf.reduce_sum(positive)
    normalizer = tf.maximum(num_matches, 1.0)
    cls_loss = s.classification_weight * cls_sum / normalizer
    loc_loss = s.localization_weight * loc_sum / (normalizer * box_coder.CODE_SIZE)
    return {
        "classification_loss": cls_loss,
        "localization_loss": loc_loss,
        "total_loss": cls_loss + loc_loss,
        "num_matches": num_matches,
    }


def l2_regularization(kernels, weight: float):
    """slim ``l2_regularizer``: ``weight * sum(w ** 2) / 2`` over ``kernels``."""
    return weight * tf.add_n([tf.nn.l2_loss(k) for k in kernels])


class CosineDecayWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedules.cosine_decay_with_warmup`` in TensorFlow (``schedules.from_config(train)``)."""

    def __init__(self, train):
        self.base_lr, self.total = float(train.base_lr), int(train.num_steps)
        self.warmup_lr, self.warmup = float(train.warmup_lr), int(train.warmup_steps)
        self.hold = int(train.hold_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay_steps = max(self.total - self.warmup - self.hold, 1)
        lr = (
            0.5
            * self.base_lr
            * (1.0 + tf.cos(math.pi * (step - self.warmup - self.hold) / decay_steps))
        )
        if self.hold > 0:
            lr = tf.where(step > self.warmup + self.hold, lr, self.base_lr)
        if self.warmup > 0:
            slope = (self.base_lr - self.warmup_lr) / self.warmup
            lr = tf.where(step < self.warmup, slope * step + self.warmup_lr, lr)
        return tf.where(step > self.total, 0.0, lr)

    def get_config(self):
        return {"base_lr": self.base_lr, "total": self.total, "warmup": self.warmup}
