"""Ahead-of-time compile of the train step for a Cloud TPU slice, on a machine without TPUs.

    python -m mobiledet_jax.aot_compile --config=configs/mobiledet_edgetpu.py --topology=v4-32 \
        [--config.train.batch_size=512] [--json=/tmp/aot.json]

Needs libtpu, and no TPU: ``pip install -r requirements-tpu-aot.txt`` (the libtpu that
``jax[tpu]`` pins for the installed jax). libtpu describes the slice as compile-only devices; the
command builds the ``data`` mesh over them, abstract (``ShapeDtypeStruct``) train state and batch
(state replicated, batch sharded along ``data``), lowers and compiles the train step of
``mobiledet_jax.training.step`` (the function the trainer jits) and prints, per device:

- memory from ``compiled.memory_analysis()``: arguments, outputs (aliased with the donated state),
  temporaries, generated code and their total against the device's HBM;
- FLOPs per step from ``compiled.cost_analysis()`` (per device, and times the device count).

The global batch is ``config.train.batch_size`` (the schedule's: 512 long, 1024 short); each device
gets ``batch / devices``. Topologies are ``<family>-<N>`` as in ``launch/slices.py``: v2/v3/v4/v5p
count TensorCores (v4-32 = 16 chips), v5e/v6e count chips (v5e-256 = 256 chips); v2/v3 expose one
JAX device per core, the others one per chip. Exit status: 0 fits, 1 does not fit the HBM,
2 bad arguments, libtpu missing or another compile error.
"""

import dataclasses
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mobiledet_jax import sharding
from mobiledet_jax.models import input_size
from mobiledet_jax.training import state as state_lib
from mobiledet_jax.training import step as step_lib

GIB = 1024**3
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}


@dataclasses.dataclass(frozen=True)
class _Family:
    libtpu: str  # the generation in libtpu's topology names ("v5" is v5p)
    dims: int  # 2-D torus (v2, v3, v5e, v6e) or 3-D (v4, v5p)
    counts_cores: bool  # N of <family>-<N> counts TensorCores (2 per chip), else chips
    megacore: bool  # one JAX device per chip (both cores), else one per core
    hbm_gib: float  # per JAX device


FAMILIES = {
    "v2": _Family("v2", 2, True, False, 8),
    "v3": _Family("v3", 2, True, False, 16),
    "v4": _Family("v4", 3, True, True, 32),
    "v5p": _Family("v5", 3, True, True, 95),
    "v5e": _Family("v5e", 2, False, False, 16),
    "v6e": _Family("v6e", 2, False, False, 32),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice such as ``v4-32``: chips, JAX devices, libtpu topology name and HBM per device."""

    name: str
    family: str
    chips: int
    devices: int
    shape: tuple[int, ...]  # chips along each torus axis
    hbm_gib: float

    @classmethod
    def parse(cls, name: str) -> "Topology":
        m = re.fullmatch(r"([a-z0-9]+?)-(\d+)", name.strip().lower())
        if not m:
            raise ValueError(f"topology {name!r} is not <family>-<N>, e.g. v4-32 or v5e-256")
        family, n = _ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
        if family not in FAMILIES:
            raise ValueError(
                f"unknown TPU family {m.group(1)!r} in {name!r}; known: {sorted(FAMILIES)}"
            )
        fam = FAMILIES[family]
        chips = n // 2 if fam.counts_cores else n
        if fam.counts_cores and (n < 8 or n % 8):
            raise ValueError(f"{name}: {family}-N counts TensorCores, N is a multiple of 8")
        if chips < 1 or chips & (chips - 1) or chips == 2:
            raise ValueError(
                f"{name}: {chips} chips; this tool knows slices of 1, 4, 8, 16, ... chips"
            )
        devices = chips if fam.megacore else chips * (2 if fam.counts_cores else 1)
        return cls(f"{family}-{n}", family, chips, devices, _torus(chips, fam.dims), fam.hbm_gib)

    @property
    def libtpu_name(self) -> str:
        return f"{FAMILIES[self.family].libtpu}:{'x'.join(map(str, self.shape))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """4 chips per host (2x2), but a single 1-chip or 8-chip (2x4) v5e/v6e host."""
        if self.chips < 4 or (self.chips == 8 and not FAMILIES[self.family].counts_cores):
            return (*self.shape, 1)[:3] if len(self.shape) == 2 else self.shape
        return (2, 2, 1)


def _torus(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU slice shapes: from 2x2(x1), double the smallest axis, the last one on ties."""
    if chips == 1:
        return (1,) * dims
    shape = [2, 2] + [1] * (dims - 2)
    while math.prod(shape) < chips:
        i = max(j for j, s in enumerate(shape) if s == min(shape))
        shape[i] *= 2
    return tuple(shape)


def abstract_batch(config: ml_collections.ConfigDict, batch_size: int, sharding=None) -> dict:
    """``ShapeDtypeStruct``s of a training batch, as ``mobiledet_jax.data`` yields it."""
    h, w = input_size(config.model)
    n = config.data.max_boxes
    shapes = {
        "image": ((batch_size, h, w, 3), jnp.float32),
        "gt_boxes": ((batch_size, n, 4), jnp.float32),
        "gt_classes": ((batch_size, n), jnp.int32),
        "gt_mask": ((batch_size, n), jnp.bool_),
        "image_id": ((batch_size,), jnp.int32),
    }
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}


