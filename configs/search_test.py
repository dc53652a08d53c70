"""The architecture search in CI: the "test" space (one layer a block) at 64x64, 30 steps.

    python -m mobiledet_jax.search --config=configs/search_test.py[:<table.json>] --workdir=<dir>

Without an argument the shipped ``configs/latency/test_cpu_64.json`` table is used.
"""

import os

from mobiledet_jax.config import search_base_config

SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "latency", "test_cpu_64.json")


def get_config(arg: str = ""):
    config = search_base_config()
    s = config.search
    s.space = "test"
    s.cost_model = arg or SHIPPED_TABLE
    s.reward_batch_size = 8
    s.log_logits_every = 5
    config.model.image_size = 64
    # XLA's convolution: 30 steps never earn back the CPU forms' longer compile (about 2x)
    config.model.conv_form = "conv"
    config.data.synthetic.num_train = 256
    config.data.synthetic.num_val = 16
    t = config.train
    t.num_steps = 30
    t.batch_size = 8
    t.warmup_steps = 5
    t.log_every = 5
    config.checkpoint.every_steps = 10
    config.lock()
    return config
