"""``config.model.compute_dtype``: "auto" is bfloat16 on TPU and float32 elsewhere (this CPU)."""

import jax.numpy as jnp
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import build_model
from mobiledet_jax.models.factory import resolve_compute_dtype


def test_auto_resolves_by_platform():
    assert resolve_compute_dtype("auto", "tpu") == "bfloat16"
    assert resolve_compute_dtype("auto", "gpu") == "float32"
    assert resolve_compute_dtype("auto", "cpu") == "float32"
    assert resolve_compute_dtype("auto") == "float32"  # the tests run on a CPU
    assert resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_compute_dtype("float32", "tpu") == "float32"


def test_build_model_resolves_and_refuses_unknown_dtypes():
    cfg = config_lib.base_config().model
    cfg.compute_dtype = "auto"
    assert build_model(cfg).dtype == jnp.float32
    cfg.compute_dtype = "bfloat16"
    assert build_model(cfg).dtype == jnp.bfloat16
    cfg.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype must be 'auto' or one of"):
        build_model(cfg)
