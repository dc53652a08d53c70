"""SSDLite + MobileDet-CPU at 320x320 on COCO (90 classes), as the TF1 reference config."""

from mobiledet_jax.config import base_config


def get_config():
    config = base_config("mobiledet_cpu")
    config.lock()
    return config
