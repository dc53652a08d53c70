"""QAT on BN-folded kernels in the symmetric int8 scheme: BatchNorm's scale gets no gradient
(``step._without_bn_scale``), everything else keeps its own."""

import jax
import jax.numpy as jnp
import numpy as np

from mobiledet_jax.training import step


def test_without_bn_scale_zeroes_only_batchnorm_scales():
    grads = {
        "backbone": {
            "Conv": {"kernel": jnp.ones((3, 3, 3, 4)), "BatchNorm": {"scale": jnp.ones(4),
                                                                    "bias": jnp.ones(4)}},
        },
        "head": {"ClassPredictor": {"kernel": jnp.ones((1, 1, 4, 2)), "bias": jnp.ones(2)}},
    }  # fmt: skip
    out = step._without_bn_scale(grads)
    assert not np.any(np.asarray(out["backbone"]["Conv"]["BatchNorm"]["scale"]))
    for path, leaf in jax.tree_util.tree_leaves_with_path(out):
        keys = [k.key for k in path]
        if keys[-2:] != ["BatchNorm", "scale"]:
            assert np.all(np.asarray(leaf) == 1.0), keys
