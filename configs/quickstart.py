"""Quickstart: a MobileDet trained on the embedded synthetic dataset on a CPU in about ten minutes.

The full SSDLite + MobileDet-EdgeTPU architecture at a reduced input size, trained from scratch on the
synthetic shapes (no download), then evaluated with COCO metrics on its val split.
"""

from mobiledet_jax.config import base_config


def get_config(arg: str = ""):
    del arg
    config = base_config("mobiledet_edgetpu")
    config.model.num_classes = 4  # the synthetic dataset's classes
    config.model.image_size = 160
    t = config.train
    t.num_steps = 1500
    t.batch_size = 16
    t.base_lr = 0.2
    t.warmup_lr = 0.02
    t.warmup_steps = 100
    t.log_every = 50
    config.checkpoint.every_steps = 500
    config.eval.every_steps = 0  # evaluate once, at the end
    config.eval.batch_size = 32
    config.lock()
    return config
