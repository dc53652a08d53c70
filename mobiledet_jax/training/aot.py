"""Ahead-of-time compile of the train step for a Cloud TPU slice, on a machine without TPUs.

Needs libtpu, and no TPU (``pip install -r requirements-tpu-aot.txt``). libtpu describes the slice
as compile-only devices (``topology_devices``); ``run`` builds the ``data`` mesh over them, abstract
(``ShapeDtypeStruct``) train state and batch (state replicated, batch sharded along ``data``),
lowers and compiles the train step of ``training.step`` (the function the trainer jits) and
``report`` gives, per device:

- memory from ``compiled.memory_analysis()``: arguments, outputs (aliased with the donated state),
  temporaries, generated code and their total against the device's HBM;
- FLOPs and bytes accessed per step from ``compiled.cost_analysis()`` (per device, and times the
  device count); every key it returns is kept under ``cost_analysis``, the compiler's own step
  time estimate (``optimal_seconds`` on TPU) among them;
- the roofline of ``training.roofline`` on those figures and the chip's published peaks: step
  time, images/s per chip and slice, the paper's two schedules in wall hours and chip-hours;
- where the bytes go (``training.hlo_costs`` on ``compiled.as_text()``): HBM bytes as laid out,
  and with ``top_ops`` the largest ops by bytes and by FLOPs and the largest modules by bytes,
  each with the Flax module it comes from and its shapes and layouts as compiled.

All of it is an estimate from the compiled program, not a measurement.

The global batch is ``config.train.batch_size``; each device gets ``batch / devices``. Slices are
``mobiledet_jax.tpu_slices.TpuSlice`` (``<family>-<N>``, as the launcher names them). The command
line is ``python -m mobiledet_jax.aot_compile``.
"""

import os
import time

import jax
import ml_collections

from mobiledet_jax import sharding
from mobiledet_jax.data import schema
from mobiledet_jax.models import input_size
from mobiledet_jax.models.factory import resolve_compute_dtype
from mobiledet_jax.tpu_slices import TpuSlice
from mobiledet_jax.training import hlo_costs, roofline
from mobiledet_jax.training import state as state_lib
from mobiledet_jax.training import step as step_lib

GIB = 1024**3


def abstract_batch(config: ml_collections.ConfigDict, batch_size: int, sharding=None) -> dict:
    """``ShapeDtypeStruct``s of a training batch, as ``mobiledet_jax.data`` yields it."""
    spec = schema.batch_spec(batch_size, input_size(config.model), config.data.max_boxes)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in spec.items()}


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


def topology_devices(tpu: TpuSlice) -> list:
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
        "TPU_ACCELERATOR_TYPE": tpu.topology,
        "TPU_WORKER_HOSTNAMES": "localhost",
        "TPU_WORKER_ID": "0",
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    }.items():
        os.environ.setdefault(key, value)
    desc = topologies.get_topology_desc(
        tpu.libtpu_name,
        "tpu",
        chip_config_name="megacore" if tpu.facts.megacore else "default",
        chips_per_host_bounds=tpu.chips_per_host_bounds,
        num_slices=1,
    )
    return list(desc.devices)


