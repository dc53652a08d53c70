"""One-to-one naming between our Flax variables and the TF1 Object Detection API variables.

Our parameter paths mirror TF1 scopes: ``backbone/<block>/...`` and ``neck/<extra layer>/...`` live under
``FeatureExtractor/<scope>/`` in TF1, and ``head/BoxPredictor_i/...`` is ``BoxPredictor_i/...``. Leaves
map as kernel <-> weights (depthwise_weights for depthwise convs, whose layout [kh, kw, 1, C] is TF's
[kh, kw, C, 1] with the last two axes swapped), bias <-> biases (conv) or beta (BatchNorm),
scale <-> gamma, and the batch_stats mean/var <-> moving_mean/moving_variance.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

DEPTHWISE_SCOPES = ("SeparableConv2d", "depthwise")


def _is_depthwise(scope: str) -> bool:
    return scope in DEPTHWISE_SCOPES or scope.endswith("_depthwise")


def tf1_name(path: tuple[str, ...], scope_name: str) -> str:
    """TF1 variable name of a flattened variables path ``(collection, module..., leaf)``."""
    collection, *modules, leaf = path
    part, *rest = modules
    if part in ("backbone", "neck"):
        prefix = ["FeatureExtractor", scope_name]
    elif part == "head":
        prefix = []
    else:
        raise ValueError(f"unexpected top-level module {part!r} in {path}")
    in_bn = bool(rest) and rest[-1] == "BatchNorm"
    if collection == "batch_stats":
        tf_leaf = {"mean": "moving_mean", "var": "moving_variance"}[leaf]
    elif leaf == "kernel":
        tf_leaf = "depthwise_weights" if _is_depthwise(rest[-1]) else "weights"
    elif leaf == "bias":
        tf_leaf = "beta" if in_bn else "biases"
    elif leaf == "scale":
        tf_leaf = "gamma"
    else:
        raise ValueError(f"no TF1 name for leaf {leaf!r} in {path}")
    return "/".join([*prefix, *rest, tf_leaf])


def to_tf_layout(name: str, value: np.ndarray) -> np.ndarray:
    """Our array layout -> TF1's (only depthwise kernels differ)."""
    if name.endswith("/depthwise_weights"):
        return np.swapaxes(value, 2, 3)
    return value


def from_tf_layout(name: str, value: np.ndarray) -> np.ndarray:
    """TF1's array layout -> ours."""
    return to_tf_layout(name, value)  # the swap is its own inverse


def name_map(variables: Mapping[str, Any], scope_name: str) -> dict[str, tuple[str, ...]]:
    """TF1 name -> flattened path, for every leaf of ``{'params': ..., 'batch_stats': ...}``."""
    flat = traverse_util.flatten_dict(dict(variables))
    out: dict[str, tuple[str, ...]] = {}
    for path in flat:
        name = tf1_name(path, scope_name)
        if name in out:
            raise ValueError(f"two variables map to {name}: {out[name]} and {path}")
        out[name] = path
    return out


def tf1_shapes(variables: Mapping[str, Any], scope_name: str) -> dict[str, tuple[int, ...]]:
    """TF1 name -> TF-layout shape of every variable of ours."""
    flat = traverse_util.flatten_dict(dict(variables))
    shapes = {}
    for name, path in name_map(variables, scope_name).items():
        shape = tuple(flat[path].shape)
        if name.endswith("/depthwise_weights"):
            shape = (shape[0], shape[1], shape[3], shape[2])
        shapes[name] = shape
    return shapes
