"""Train state, loss and the jitted train/eval steps (SPMD over global arrays, no pmap).

The batch is sharded along the mesh's ``data`` axis and the state is replicated; ``jit`` inserts the
collectives. BatchNorm in train mode computes its statistics over the whole global batch, i.e.
synchronized BN, with no ``axis_name``.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobiledet_jax import schedules
from mobiledet_jax.detection import losses, postprocess, target_assigner

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # QAT (config.train.qat): the fake-quant ranges of ``export.qat`` (empty when training float)
    quant_stats: Any = flax.struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        v = {"params": self.params, "batch_stats": self.batch_stats}
        if self.quant_stats:
            v["quant_stats"] = self.quant_stats
        return v


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A 1-D ``data`` mesh over ``mesh_config.data`` devices (-1: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if mesh_config.data == -1 else mesh_config.data
    if n < 1 or n > len(devices) or len(devices) % n:
        raise ValueError(f"mesh.data={mesh_config.data} does not fit {len(devices)} devices")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with momentum on the SPEC schedule; optional global-norm clipping."""
    sgd = optax.sgd(schedules.from_config(train), momentum=train.momentum, nesterov=False)
    if train.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), sgd)
    return sgd


def create_train_state(
    model: nn.Module, optimizer, image_size: tuple[int, int], rng: jax.Array, mesh: Mesh
) -> TrainState:
    """Initialises parameters, BN statistics and optimizer state directly as replicated arrays."""

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *image_size, 3), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=optimizer.init(params),
        )

    return jax.jit(init, out_shardings=replicated(mesh))(rng)


def loss_fn(
    params,
    batch_stats,
    batch: dict[str, jax.Array],
    model: nn.Module,
    anchors: jax.Array,
    num_classes: int,
    l2_weight: float,
    quant_stats=None,
):
    """Total loss (focal + smooth-L1 over matches, + L2) and the updated mutable collections
    (``batch_stats``; also ``quant_stats`` when given, for a QAT model of ``export.qat``)."""
    variables = {"params": params, "batch_stats": batch_stats}
    mutable = ["batch_stats"]
    if quant_stats:
        variables["quant_stats"] = quant_stats
        mutable.append("quant_stats")
    out, updates = model.apply(variables, batch["image"], train=True, mutable=mutable)
    targets = target_assigner.batch_assign_targets(
        anchors, batch["gt_boxes"], batch["gt_classes"], batch["gt_mask"], num_classes
    )
    terms = losses.detection_loss(out["box_encodings"], out["class_logits"], targets)
    l2 = losses.l2_regularization(params, l2_weight)
    total = terms["total_loss"] + l2
    metrics = {
        "loss": total,
        "classification_loss": terms["classification_loss"],
        "localization_loss": terms["localization_loss"],
        "l2_loss": l2,
        "num_matches": terms["num_matches"],
    }
    return total, (updates, metrics)


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    anchors: jax.Array,
    num_classes: int,
    train: ml_collections.ConfigDict,
    mesh: Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``state, batch -> state, metrics``, jitted with the state donated.

    For QAT, ``model`` is ``export.qat.qat_model(...)`` and ``state.quant_stats`` is calibrated.
    """
    schedule = schedules.from_config(train)

    def step_fn(state: TrainState, batch):
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
        )
        param_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, param_updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        # A non-finite update (e.g. an exploding learning rate) is caught before it is checkpointed.
        metrics["update_norm"] = optax.global_norm(param_updates)
        metrics["learning_rate"] = schedule(state.step)
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


def make_detect_fn(model: nn.Module, anchors: jax.Array, mesh: Mesh):
    """``variables, batch -> (detections, batch ground truth)``, all replicated (host-readable).

    Detections follow ``mobiledet_jax.detection.postprocess`` (SPEC NMS settings, static shapes).
    """

    def detect(variables, batch):
        out = model.apply(variables, batch["image"], train=False)
        det = postprocess.postprocess(out["box_encodings"], out["class_logits"], anchors)
        keep = {k: v for k, v in batch.items() if k != "image"}
        return det, keep

    return jax.jit(detect, out_shardings=replicated(mesh))


def train_step_for_config(config: ml_collections.ConfigDict, mesh: Mesh):
    """``(model, optimizer, step)`` of ``config``: the float model, its optimizer and the jitted step
    as the trainer builds them (for tools that compile or time the step: AOT, benchmarks)."""
    from mobiledet_jax.detection import anchors as anchors_lib
    from mobiledet_jax.models import build_model, input_size

    model = build_model(config.model)
    optimizer = make_optimizer(config.train)
    anchors = anchors_lib.anchors_jnp(*input_size(config.model))
    step = make_train_step(model, optimizer, anchors, config.model.num_classes, config.train, mesh)
    return model, optimizer, step
