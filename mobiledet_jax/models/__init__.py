"""Model zoo: MobileDet backbones, MobileNet baselines, the SSDLite neck and head.

``build_model(config.model)`` (``factory``) is the one way the project builds a detector; the
architectures are data (``specs``, ``baselines``), with one implementation per block type
(``blocks``). ``qat`` is the fake-quantized (QAT) version of any of them. ``architecture_summary``
and ``block_diagram`` describe a built model (per-layer params and MAdds, a PNG of the backbone);
``tf1_names`` and ``tf1_import`` read TF1 Object Detection API checkpoints into our variables.
"""

from mobiledet_jax.models.backbone import Backbone, endpoint_widths, resolve_blocks
from mobiledet_jax.models.factory import (
    COMPUTE_DTYPES,
    as_convolutions,
    backbone_spec,
    build_model,
    input_size,
    model_backbone_spec,
)
from mobiledet_jax.models.ssdlite import SSDLite, preprocess

__all__ = [
    "COMPUTE_DTYPES",
    "Backbone",
    "SSDLite",
    "as_convolutions",
    "backbone_spec",
    "build_model",
    "endpoint_widths",
    "input_size",
    "model_backbone_spec",
    "preprocess",
    "resolve_blocks",
]
