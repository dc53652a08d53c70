"""The architecture search on two CPU cores: the "tiny" space (IBN + Fused, three widths, at most
two layers a block, ReLU6 without SE) at 160x160 on the embedded synthetic data, 1500 steps.

    python -m mobiledet_jax.latency_table --target=cpu --space=tiny --image_size=160 \
        --num_classes=4 --output=<dir>/tiny_cpu_160.json
    python -m mobiledet_jax.search --config=configs/search_tiny.py:<dir>/tiny_cpu_160.json \
        --workdir=<search dir> [--config.search.c0_scale=0.7]

The argument is the latency table (``config.search.cost_model``); without one the table shipped in
``configs/latency/tiny_cpu_160.json`` (measured on the project's 2-core CI machine) is used.

Measured: 81-109 s a step during the op warm-up on 2 busy cores (every branch at the widest
widths); the 1500 steps do not fit a CPU session yet (README, Architecture search).
"""

import os

from mobiledet_jax.config import search_base_config

SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "latency", "tiny_cpu_160.json")


def get_config(arg: str = ""):
    config = search_base_config()
    config.search.space = "tiny"
    config.search.cost_model = arg or SHIPPED_TABLE
    config.model.image_size = 160
    config.train.num_steps = 1500
    config.train.batch_size = 16
    config.search.reward_batch_size = 32
    config.lock()
    return config
