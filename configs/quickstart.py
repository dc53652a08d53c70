"""Quickstart: a MobileDet trained on the embedded synthetic dataset on a CPU in about ten minutes.

SSDLite + MobileDet-GPU at width 0.35 (the TF1 depth multiplier) and 160x160 input, trained from
scratch for 800 steps of 16 images on 4096 synthetic training images (no download), then evaluated
with COCO metrics on the 128 val images. Every other setting (loss, optimizer, schedule shape,
checkpoints) is the full framework's; only the sizes are small. For a full-size model use
configs/mobiledet_*.py.

Why these choices (measured on 2 CPU cores, see README): MobileDet-GPU is built mostly of regular
(fused / Tucker) convolutions, which XLA runs well on a CPU: 24.7 training images/s at this size
against 12.1 for MobileDet-EdgeTPU and 11.4 for MobileDet-CPU (benchmarks/train_throughput.py
--image_size=160 --width_multiplier=0.35 --batch_size=16), and it learns more per step. With the
CPU conv forms (config.model.conv_form) MobileDet-EdgeTPU and -CPU now train faster per step
(0.39 against 0.54 s here), but over the 800 steps MobileDet-GPU still reaches the best AP (0.607
against 0.416 and 0.222) at about the same AP per second (benchmarks/quickstart_models.py). At 128x128
the SSD anchor grids leave 43% of the val objects without any anchor of IoU >= 0.5 (24% at 160);
with the default 512 training images the model fits train far better than val; and SSD random
cropping slows the first few hundred steps down.
"""

from mobiledet_jax.config import apply_quickstart_recipe, base_config


def get_config(arg: str = ""):
    del arg
    config = base_config("mobiledet_gpu")
    apply_quickstart_recipe(config)  # 4 classes, 160x160, 800 steps of 16, SGD 0.2 (config.py)
    config.model.width_multiplier = 0.35
    config.lock()
    return config
