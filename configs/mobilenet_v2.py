"""SSDLite + MobileNetV2 at 320x320 on COCO (90 classes): the paper's baseline.

The OD API sample (ssdlite_mobilenet_v2_coco.config) resizes to 300x300; the MobileDet paper compares
every detector at 320x320, as here.
"""

from mobiledet_jax.config import base_config


def get_config(schedule: str = "long"):
    """``--config=configs/mobilenet_v2.py:short`` selects the paper's 50K-step schedule."""
    config = base_config("mobilenet_v2", schedule or "long")
    config.lock()
    return config
