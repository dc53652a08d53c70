"""Quickstart: a MobileDet trained on the embedded synthetic dataset on a CPU in minutes.

SSDLite + MobileDet-EdgeTPU at half width (the TF1 depth multiplier 0.5) and 128x128 input, trained
from scratch on the synthetic shapes (no download), then evaluated with COCO metrics on its val split.
Every other setting (loss, optimizer, schedule shape, augmentation, checkpoints) is the full
framework's; only the sizes are small. For a full-size model use configs/mobiledet_*.py.
"""

from mobiledet_jax.config import base_config


def get_config(arg: str = ""):
    del arg
    config = base_config("mobiledet_edgetpu")
    config.model.num_classes = 4  # the synthetic dataset's classes
    config.model.image_size = 128
    config.model.width_multiplier = 0.5
    t = config.train
    t.num_steps = 600
    t.batch_size = 16
    t.base_lr = 0.2
    t.warmup_lr = 0.02
    t.warmup_steps = 50
    t.log_every = 25
    config.checkpoint.every_steps = 150
    config.eval.every_steps = 0  # evaluate once, at the end
    config.eval.batch_size = 32
    config.lock()
    return config
