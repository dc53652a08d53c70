"""The architecture search on two CPU cores: the "tiny" space (IBN + Fused, three widths, at most
two layers a block, ReLU6 without SE) at 160x160 on the embedded synthetic data, 600 steps.

    python -m mobiledet_jax.latency_table --target=cpu --space=tiny --image_size=160 \
        --num_classes=4 --output=<dir>/tiny_cpu_160.json
    python -m mobiledet_jax.search --config=configs/search_tiny.py:<dir>/tiny_cpu_160.json \
        --workdir=<search dir> [--config.search.c0_scale=0.7]

The argument is the latency table (``config.search.cost_model``); without one the table shipped in
``configs/latency/tiny_cpu_160.json`` (measured on the project's 2-core VM, idle) is used.

Measured on 2 idle cores (``benchmarks/search_demo.py``): the first step (compilation) 76 s, then
3-6 s a step while the op warm-up still mixes every branch, about 2 s a step after it (the
supernet computes every chosen op at its widest width; 0.3-0.4 s of it is the reward batch's
detection and 0.08 s its COCO AP). 600 steps: about 25 minutes, so the demonstration's three
searches fit one CPU session; the TuNAS schedule fractions (warm-ups, controller delay) scale
with the step count.
"""

import os

from mobiledet_jax.config import search_base_config

SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "latency", "tiny_cpu_160.json")


def get_config(arg: str = ""):
    config = search_base_config()
    config.search.space = "tiny"
    config.search.cost_model = arg or SHIPPED_TABLE
    config.model.image_size = 160
    config.train.num_steps = 600
    config.train.batch_size = 16
    config.search.reward_batch_size = 32
    config.lock()
    return config
