"""The loss and the jitted train step (SPMD over global arrays, no pmap).

The batch is sharded along the mesh's ``data`` axis and the state is replicated (``sharding``);
``jit`` inserts the collectives. BatchNorm in train mode computes its statistics over the whole
global batch, i.e. synchronized BN, with no ``axis_name``.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import losses, matcher, target_assigner
from mobiledet_jax.models import bn_folding, build_model, input_size
from mobiledet_jax.sharding import batch_sharding, replicated
from mobiledet_jax.training import schedules
from mobiledet_jax.training.optimizer import make_optimizer
from mobiledet_jax.training.state import TrainState


def loss_fn(
    params,
    batch_stats,
    batch: dict[str, jax.Array],
    model: nn.Module,
    anchors: jax.Array,
    num_classes: int,
    l2_weight: float,
    quant_stats=None,
    matcher_settings: matcher.MatcherSettings | None = None,
    loss_settings: losses.LossSettings | None = None,
    bn_train: bool = True,
):
    """Total loss (focal + smooth-L1 over matches, + L2) and the updated mutable collections
    (``batch_stats``; also ``quant_stats`` when given, for a QAT model of ``models.qat``).
    Matcher and loss settings default to the reference recipe. ``bn_train=False``: BatchNorm
    uses and keeps its moving statistics (QAT on BN-folded weights, ``train.qat_fold_bn``)."""
    variables = {"params": params, "batch_stats": batch_stats}
    mutable = ["batch_stats"]
    if quant_stats:
        variables["quant_stats"] = quant_stats
        mutable.append("quant_stats")
    out, updates = model.apply(variables, batch["image"], train=bn_train, mutable=mutable)
    updates = {"batch_stats": batch_stats, **updates}  # frozen BN: the statistics unchanged
    l2 = losses.l2_regularization(params, l2_weight)
    total, metrics = detection_objective(
        out, batch, anchors, num_classes, l2, matcher_settings, loss_settings
    )
    return total, (updates, metrics)


def detection_objective(
    out: dict[str, jax.Array],
    batch: dict[str, jax.Array],
    anchors: jax.Array,
    num_classes: int,
    l2: jax.Array,
    matcher_settings: matcher.MatcherSettings | None = None,
    loss_settings: losses.LossSettings | None = None,
):
    """The training objective of a detector's outputs on a batch: targets assigned to the
    anchors, focal + smooth-L1 over the matches, plus ``l2``; returns ``(total, metrics)``.
    Shared by the train step and the architecture search's supernet step."""
    targets = target_assigner.batch_assign_targets(
        anchors,
        batch["gt_boxes"],
        batch["gt_classes"],
        batch["gt_mask"],
        num_classes,
        matcher_settings,
    )
    terms = losses.detection_loss(
        out["box_encodings"], out["class_logits"], targets, settings=loss_settings
    )
    total = terms["total_loss"] + l2
    metrics = {
        "loss": total,
        "classification_loss": terms["classification_loss"],
        "localization_loss": terms["localization_loss"],
        "l2_loss": l2,
        "num_matches": terms["num_matches"],
    }
    return total, metrics


def _without_bn_scale(grads):
    """``grads`` with the BatchNorm ``scale`` gradients zeroed (QAT on BN-folded kernels)."""

    def zero(path, g):
        keys = [str(getattr(k, "key", k)) for k in path]
        return jnp.zeros_like(g) if keys[-2:] == ["BatchNorm", "scale"] else g

    return jax.tree_util.tree_map_with_path(zero, grads)


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    anchors: jax.Array,
    num_classes: int,
    train: ml_collections.ConfigDict,
    mesh: Mesh,
    detection: ml_collections.ConfigDict | None = None,
    int8_scheme: str = "asymmetric",
    bn_correction: bool = False,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``state, batch -> state, metrics``, jitted with the state donated.

    ``bn_correction``: QAT before the BN freeze (``train.qat_bn_freeze_delay``), the model traced
    as folded convs corrected to batch statistics (``models.bn_folding``), BN learning.
    QAT on BN-folded kernels (``train.qat_fold_bn``) keeps BN's moving statistics; in the
    ``symmetric`` int8 scheme (``config.model.int8_scheme``) also BN's scale, which a per-tensor
    weight scale cannot absorb (per channel, the file folds a trained scale into the kernel
    exactly). Measured on the quickstart model: a trained scale drove the symmetric QAT model
    from AP 0.59 to 0.40, a frozen one cost the asymmetric model 0.05 AP.

    ``detection``: ``config.detection`` (matcher and loss settings; default: the reference).
    For QAT, ``model`` is ``models.qat.qat_model(...)`` and ``state.quant_stats`` is calibrated.
    ``metrics["finite"]`` is True when the loss, the gradient and the update are all finite: the
    trainer's NaN guard reads it with the log window, without a host sync per step.
    """
    schedule = schedules.from_config(train)
    # bn_correction: QAT before the BN freeze (train.qat_bn_freeze_delay): folded convs corrected
    # to batch statistics, whose moving averages still learn (models/bn_folding.py)
    bn_train = bn_correction or not (train.get("qat", False) and train.get("qat_fold_bn", False))
    freeze_bn_scale = not bn_train and int8_scheme == "symmetric"
    match_s = matcher.MatcherSettings.from_config(detection.matcher) if detection else None
    loss_s = losses.LossSettings.from_config(detection.loss) if detection else None

    def step_fn(state: TrainState, batch):
        if bn_correction:  # a trace-time switch of layers.ConvBN
            with bn_folding.batch_norm_correction():
                return _step(state, batch)
        return _step(state, batch)

    def _step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (updates, metrics)), grads = grad_fn(
            state.params,
            state.batch_stats,
            batch,
            model,
            anchors,
            num_classes,
            train.l2_weight,
            state.quant_stats,
            match_s,
            loss_s,
            bn_train,
        )
        if freeze_bn_scale:  # per-tensor weights: the folded kernel holds BN's scale, kept at 1
            grads = _without_bn_scale(grads)
        param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, param_updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        # A non-finite update (e.g. an exploding learning rate) is caught before it is checkpointed.
        metrics["update_norm"] = optax.global_norm(param_updates)
        metrics["learning_rate"] = schedule(state.step)
        metrics["finite"] = jnp.isfinite(
            jnp.stack([metrics["loss"], metrics["grad_norm"], metrics["update_norm"]])
        ).all()
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=updates["batch_stats"],
            opt_state=opt_state,
            quant_stats=updates.get("quant_stats", state.quant_stats),
        )
        return new_state, metrics

    return jax.jit(
        step_fn,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def train_step_for_config(config: ml_collections.ConfigDict, mesh: Mesh):
    """``(model, optimizer, step)`` of ``config``: the float model, its optimizer and the jitted step
    as the trainer builds them (for tools that compile or time the step: AOT, benchmarks; the
    convolutions compute as ``config.model.conv_form`` says)."""
    model = build_model(config.model, config.detection.anchors)
    optimizer = make_optimizer(config.train)
    anchors = anchors_lib.anchors_from_config(config.detection.anchors, *input_size(config.model))
    step = make_train_step(
        model, optimizer, anchors, config.model.num_classes, config.train, mesh, config.detection
    )
    return model, optimizer, step
