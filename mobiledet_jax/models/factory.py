"""``build_model(config.model)``: the SSDLite detector a config describes, and its input size."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.models import specs
from mobiledet_jax.models.ssdlite import SSDLite

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUTO_DTYPE = "auto"  # bfloat16 on TPU, float32 elsewhere
SEARCHED = "searched"  # config.SEARCHED_MODEL: the table is config.model.arch


def resolve_compute_dtype(name: str, platform: str | None = None) -> str:
    """``config.model.compute_dtype`` for ``platform`` (default: JAX's default backend):
    ``"auto"`` is ``"bfloat16"`` on TPU (parameters, BN statistics, optimizer state and the loss
    stay float32) and ``"float32"`` elsewhere; a named dtype is itself."""
    if name != AUTO_DTYPE:
        return name
    return "bfloat16" if (platform or jax.default_backend()) == "tpu" else "float32"


def backbone_spec(
    name: str, dsp_block20_residual: bool = True, arch: str = ""
) -> specs.BackboneSpec:
    """The table of a model name from ``mobiledet_jax.config.MODEL_NAMES``; for ``"searched"`` the
    table is ``arch`` (``specs.spec_to_json``, as ``config.model.arch`` holds it)."""
    from mobiledet_jax.models import baselines  # the MobileNet tables

    if name == SEARCHED:
        if not arch:
            raise ValueError(
                'model "searched" needs its backbone table in config.model.arch: use '
                "configs/searched.py:<workdir>/arch.json"
            )
        return specs.spec_from_json(arch)
    if arch:
        raise ValueError(f"config.model.arch is only read for model {SEARCHED!r}, not {name!r}")
    table = {**specs.MOBILEDETS, **baselines.BASELINES}
    if name not in table:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(table)}")
    spec = table[name]
    if name == "mobiledet_dsp" and not dsp_block20_residual:
        spec = specs.dsp_tf2_variant(spec)
    return spec


def model_backbone_spec(model_config: ml_collections.ConfigDict) -> specs.BackboneSpec:
    """The backbone table ``config.model`` describes, its BatchNorm momentum capped at
    ``config.model.bn_momentum_max``."""
    spec = backbone_spec(
        model_config.name, model_config.dsp_block20_residual, model_config.get("arch", "")
    )
    cap = float(model_config.get("bn_momentum_max", 1.0))
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"model.bn_momentum_max must be in (0, 1], got {cap}")
    if spec.bn_momentum > cap:
        spec = dataclasses.replace(spec, bn_momentum=cap)
    return spec


def build_model(
    model_config: ml_collections.ConfigDict,
    anchor_config: ml_collections.ConfigDict | None = None,
) -> SSDLite:
    """The SSDLite detector described by ``config.model``; its box predictor has as many anchor
    types per location as ``config.detection.anchors`` (default: the reference, 3, 6, 6, 6, 6, 6)."""
    dtype = resolve_compute_dtype(model_config.compute_dtype)
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be {AUTO_DTYPE!r} or one of {sorted(COMPUTE_DTYPES)}, got "
            f"{model_config.compute_dtype!r}"
        )
    return SSDLite(
        backbone_spec=model_backbone_spec(model_config),
        num_classes=model_config.num_classes,
        width_multiplier=model_config.width_multiplier,
        dtype=COMPUTE_DTYPES[dtype],
        bn_one_pass_min_pixels=model_config.get("bn_one_pass_min_pixels", 0),
        conv_form=model_config.get("conv_form", "auto"),
        anchors_per_location=anchors_lib.anchors_per_location(
            None if anchor_config is None else anchors_lib.AnchorSettings.from_config(anchor_config)
        ),
    )


def as_convolutions(model):
    """``model`` with its depthwise convs pinned to ``lax.conv_general_dilated`` (the ``"conv"``
    form of ``layers.depthwise_conv``): what jax2tf exports as DEPTHWISE_CONV_2D and what qwix
    fake-quantizes. The same parameters and outputs. Modules held in fields (a detector wrapped
    in another module) are pinned too; a module with nothing to pin is returned as is."""
    changes = {}
    if getattr(model, "conv_form", "conv") != "conv":
        changes["conv_form"] = "conv"
    for field in dataclasses.fields(model):
        value = getattr(model, field.name, None)
        if field.name not in ("parent", "name") and isinstance(value, nn.Module):
            pinned = as_convolutions(value)
            if pinned is not value:
                changes[field.name] = pinned
    return model.clone(**changes) if changes else model


def input_size(model_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(height, width) of the model input."""
    h = model_config.image_height if model_config.image_height > 0 else model_config.image_size
    w = model_config.image_width if model_config.image_width > 0 else model_config.image_size
    return int(h), int(w)
