"""SSDLite + MobileDet-CPU at 320x320 on COCO (90 classes), as the TF1 reference config.

Schedules (``--config=configs/mobiledet_cpu.py:<schedule>``): ``long`` (default; 400K steps, batch 512,
peak LR 0.8, the TF1 reference config) or ``short`` (50K steps, batch 1024, peak LR 4.0).
"""

from mobiledet_jax.config import base_config


def get_config(schedule: str = "long"):
    config = base_config("mobiledet_cpu", schedule or "long")
    config.lock()
    return config
