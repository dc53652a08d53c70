"""Random but realistic model variables without running ``model.init`` (tests, benchmarks).

``model.init`` executes the whole network op by op, which takes tens of seconds for an SSDLite on
two CPU cores; ``jax.eval_shape`` only traces it. Kernels get scaled normal values, and BatchNorm gets
non-trivial statistics (scale ~ 1 +- 0.1, offset and mean ~ +-0.1, variance in [0.5, 1.5]) so that
folding BN into the convolutions is actually exercised by the converter.
"""

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(
    model, image_size, seed: int = 0, class_logit_scale: float = 1.0, gain: float = 1.0
) -> dict:
    """``{'params', 'batch_stats'}`` numpy trees for ``model`` at ``image_size`` ``(H, W)``.

    Kernels are normal with variance ``gain / fan_in`` (LeCun for the default 1, which keeps the
    activations of a deep random net bounded; He's 2 makes them grow layer after layer, so that
    float32 rounding and int8 steps get amplified). ``class_logit_scale`` multiplies the class
    predictors' kernels (e.g. 10 spreads the scores so that detections are not all tied, which
    post-processing comparisons need).
    """
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_size, 3)), train=False)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [getattr(k, "key", str(k)) for k in path]
        shape, name = leaf.shape, keys[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) if shape[2] != 1 else shape[0] * shape[1]
            v = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
            if "ClassPredictor" in keys:
                v *= class_logit_scale
        elif name == "scale":
            v = 1.0 + 0.1 * rng.normal(size=shape)
        elif name == "var":
            v = rng.uniform(0.5, 1.5, shape)
        else:  # BN offset, BN mean, conv biases
            v = 0.1 * rng.normal(size=shape)
        return v.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))