def report(compiled, tpu: TpuSlice, config, batch_size: int, top_ops: int = 0) -> dict:
    """Per-device memory, FLOPs, bytes, roofline and HLO costs of a compiled step (JSON-ready)."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    cost = {k: float(v) for k, v in (cost or {}).items()}
    args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temps = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    code = mem.generated_code_size_in_bytes
    total = args + outs - alias + temps + code
    flops = cost.get("flops", 0.0)
    bytes_accessed = cost.get("bytes accessed", 0.0)
    per_device = batch_size // tpu.devices
    h, w = input_size(config.model)
    r = {
        "topology": tpu.topology,
        "libtpu_topology": tpu.libtpu_name,
        "chips": tpu.chips,
        "devices": tpu.devices,
        "hosts": tpu.hosts,
        "model": config.model.name,
        "image_size": [h, w],
        "compute_dtype": config.model.compute_dtype,
        "bn_one_pass_min_pixels": config.model.get("bn_one_pass_min_pixels", 0),
        "schedule": config.train.schedule,
        "global_batch": batch_size,
        "batch_per_device": per_device,
        "memory_bytes": {
            "arguments": args,
            "outputs": outs,
            "aliased": alias,
            "temps": temps,
            "generated_code": code,
            "total": total,
        },
        "memory_gib": total / GIB,
        "hbm_gib": tpu.hbm_gib,
        "fits": total <= tpu.hbm_gib * GIB,
        "flops_per_device": flops,
        "flops_total": flops * tpu.devices,
        "bytes_accessed_per_device": bytes_accessed,
        "compiler_optimal_s": cost.get("optimal_seconds"),
        "roofline": roofline.roofline(
            tpu, flops, bytes_accessed, per_device, cost.get("optimal_seconds")
        ),
        "cost_analysis": cost,
    }
    text = compiled.as_text() if hasattr(compiled, "as_text") else None
    if text:
        hlo = hlo_costs.summary(text, top_ops)
        if not top_ops:
            hlo = {k: v for k, v in hlo.items() if not k.startswith("top_")}
        r["hlo"] = hlo
        # the same roofline on the HBM bytes alone (XLA's "bytes accessed" also counts operands
        # that live in on-chip VMEM): the lower of the two estimates of the memory time
        r["roofline_hlo_hbm"] = roofline.roofline(tpu, flops, hlo["bytes"], per_device)
    return r


def _top_lines(r: dict) -> list[str]:
    hlo = r.get("hlo", {})
    if not hlo.get("top_by_bytes"):
        return []
    gb = 1e9
    lines = [f"top ops by bytes (HLO, HBM as laid out; {hlo['bytes'] / gb:.2f} GB in all):"]
    for o in hlo["top_by_bytes"]:
        lines.append(
            f"  {o['bytes'] / gb:7.3f} GB ({o['logical_bytes'] / gb:.3f} unpadded) "
            f"{o['flops'] / 1e9:7.2f} GFLOP  {o['pass']:8s} {o['module']}  [{o['opcode']}] "
            f"-> {o['output']}"
        )
    lines.append("top ops by FLOPs:")
    for o in hlo["top_by_flops"]:
        lines.append(
            f"  {o['flops'] / 1e9:7.2f} GFLOP {o['bytes'] / gb:7.3f} GB  {o['pass']:8s} "
            f"{o['module']}  [{o['opcode']}] -> {o['output']}"
        )
    lines.append("top modules by bytes:")
    for m in hlo["top_modules_by_bytes"]:
        lines.append(
            f"  {m['bytes'] / gb:7.3f} GB ({m['logical_bytes'] / gb:.3f} unpadded) "
            f"{m['flops'] / 1e9:7.2f} GFLOP {m['ops']:4d} ops  {m['pass']:8s} {m['module']}"
        )
    return lines


def format_report(r: dict) -> str:
    b = {k: v / GIB for k, v in r["memory_bytes"].items()}
    h, w = r["image_size"]
    lines = [
        f"{r['model']} {h}x{w} {r['compute_dtype']}"
        + (f", one-pass BN on maps >= {r['bn_one_pass_min_pixels']} px" if r.get("bn_one_pass_min_pixels") else "")
        + f" on {r['topology']} (libtpu {r['libtpu_topology']}: "
        f"{r['chips']} chips, {r['devices']} JAX devices)",
        f"global batch {r['global_batch']} = {r['batch_per_device']} per device",
        f"memory per device (GiB): arguments {b['arguments']:.3f}, outputs {b['outputs']:.3f} "
        f"(aliased {b['aliased']:.3f}), temps {b['temps']:.3f}, code {b['generated_code']:.3f}",
        f"memory per device: {r['memory_gib']:.2f} GiB of {r['hbm_gib']:g} GiB HBM "
        f"({100 * r['memory_gib'] / r['hbm_gib']:.0f}%)",
        f"FLOPs per step (XLA): {r['flops_per_device'] / 1e9:.1f} GFLOP per device, "
        f"{r['flops_total'] / r['global_batch'] / 1e9:.2f} GFLOP per image",
    ]  # fmt: skip
    if "roofline" in r:
        f = r["roofline"]
        compiler = f["compiler_s"]
        lines += [
            f"bytes accessed per step (XLA): {r['bytes_accessed_per_device'] / 1e9:.2f} GB per "
            f"device, {f['bytes_per_image'] / 1e9:.3f} GB per image; intensity "
            f"{f['arithmetic_intensity']:.1f} FLOP/byte (chip ridge {f['ridge_intensity']:.0f})",
            f"roofline estimate (not a measurement): {f['step_s'] * 1e3:.1f} ms per step "
            f"({f['bound']}-bound: compute {f['compute_s'] * 1e3:.1f} ms at "
            f"{f['chip_peak_bf16_flops'] / 1e12:g} TFLOP/s, memory {f['memory_s'] * 1e3:.1f} ms at "
            f"{f['chip_hbm_bytes_per_s'] / 1e9:g} GB/s); compiler's estimate "
            + (
                f"{compiler * 1e3:.1f} ms"
                if compiler
                else f"unusable (optimal_seconds = {r.get('compiler_optimal_s')})"
            ),
            f"predicted images/s: {f['images_per_s_per_chip']:.0f} per chip, "
            f"{f['images_per_s_per_slice']:.0f} per slice, {f['images_per_s_per_host']:.0f} per "
            f"host ({f['chips_per_host']} chips, {f['host_vcpus']} vCPUs)",
        ]
        for name, s in f["schedules"].items():
            lines.append(
                f"predicted {name} schedule ({s['num_steps']:,} steps x {s['batch_size']}): "
                f"{s['wall_hours']:.1f} h wall, {s['chip_hours']:.0f} chip-hours"
            )
    if "hlo" in r:
        x = r["hlo"]
        lines.append(
            f"HLO ops: {x['ops']}, HBM bytes as laid out {x['bytes'] / 1e9:.2f} GB "
            f"({x['logical_bytes'] / 1e9:.2f} unpadded; all memory spaces "
            f"{x['all_spaces_bytes'] / 1e9:.2f}), MXU {x['flops'] / 1e9:.1f} GFLOP"
        )
    if "roofline_hlo_hbm" in r:
        f = r["roofline_hlo_hbm"]
        lines.append(
            f"roofline on HBM bytes alone (estimate): {f['step_s'] * 1e3:.1f} ms per step "
            f"({f['bound']}-bound), {f['images_per_s_per_chip']:.0f} images/s per chip"
        )
    lines += _top_lines(r)
    lines.append(f"compile: {r['compile_s']:.0f} s")
    return "\n".join(lines)


def slice_mesh(tpu: TpuSlice):
    """The ``data`` mesh over the slice's compile-only devices."""
    devices = topology_devices(tpu)
    if len(devices) != tpu.devices:
        raise RuntimeError(f"libtpu gave {len(devices)} devices for {tpu.topology}")
    return sharding.make_mesh(ml_collections.ConfigDict({"data": -1}), devices)


