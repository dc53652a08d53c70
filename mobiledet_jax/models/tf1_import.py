"""TF1 Object Detection API MobileDet checkpoints as variables of our model, checked one to one.

Reads the checkpoint with TensorFlow's checkpoint reader (no Object Detection API code), maps every
variable by name and shape onto our parameters and BatchNorm statistics (``tf1_names``: depthwise
kernels re-laid out), and fails with the full list when anything is left unmapped on either side or
a shape differs. Optimizer slots and bookkeeping variables (``global_step``, ``.../Momentum``, ...)
are reported and skipped. The TF1 variable names are in docs/reference/architectures.md, the
reference checkpoints and their weight rule in docs/reference/tf1_reference_data.md. The command
line, which writes the result to a workdir, is ``python -m mobiledet_jax.import_tf1``.
"""

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import tf1_names
from mobiledet_jax.models.factory import build_model, model_backbone_spec

SHORT_NAMES = {"cpu", "dsp", "edgetpu", "gpu"}

# Checkpoint variables that are not part of the network.
IGNORED = re.compile(
    r"(^global_step$)|(/(Momentum|RMSProp(_1)?|Adam(_1)?|ExponentialMovingAverage)$)|(^beta[12]_power)"
)


class ImportMismatchError(ValueError):
    """The checkpoint and the model do not correspond one to one."""


@dataclasses.dataclass
class ImportReport:
    num_variables: int
    num_values: int
    ignored: list[str]


def model_name(name: str) -> str:
    """Accepts ``edgetpu`` or ``mobiledet_edgetpu``."""
    full = f"mobiledet_{name}" if name in SHORT_NAMES else name
    if full not in config_lib.PUBLISHED_MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(SHORT_NAMES)}")
    return full


def read_tf1_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """All variables of a TF checkpoint (V1 or V2 format) as numpy arrays, by name."""
    import tensorflow as tf  # imported lazily: only the importer needs TensorFlow

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (ValueError, tf.errors.NotFoundError, tf.errors.DataLossError) as e:
        raise FileNotFoundError(f"cannot read TF checkpoint {prefix!r}: {e}") from e
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def map_tf1_variables(
    tf_vars: Mapping[str, np.ndarray], model_config: ml_collections.ConfigDict
) -> tuple[dict, ImportReport]:
    """TF1 variables -> our ``{'params', 'batch_stats'}`` tree, checked one to one."""
    model = build_model(model_config)
    scope = model_backbone_spec(model_config).scope
    x = jnp.zeros((1, 320, 320, 3))
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    names = tf1_names.name_map(target, scope)
    flat_target = traverse_util.flatten_dict(target)
    ignored = sorted(n for n in tf_vars if IGNORED.search(n))
    candidates = {n: v for n, v in tf_vars.items() if n not in ignored}
    missing = sorted(set(names) - set(candidates))
    unexpected = sorted(set(candidates) - set(names))
    wrong_shape = []
    flat = {}
    for name, path in names.items():
        if name not in candidates:
            continue
        value = tf1_names.from_tf_layout(name, np.asarray(candidates[name], np.float32))
        if value.shape != tuple(flat_target[path].shape):
            tf_shape = tuple(candidates[name].shape)
            wrong_shape.append(f"{name}: checkpoint {tf_shape}, model expects {value.shape}")
            continue
        flat[path] = value
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint does not match {model_config.name} ({scope}):"]
        for title, items in (
            ("model variables missing from the checkpoint", missing),
            ("checkpoint variables with no model counterpart", unexpected),
            ("shape mismatches", wrong_shape),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        raise ImportMismatchError("\n".join(lines))
    report = ImportReport(len(flat), sum(v.size for v in flat.values()), ignored)
    return traverse_util.unflatten_dict(flat), report


def load_tf1_checkpoint(
    model: str, checkpoint: str, num_classes: int = 90
) -> tuple[dict, ml_collections.ConfigDict, ImportReport]:
    """Reads and maps a checkpoint: (variables, the ``config.model`` they belong to, report).

    ``model`` is a model name (``edgetpu`` or ``mobiledet_edgetpu``), ``checkpoint`` the TF
    checkpoint prefix, ``num_classes`` the foreground classes of its head."""
    cfg = config_lib.model_config(model_name(model))
    cfg.num_classes = num_classes
    variables, report = map_tf1_variables(read_tf1_checkpoint(checkpoint), cfg)
    return variables, cfg, report
