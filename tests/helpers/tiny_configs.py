"""The tiny in-process config the evaluation and browsing tests share: MobileDet-EdgeTPU on the
4-class synthetic data at 96x96, with few images so that a split is prepared in a second."""

from mobiledet_jax import config as config_lib


def tiny_config(cache_dir, num_train=32, num_val=16, num_shards=2, eval_batch_size=8):
    c = config_lib.base_config("mobiledet_edgetpu")
    c.model.num_classes = 4
    c.model.width_multiplier = 0.35
    c.model.image_size = 96
    c.model.conv_form = "conv"  # compiles in half the time of the CPU forms (train_harness.py)
    c.data.cache_dir = str(cache_dir)
    c.data.synthetic.num_train = num_train
    c.data.synthetic.num_val = num_val
    c.data.num_shards = num_shards
    c.data.shuffle_buffer = num_train
    if eval_batch_size:
        c.eval.batch_size = eval_batch_size
    return c