def resolved_for_tpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``compute_dtype="auto"`` resolved for a TPU (the host is a CPU)."""
    dtype = resolve_compute_dtype(config.model.compute_dtype, "tpu")
    if dtype != config.model.compute_dtype:
        config = config.copy_and_resolve_references()
        config.model.compute_dtype = dtype  # an existing field: allowed on a locked config
    return config


def compile_lowered(lowered, what: str):
    """``lowered.compile()``; XLA out of memory is a MemoryError, any other failure a RuntimeError."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            raise MemoryError(f"{what}: {e}") from e
        raise RuntimeError(f"XLA could not compile {what}: {e}") from e


def run(config: ml_collections.ConfigDict, topology: str, top_ops: int = 0) -> dict:
    """Compiles for the slice ``topology`` (e.g. ``v4-32``); returns the ``report`` (with the
    ``top_ops`` largest ops and modules when > 0).

    Raises ValueError (bad slice or batch), MemoryError (XLA ran out of memory) or RuntimeError
    (no libtpu, another compile error), each with a message."""
    tpu = TpuSlice.parse(topology)
    batch = config.train.batch_size
    if batch % tpu.devices:
        raise ValueError(
            f"global batch {batch} does not divide over the {tpu.devices} JAX devices of "
            f"{tpu.topology}; set --config.train.batch_size to a multiple of {tpu.devices}"
        )
    mesh, config = slice_mesh(tpu), resolved_for_tpu(config)
    start = time.perf_counter()
    compiled = compile_lowered(lower_train_step(config, mesh, batch), "the train step")
    r = report(compiled, tpu, config, batch, top_ops)
    r["compile_s"] = time.perf_counter() - start
    return r
