"""Ahead-of-time TPU compile (``mobiledet_jax.aot_compile``, library ``training.aot``): topology
names, errors, a real compile.

The compile test needs libtpu (``pip install -r requirements-tpu-aot.txt``), no TPU. It compiles the
real train step of a small MobileDet-EdgeTPU (64x64, width 0.25) for a v5e-4 slice in a subprocess,
as ``launch/launch_checks.py`` does, and checks the reported memory and FLOPs against independent
figures: the train state's size, the slice's HBM, and XLA's (pre-optimization) FLOP count of the
same step lowered for the CPU with the per-device batch.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest

from launch import slices as launch_slices
from mobiledet_jax.config import base_config
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.sharding import make_mesh
from mobiledet_jax.tpu_slices import TpuSlice
from mobiledet_jax.training import aot
from mobiledet_jax.training.optimizer import make_optimizer
from mobiledet_jax.training.state import create_train_state

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = {
    "model.name": "mobiledet_edgetpu",
    "model.image_size": 64,
    "model.width_multiplier": 0.25,
    "train.batch_size": 8,
}


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mobiledet_jax.aot_compile", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "name, libtpu_name, chips, devices, hosts_bounds",
    [
        ("v2-32", "v2:4x4", 16, 32, (2, 2, 1)),  # the paper's 4x4 TPU-v2 slice, 32 replicas
        ("v3-8", "v3:2x2", 4, 8, (2, 2, 1)),
        ("v4-8", "v4:2x2x1", 4, 4, (2, 2, 1)),
        ("v4-32", "v4:2x2x4", 16, 16, (2, 2, 1)),
        ("v4-128", "v4:4x4x4", 64, 64, (2, 2, 1)),
        ("v5p-8", "v5:2x2x1", 4, 4, (2, 2, 1)),
        ("v5e-1", "v5e:1x1", 1, 1, (1, 1, 1)),
        ("v5litepod-8", "v5e:2x4", 8, 8, (2, 4, 1)),
        ("v5e-16", "v5e:4x4", 16, 16, (2, 2, 1)),
        ("v5e-256", "v5e:16x16", 256, 256, (2, 2, 1)),
        ("v6e-64", "v6e:8x8", 64, 64, (2, 2, 1)),
    ],
)
def test_topology_names(name, libtpu_name, chips, devices, hosts_bounds):
    t = TpuSlice.parse(name)
    assert (t.libtpu_name, t.chips, t.devices, t.chips_per_host_bounds) == (
        libtpu_name,
        chips,
        devices,
        hosts_bounds,
    )
    # The same class as the launcher's, which passes --topology=<family>-<N>.
    assert launch_slices.TpuSlice is TpuSlice
    assert TpuSlice.parse(t.topology) == t


@pytest.mark.parametrize("bad", ["v9-8", "v4-12", "v5e-3", "tpu", "v4_32"])
def test_bad_topology_is_an_error(bad):
    with pytest.raises(ValueError):
        TpuSlice.parse(bad)


def test_unknown_topology_exits_nonzero_with_a_message():
    """No libtpu needed: the topology is checked before anything is compiled."""
    done = _run("--config=configs/quickstart.py", "--topology=v9-8", timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "unknown TPU family 'v9'" in done.stderr


def test_batch_that_does_not_divide_exits_nonzero():
    done = _run(
        "--config=configs/mobiledet_edgetpu.py",
        "--topology=v5e-256",
        "--config.train.batch_size=100",
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "does not divide over the 256 JAX devices" in done.stderr


def test_missing_libtpu_says_how_to_install(monkeypatch):
    from jax._src import cloud_tpu_init

    monkeypatch.setattr(cloud_tpu_init, "get_tpu_library_path", lambda: None)
    with pytest.raises(RuntimeError, match="pip install -r requirements-tpu-aot.txt"):
        aot.topology_devices(TpuSlice.parse("v5e-4"))


class _FakeCompiled:
    """Stands in for ``jax.stages.Compiled`` with given memory figures (bytes)."""

    def __init__(self, temps: int, error: Exception | None = None):
        self.temps, self.error = temps, error

    def compile(self):
        if self.error is not None:
            raise self.error
        return self

    def memory_analysis(self):
        return SimpleNamespace(
            argument_size_in_bytes=10,
            output_size_in_bytes=10,
            alias_size_in_bytes=10,
            temp_size_in_bytes=self.temps,
            generated_code_size_in_bytes=0,
        )

    def cost_analysis(self):
        return {"flops": 1e9}


@pytest.mark.parametrize(
    "fake, expected",
    [
        (_FakeCompiled(20 * aot.GIB), None),  # compiles, but the total is over 16 GiB
        (
            _FakeCompiled(0, jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory")),
            MemoryError,
        ),
        (_FakeCompiled(0, jax.errors.JaxRuntimeError("INTERNAL: boom")), RuntimeError),
    ],
)
def test_does_not_fit_and_compile_errors(monkeypatch, fake, expected):
    """What the exit status is decided on, without compiling: over the HBM, or XLA out of memory."""
    monkeypatch.setattr(aot, "topology_devices", lambda t: jax.devices()[:1])
    monkeypatch.setattr(aot, "lower_train_step", lambda config, mesh, batch: fake)
    config = _small_config()
    if expected is None:
        r = aot.run(config, "v5e-1")
        assert not r["fits"] and r["memory_gib"] > r["hbm_gib"] == 16
    else:
        with pytest.raises(expected):
            aot.run(config, "v5e-1")


def _small_config() -> ml_collections.ConfigDict:
    config = base_config("mobiledet_edgetpu")
    config.model.num_classes = 4  # as configs/quickstart.py
    for key, value in SMALL.items():
        block, field = key.split(".")
        setattr(config[block], field, value)
    return config


@pytest.mark.slow
def test_aot_compile_small_slice(tmp_path):
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail(
            "libtpu is not installed: the TPU ahead-of-time compile test needs it (no TPU). "
            "Run `pip install -r requirements-tpu-aot.txt`."
        )
    out = tmp_path / "aot.json"
    overrides = [f"--config.{k}={v}" for k, v in SMALL.items()]
    done = _run(
        "--config=configs/quickstart.py", "--topology=v5e-4", f"--json={out}", "--top_ops=3",
        *overrides,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "fits v5e-4" in done.stdout
    assert "roofline estimate (not a measurement)" in done.stdout
    assert "top ops by bytes" in done.stdout
    r = json.loads(out.read_text())
    assert (r["devices"], r["global_batch"], r["batch_per_device"]) == (4, 8, 2)
    assert r["libtpu_topology"] == "v5e:2x2" and r["hbm_gib"] == 16 and r["fits"]

    # Memory: the replicated state is an argument of every device; the total is under the HBM.
    config = _small_config()
    model = build_model(config.model)
    optimizer = make_optimizer(config.train)
    mesh = make_mesh(ml_collections.ConfigDict({"data": -1}), jax.devices()[:1])
    state = jax.eval_shape(
        lambda rng: create_train_state(model, optimizer, input_size(config.model), rng, mesh),
        jax.random.key(0),
    )
    state_bytes = sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(state))
    mem = r["memory_bytes"]
    assert mem["arguments"] >= state_bytes > 0
    assert mem["aliased"] > 0  # the donated state is updated in place
    assert 0 < mem["temps"] and 0 < mem["total"] < 16 * aot.GIB
    assert r["memory_gib"] == pytest.approx(mem["total"] / aot.GIB)

    # FLOPs: the TPU program of one device does the work of the per-device batch; XLA's count of
    # the same step lowered (unoptimized) for one CPU device with that batch is an independent
    # estimate. The TPU count runs ~10-20% higher (fusions, padding), not 2x.
    cpu_flops = aot.lower_train_step(config, mesh, 2).cost_analysis()["flops"]
    assert 0.8 < r["flops_per_device"] / cpu_flops < 1.6, (r["flops_per_device"], cpu_flops)
    assert r["flops_total"] == pytest.approx(4 * r["flops_per_device"])

    # Every key of cost_analysis() is kept; the roofline is built on its FLOPs and bytes.
    cost, roof = r["cost_analysis"], r["roofline"]
    assert cost["flops"] == r["flops_per_device"] and "bytes accessed" in cost
    assert cost["bytes accessed"] == r["bytes_accessed_per_device"] > 0
    assert roof["bytes_per_image"] == pytest.approx(r["bytes_accessed_per_device"] / 2)
    assert roof["step_s"] == max(roof["compute_s"], roof["memory_s"]) > 0
    assert roof["images_per_s_per_slice"] == pytest.approx(4 * roof["images_per_s_per_chip"])
    assert set(roof["schedules"]) == {"long", "short"}

    # Where the bytes go: the HLO's own MXU FLOP count is close to XLA's; the top ops name the
    # Flax modules they come from.
    hlo = r["hlo"]
    assert 0.8 < hlo["flops"] / r["flops_per_device"] < 1.3, (hlo["flops"], r["flops_per_device"])
    assert len(hlo["top_by_bytes"]) == len(hlo["top_by_flops"]) == 3
    assert hlo["top_by_flops"][0]["module"].startswith("SSDLite/")
    assert hlo["top_by_flops"][0]["pass"] in ("forward", "backward")
    assert 0 < hlo["bytes"] <= hlo["all_spaces_bytes"]