def lower_train_step(config: ml_collections.ConfigDict, mesh, batch_size: int):
    """``jax.stages.Lowered`` of the trainer's train step on ``mesh``, from abstract inputs only."""
    model, optimizer, step = step_lib.train_step_for_config(config, mesh)
    size = input_size(config.model)
    state = jax.eval_shape(
        lambda rng: state_lib.create_train_state(model, optimizer, size, rng, mesh),
        jax.random.key(config.seed),
    )
    replicated = sharding.replicated(mesh)
    state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), state
    )
    batch = abstract_batch(config, batch_size, sharding.batch_sharding(mesh))
    return step.lower(state, batch)


def topology_devices(topology: Topology) -> list:
    """Compile-only devices of the slice, from libtpu (no TPU needed)."""
    from jax._src import cloud_tpu_init
    from jax.experimental import topologies

    if cloud_tpu_init.get_tpu_library_path() is None:
        raise RuntimeError(
            f"libtpu is not installed, so there is no TPU compiler here. Install the libtpu that "
            f"jax[tpu]=={jax.__version__} pins: `pip install -r requirements-tpu-aot.txt` "
            f'(or `pip install "jax[tpu]=={jax.__version__}"`); no TPU is needed'
        )
    # Quiet libtpu's host probing (no TPU VM metadata here), and allow a second process to load it
    # alongside one (e.g. a pytest run) that already holds /tmp/libtpu_lockfile: compile only.
    for key, value in {
        "TPU_SKIP_MDS_QUERY": "1",
        "TPU_ACCELERATOR_TYPE": topology.name,
        "TPU_WORKER_HOSTNAMES": "localhost",
        "TPU_WORKER_ID": "0",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }.items():
        os.environ.setdefault(key, value)
    desc = topologies.get_topology_desc(
        topology.libtpu_name,
        "tpu",
        chip_config_name="megacore" if FAMILIES[topology.family].megacore else "default",
        chips_per_host_bounds=topology.chips_per_host_bounds,
        num_slices=1,
    )
    return list(desc.devices)


