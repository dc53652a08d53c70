"""Ahead-of-time compile of a search's programs for a Cloud TPU slice, on a machine without TPUs.

``python -m mobiledet_jax.aot_compile --config=configs/search_<target>.py --topology=v4-32`` comes
here when the config has a ``search`` block. The search's two device programs that hold real
memory are lowered from abstract inputs only (``jax.eval_shape`` of the search state: every
branch's weights, the SGD momentum, the controller; a training batch and a reward batch sharded
along ``data``) and compiled for the slice's compile-only devices (``training.aot``):

- ``train``: one SGD step of the shared weights on ``config.train.batch_size`` images;
- ``detect``: the reward pass, the supernet's detections on ``config.search.reward_batch_size``
  held-out images (their COCO AP is computed on the host).

Each program's memory per device (``training.aot.report``: arguments, outputs, temporaries, code)
must fit the chip's HBM on its own; the state is an argument of both, so the larger of the two is
what a device needs. The supernet always computes at the widest widths (channel masks), so the
figures hold for every sampled architecture. The roofline of the two programs together estimates
the search's own step time and wall hours (an estimate from the compiled programs; the sample and
controller programs are a few hundred scalar ops and are left out).

Costs nothing but compile time; the programs are the ones ``search.searcher`` jits
(``build_programs``), so a search that compiles here compiles there.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections

from mobiledet_jax import sharding
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.models import input_size
from mobiledet_jax.models.factory import resolve_compute_dtype
from mobiledet_jax.search import controller as ctl
from mobiledet_jax.search import space as space_lib
from mobiledet_jax.search import supernet as supernet_lib
from mobiledet_jax.search.searcher import build_programs, state_initializer
from mobiledet_jax.tpu_slices import TpuSlice
from mobiledet_jax.training import aot
from mobiledet_jax.training.optimizer import make_optimizer

PROGRAMS = ("train", "detect")


def lower_programs(config: ml_collections.ConfigDict, mesh) -> dict:
    """``jax.stages.Lowered`` of the search's ``train`` and ``detect`` programs on ``mesh``."""
    s, t = config.search, config.train
    space = space_lib.get_space(s.space)
    size = input_size(config.model)
    anchor_settings = anchors_lib.AnchorSettings.from_config(config.detection.anchors)
    anchors = anchors_lib.anchors_from_config(config.detection.anchors, *size)
    net = supernet_lib.Supernet(
        space,
        config.model.num_classes,
        anchors_per_location=tuple(anchors_lib.anchors_per_location(anchor_settings)),
        conv_form=config.model.conv_form,
        dtype=jnp.dtype(resolve_compute_dtype(config.model.compute_dtype)),
        remat=config.search.remat,
    )
    cspec = ctl.make_spec(space)
    ctx = ctl.make_optimizer(t.num_steps, s.controller_lr, s.rl_delay)
    tx = make_optimizer(t)
    init = state_initializer(net, space, size, tx, cspec, ctx)
    state = jax.eval_shape(
        init, jax.random.key(config.seed, impl="rbg"), jax.random.key(config.seed)
    )
    rep, data_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    weights = jax.ShapeDtypeStruct(
        supernet_lib.uniform_weights(space).shape, "float32", sharding=rep
    )
    _, train, detect, _ = build_programs(config, net, space, anchors, cspec, ctx, tx, mesh)
    return {
        "train": train.lower(state, weights, aot.abstract_batch(config, t.batch_size, data_sh)),
        "detect": detect.lower(
            state.params, weights, aot.abstract_batch(config, s.reward_batch_size, data_sh)
        ),
    }


def run(config: ml_collections.ConfigDict, topology: str, top_ops: int = 0) -> dict:
    """Compiles the search's programs for ``topology``; returns ``{"train": report, "detect":
    report, "fits": bool, "memory_gib": max, "search": {...}}`` (reports of ``training.aot``).

    Raises ValueError (bad slice or batch), MemoryError (XLA ran out of memory) or RuntimeError
    (no libtpu, another compile error), each with a message."""
    tpu = TpuSlice.parse(topology)
    for name, batch in (
        ("train.batch_size", config.train.batch_size),
        ("search.reward_batch_size", config.search.reward_batch_size),
    ):
        if batch % tpu.devices:
            raise ValueError(
                f"config.{name}={batch} does not divide over the {tpu.devices} JAX devices of "
                f"{tpu.topology}; set it to a multiple of {tpu.devices}"
            )
    mesh, config = aot.slice_mesh(tpu), aot.resolved_for_tpu(config)
    start = time.perf_counter()
    lowered = lower_programs(config, mesh)
    out = {}
    for name in PROGRAMS:
        compiled = aot.compile_lowered(lowered[name], f"the search's {name} program")
        batch = config.train.batch_size if name == "train" else config.search.reward_batch_size
        out[name] = aot.report(compiled, tpu, config, batch, top_ops)
    step_s = sum(out[n]["roofline"]["step_s"] for n in PROGRAMS)
    out.update(
        topology=tpu.topology,
        space=config.search.space,
        fits=all(out[n]["fits"] for n in PROGRAMS),
        memory_gib=max(out[n]["memory_gib"] for n in PROGRAMS),
        hbm_gib=tpu.hbm_gib,
        search={
            "num_steps": config.train.num_steps,
            "step_s_roofline": step_s,
            "wall_hours_roofline": step_s * config.train.num_steps / 3600,
        },
        compile_s=time.perf_counter() - start,
    )
    return out


def format_report(r: dict) -> str:
    lines = [f"search space {r['space']} on {r['topology']}:"]
    for name in PROGRAMS:
        p = r[name]
        what = "train step" if name == "train" else "reward pass"
        lines.append(
            f"  {name} ({what}, {p['global_batch']} images = {p['batch_per_device']} per device): "
            f"{p['memory_gib']:.2f} GiB per device of {p['hbm_gib']:g} GiB HBM "
            f"({100 * p['memory_gib'] / p['hbm_gib']:.0f}%), "
            f"{p['flops_per_device'] / 1e9:.1f} GFLOP per device, roofline "
            f"{p['roofline']['step_s'] * 1e3:.1f} ms ({p['roofline']['bound']}-bound)"
        )
    s = r["search"]
    lines += [
        f"memory per device: {r['memory_gib']:.2f} GiB (the larger program) of {r['hbm_gib']:g} GiB",
        f"roofline estimate (not a measurement): {s['step_s_roofline'] * 1e3:.1f} ms a search "
        f"step, {s['num_steps']:,} steps in {s['wall_hours_roofline']:.1f} h wall",
        f"compile: {r['compile_s']:.0f} s",
    ]
    return "\n".join(lines)
