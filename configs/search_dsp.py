"""The MobileDets search for the dsp target on a TPU slice (``config.search_tpu_config``).

    python -m mobiledet_jax.search --config=configs/search_dsp.py[:<ibn|ibn_fused|ibn_fused_tucker>][:final] \
        --workdir=gs://<bucket>/<dir> --config.search.cost_model=<table.json> --config.search.c0_ms=<target>

The variant is the paper's ablation (default ibn_fused_tucker); ``final`` runs 100K steps instead
of 50K. The latency table comes from ``python -m mobiledet_jax.latency_table`` (docs/search.md).
"""

from mobiledet_jax.config import search_tpu_config


def get_config(arg: str = ""):
    config = search_tpu_config("dsp", arg)
    config.lock()
    return config
