"""Default experiment configuration (ml_collections), shared by the files in ``configs/``.

Every default lives here; each file under ``configs/`` picks a model and overrides a few fields, and the
command line overrides any field with ``--config.<field>=<value>``. The returned ConfigDict is locked,
so a mistyped key (in a config file or on the command line) is an error, never silently ignored.
"""

import ml_collections

# Model names understood by ``mobiledet_jax.models.build_model``.
MODEL_NAMES = (
    "mobiledet_cpu",
    "mobiledet_dsp",
    "mobiledet_edgetpu",
    "mobiledet_gpu",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)


def model_config(name: str = "mobiledet_edgetpu") -> ml_collections.ConfigDict:
    """The ``config.model`` block: architecture and numerics."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    m = ml_collections.ConfigDict()
    m.name = name
    m.num_classes = (
        90  # foreground classes; the head predicts num_classes + 1 slots (0 = background)
    )
    m.image_size = 320  # square input; (height, width) sizes are set with image_height/image_width
    m.image_height = -1  # > 0 overrides image_size for the height
    m.image_width = -1  # > 0 overrides image_size for the width
    m.width_multiplier = 1.0  # the TF1 depth_multiplier, applied with the round8 rule
    # DSP block 20 (Fused 160->160): residual in TF1 (the published checkpoints), not in TF2.
    m.dsp_block20_residual = True
    m.compute_dtype = "float32"  # or "bfloat16"; parameters stay float32
    return m


def base_config(model_name: str = "mobiledet_edgetpu") -> ml_collections.ConfigDict:
    """A complete, unlocked experiment config. Config files lock it before returning."""
    c = ml_collections.ConfigDict()
    c.model = model_config(model_name)
    c.seed = 0
    return c
