"""The train state (parameters, BN statistics, optimizer state, QAT ranges) and its creation as
replicated global arrays."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mobiledet_jax.sharding import replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # QAT (config.train.qat): the fake-quant ranges of ``models.qat`` (empty when training float)
    quant_stats: Any = flax.struct.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        v = {"params": self.params, "batch_stats": self.batch_stats}
        if self.quant_stats:
            v["quant_stats"] = self.quant_stats
        return v


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