def report(compiled, topology: Topology, config, batch_size: int) -> dict:
    """Per-device memory and FLOPs of a compiled step, as a JSON-ready dict."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temps = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    code = mem.generated_code_size_in_bytes
    total = args + outs - alias + temps + code
    flops = float(cost.get("flops", 0.0))
    h, w = input_size(config.model)
    return {
        "topology": topology.name,
        "libtpu_topology": topology.libtpu_name,
        "chips": topology.chips,
        "devices": topology.devices,
        "model": config.model.name,
        "image_size": [h, w],
        "compute_dtype": config.model.compute_dtype,
        "schedule": config.train.schedule,
        "global_batch": batch_size,
        "batch_per_device": batch_size // topology.devices,
        "memory_bytes": {
            "arguments": args,
            "outputs": outs,
            "aliased": alias,
            "temps": temps,
            "generated_code": code,
            "total": total,
        },
        "memory_gib": total / GIB,
        "hbm_gib": topology.hbm_gib,
        "fits": total <= topology.hbm_gib * GIB,
        "flops_per_device": flops,
        "flops_total": flops * topology.devices,
        "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0)),
    }


def format_report(r: dict) -> str:
    b = {k: v / GIB for k, v in r["memory_bytes"].items()}
    h, w = r["image_size"]
    return "\n".join([
        f"{r['model']} {h}x{w} {r['compute_dtype']} on {r['topology']} (libtpu {r['libtpu_topology']}: "
        f"{r['chips']} chips, {r['devices']} JAX devices)",
        f"global batch {r['global_batch']} = {r['batch_per_device']} per device",
        f"memory per device (GiB): arguments {b['arguments']:.3f}, outputs {b['outputs']:.3f} "
        f"(aliased {b['aliased']:.3f}), temps {b['temps']:.3f}, code {b['generated_code']:.3f}",
        f"memory per device: {r['memory_gib']:.2f} GiB of {r['hbm_gib']:g} GiB HBM "
        f"({100 * r['memory_gib'] / r['hbm_gib']:.0f}%)",
        f"FLOPs per step (XLA): {r['flops_per_device'] / 1e9:.1f} GFLOP per device, "
        f"{r['flops_total'] / 1e9:.1f} GFLOP in all, "
        f"{r['flops_total'] / r['global_batch'] / 1e9:.2f} GFLOP per image",
        f"compile: {r['compile_s']:.0f} s",
    ])  # fmt: skip


def run(config: ml_collections.ConfigDict, topology_name: str) -> dict:
    """Compiles for ``topology_name``; raises ValueError/RuntimeError with a message on failure."""
    topology = Topology.parse(topology_name)
    batch = config.train.batch_size
    if batch % topology.devices:
        raise ValueError(
            f"global batch {batch} does not divide over the {topology.devices} JAX devices of "
            f"{topology.name}; set --config.train.batch_size to a multiple of {topology.devices}"
        )
    devices = topology_devices(topology)
    if len(devices) != topology.devices:
        raise RuntimeError(f"libtpu gave {len(devices)} devices for {topology.name}")
    mesh_config = ml_collections.ConfigDict({"data": -1})
    mesh = sharding.make_mesh(mesh_config, devices)
    start = time.perf_counter()
    lowered = lower_train_step(config, mesh, batch)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            raise MemoryError(str(e)) from e
        raise RuntimeError(f"XLA could not compile the train step: {e}") from e
    r = report(compiled, topology, config, batch)
    r["compile_s"] = time.perf_counter() - start
    return r


FLAGS = flags.FLAGS


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v4-32, v5e-256, v5p-8", required=True)
    flags.DEFINE_string("json", None, "also write the report to this JSON file")


def main(argv) -> None:
    del argv
    if FLAGS.config is None:
        print("aot_compile: --config is required", file=sys.stderr)
        sys.exit(2)
    jax.config.update("jax_platforms", "cpu")  # the host needs only the CPU; TPUs are abstract
    try:
        r = run(FLAGS.config, FLAGS.topology)
    except MemoryError as e:
        print(f"aot_compile: DOES NOT FIT {FLAGS.topology}: {str(e)[-3000:]}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, RuntimeError) as e:
        print(f"aot_compile: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(r))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(r, f, indent=1)
    if not r["fits"]:
        print(
            f"aot_compile: DOES NOT FIT: {r['memory_gib']:.2f} GiB per device > "
            f"{r['hbm_gib']:g} GiB HBM on {r['topology']}",
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"fits {r['topology']}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
