"""The search's ahead-of-time TPU compile (``search.compile_check``, reached through
``python -m mobiledet_jax.aot_compile`` with a search config).

The compile test needs libtpu, no TPU: it compiles ``configs/search_test.py``'s two programs for a
v5e-4 slice in a subprocess and checks the memory against an independent figure, the search
state's own size (every branch's weights, the momentum, the controller) from ``jax.eval_shape``.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from mobiledet_jax.models import input_size
from mobiledet_jax.search import compile_check, searcher
from mobiledet_jax.search import controller as ctl
from mobiledet_jax.search import space as space_lib
from mobiledet_jax.search import supernet as supernet_lib
from mobiledet_jax.sharding import make_mesh
from mobiledet_jax.training.optimizer import make_optimizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(path: str = "configs/search_test.py"):
    spec = importlib.util.spec_from_file_location("search_config", REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_lowers_both_programs_on_any_mesh():
    """The programs lower from abstract inputs alone (no data, no initialised weights), here on
    this host's devices: the reward pass takes the reward batch, the train step the train one."""
    config = _config()
    mesh = make_mesh(ml_collections.ConfigDict({"data": -1}), jax.devices()[:1])
    lowered = compile_check.lower_programs(config, mesh)
    assert set(lowered) == set(compile_check.PROGRAMS)
    size = input_size(config.model)
    shapes = [a.shape for a in jax.tree.leaves(lowered["detect"].args_info)]
    assert (config.search.reward_batch_size, *size, 3) in shapes
    shapes = [a.shape for a in jax.tree.leaves(lowered["train"].args_info)]
    assert (config.train.batch_size, *size, 3) in shapes


def test_batch_that_does_not_divide_is_an_error():
    config = _config()
    config.unlock()
    config.search.reward_batch_size = 6
    with pytest.raises(ValueError, match="search.reward_batch_size=6 does not divide over the 4"):
        compile_check.run(config, "v5e-4")


@pytest.mark.slow
def test_search_compiles_for_a_small_slice(tmp_path):
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail("libtpu is not installed: `pip install -r requirements-tpu-aot.txt` (no TPU)")
    out = tmp_path / "aot.json"
    cmd = [sys.executable, "-m", "mobiledet_jax.aot_compile", "--config=configs/search_test.py",
           "--topology=v5e-4", f"--json={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "search space test on v5e-4" in done.stdout and "fits v5e-4" in done.stdout
    r = json.loads(out.read_text())
    assert r["fits"] and r["space"] == "test"
    assert (r["train"]["batch_per_device"], r["detect"]["batch_per_device"]) == (2, 2)

    # The replicated search state is an argument of the train step on every device.
    config = _config()
    space = space_lib.get_space(config.search.space)
    net = supernet_lib.Supernet(space, config.model.num_classes)
    init = searcher.state_initializer(
        net,
        space,
        input_size(config.model),
        make_optimizer(config.train),
        ctl.make_spec(space),
        ctl.make_optimizer(config.train.num_steps, 5e-3, 0.25),
    )
    state = jax.eval_shape(init, jax.random.key(0, impl="rbg"), jax.random.key(0))
    state_bytes = sum(
        np.dtype(x.dtype).itemsize * x.size
        for x in jax.tree.leaves(state)
        if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # the sampling key: a few bytes
    )
    train = r["train"]["memory_bytes"]
    assert train["arguments"] >= state_bytes > 0
    assert train["aliased"] > 0  # the donated state is updated in place
    # the reward pass holds the weights but not the momentum or the controller
    assert r["detect"]["memory_bytes"]["arguments"] < train["arguments"]
    assert r["train"]["flops_per_device"] > r["detect"]["flops_per_device"] > 0
    assert r["memory_gib"] == max(r["train"]["memory_gib"], r["detect"]["memory_gib"])
    assert 0 < r["memory_gib"] < r["hbm_gib"] == 16
