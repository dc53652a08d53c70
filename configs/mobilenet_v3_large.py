"""SSDLite + MobileNetV3-Large (detection variant) at 320x320 on COCO (90 classes): a paper baseline.

As ssdlite_mobilenet_v3_large_320x320_coco.config in the TF1 Object Detection API.
"""

from mobiledet_jax.config import base_config


def get_config(schedule: str = "long"):
    """``--config=configs/mobilenet_v3_large.py:short`` selects the paper's 50K-step schedule."""
    config = base_config("mobilenet_v3_large", schedule or "long")
    config.lock()
    return config
