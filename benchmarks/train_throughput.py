"""Training throughput (images/s) and model FLOP utilization of the train step, per MobileDet.

    python benchmarks/train_throughput.py [--models=mobiledet_cpu,mobiledet_edgetpu] \
        [--batch_size=8] [--steps=10] [--warmup=2] [--dtype=float32|bfloat16] [--json=out.json]

Runs on every device of a single-process run (CPU, GPU or one TPU host, unchanged): a 1-D ``data`` mesh over them, the batch
sharded along it (``--batch_size`` images per device), the state replicated, and the train step of
``mobiledet_jax.training.step`` (the one the trainer jits). The batch is synthetic (random pixels in
[-1, 1] and a few random ground-truth boxes per image) and stays on the devices, so the figures
measure the step alone, no input pipeline.

For each model it reports:

- step time (median over ``--steps`` timed steps after ``--warmup``) and images/s;
- model FLOPs per step: 3x the forward pass (forward + backward, the usual MFU convention), the
  forward counted by XLA's cost analysis of the lowered (unoptimized) training-mode forward, which
  matches 2x the MAdds of docs/reference/architectures.md; the same on every platform. For comparison, XLA's count for the
  whole compiled train step (``XLA GFLOP/img``, what the AOT tool reports for TPUs), which on TPU
  runs ~10-20% above the model count, but on the CPU several times above it: the CPU backend turns
  depthwise-convolution filter gradients into dense convolutions, and the gradient of the
  squeeze-excite full-window average pool is a window reduction counted at H*W per element;
- achieved FLOP/s per device, and MFU: that rate over the dense matmul rate measured in the same
  run on the same devices (a large jitted ``[n, n] @ [n, n]`` per device, f32 and bf16), against
  the matmul of the compute dtype. MFU relative to a measured matmul, not to a datasheet peak.

Prints a table, and one JSON line per model (and ``--json``) for scripts. ``python -m`` is not
needed: the repository root is put on ``sys.path``.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from mobiledet_jax import sharding as sharding_lib  # noqa: E402
from mobiledet_jax.config import base_config  # noqa: E402
from mobiledet_jax.models import input_size  # noqa: E402
from mobiledet_jax.models.layers import CONV_FORMS  # noqa: E402
from mobiledet_jax.training import state as state_lib  # noqa: E402
from mobiledet_jax.training import step as step_lib  # noqa: E402

MOBILEDETS = ("mobiledet_cpu", "mobiledet_dsp", "mobiledet_edgetpu", "mobiledet_gpu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def matmul_rate(mesh, n: int, dtype, reps: int = 5) -> float:
    """Dense matmul FLOP/s per device: one ``[n, n] @ [n, n]`` on each device, best of ``reps``."""
    d = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(sharding_lib.DATA_AXIS))
    keys = jax.random.split(jax.random.key(1), 2)
    make = jax.jit(
        lambda k: jax.random.normal(k, (d, n, n), jnp.float32).astype(dtype), out_shardings=sharding
    )
    a, b = make(keys[0]), make(keys[1])
    mm = jax.jit(
        lambda x, y: jnp.einsum("dij,djk->dik", x, y, preferred_element_type=dtype),
        out_shardings=sharding,
    )
    mm(a, b).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def synthetic_batch(config, batch_size: int, sharding, seed: int = 0, boxes: int = 4) -> dict:
    """A global batch of random images in [-1, 1] and ``boxes`` random boxes per image."""
    rng = np.random.default_rng(seed)
    h, w = input_size(config.model)
    n = config.data.max_boxes
    yx = rng.uniform(0.0, 0.6, (batch_size, n, 2))
    hw = rng.uniform(0.1, 0.4, (batch_size, n, 2))
    mask = np.zeros((batch_size, n), bool)
    mask[:, :boxes] = True
    host = {
        "image": rng.uniform(-1, 1, (batch_size, h, w, 3)).astype(np.float32),
        "gt_boxes": (np.concatenate([yx, yx + hw], -1) * mask[..., None]).astype(np.float32),
        "gt_classes": (rng.integers(0, config.model.num_classes, (batch_size, n)) * mask).astype(
            np.int32
        ),
        "gt_mask": mask,
        "image_id": np.arange(batch_size, dtype=np.int32),
    }
    return {k: jax.device_put(v, sharding) for k, v in host.items()}


def bench_model(name: str, args, mesh) -> dict:
    config = base_config(name)
    config.model.compute_dtype = args.dtype
    config.model.image_size = args.image_size
    config.model.width_multiplier = args.width_multiplier
    batch_size = args.batch_size * mesh.devices.size
    config.train.batch_size = batch_size
    config.model.conv_form = args.conv_form
    model, optimizer, step = step_lib.train_step_for_config(config, mesh)
    size = input_size(config.model)
    state = state_lib.create_train_state(model, optimizer, size, jax.random.key(0), mesh)
    batch = synthetic_batch(config, batch_size, sharding_lib.batch_sharding(mesh))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    devices = mesh.devices.size
    xla_flops = _flops(compiled.cost_analysis())  # per device, as the backend compiled it
    model_flops = 3 * forward_flops(model, state.variables, batch["image"]) / devices
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {
        "model": name,
        "image_size": list(size),
        "width_multiplier": args.width_multiplier,
        "dtype": args.dtype,
        "conv_form": args.conv_form,
        "devices": int(devices),
        "global_batch": batch_size,
        "compile_s": compile_s,
        "step_s": step_s,
        "step_s_min": min(times),
        "images_per_s": batch_size / step_s,
        "model_flops_per_step_per_device": model_flops,
        "xla_flops_per_step_per_device": xla_flops,
        "model_flops_per_image": model_flops * devices / batch_size,
        "achieved_flops_per_s_per_device": model_flops / step_s,
        "loss": float(metrics["loss"]),
    }


def forward_flops(model, variables, images) -> float:
    """XLA's FLOPs of the training-mode forward pass over ``images`` (all devices together)."""
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    lowered = fwd.lower(variables, images)
    return _flops(lowered.cost_analysis()) or _flops(lowered.compile().cost_analysis())


def _flops(cost) -> float:
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MOBILEDETS), help="comma-separated model names")
    p.add_argument("--batch_size", type=int, default=8, help="images per device")
    p.add_argument("--image_size", type=int, default=320)
    p.add_argument(
        "--width_multiplier", type=float, default=1.0, help="depth multiplier (1.0: the paper's)"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype")
    p.add_argument(
        "--conv_form",
        "--depthwise_form",  # its earlier name, kept working
        dest="conv_form",
        choices=CONV_FORMS,
        default="auto",
        help="how convs compute (auto: by backend; conv: XLA's convolution everywhere; "
        "shifted: the CPU forms everywhere)",
    )
    p.add_argument("--matmul_size", type=int, default=0, help="n of the matmul (0: by platform)")
    p.add_argument("--json", default="", help="also write all results to this JSON file")
    args = p.parse_args()

    devices = jax.devices()
    mesh = sharding_lib.make_mesh(ml_collections.ConfigDict({"data": -1}), devices)
    platform = devices[0].platform
    n = args.matmul_size or (2048 if platform == "cpu" else 8192)
    peaks = {k: matmul_rate(mesh, n, dt) for k, dt in DTYPES.items()}
    print(
        f"{len(devices)} x {devices[0].device_kind} ({platform}); dense {n}x{n} matmul per device: "
        + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peaks.items()),
        flush=True,
    )
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = bench_model(name, args, mesh)
        r["matmul_flops_per_s"] = peaks
        r["mfu"] = r["achieved_flops_per_s_per_device"] / peaks[args.dtype]
        results.append(r)
        print(json.dumps(r), flush=True)

    head = (
        f"{'model':<18} {'dtype':<9} {'batch':>5} {'step ms':>9} {'img/s':>8} "
        f"{'GFLOP/img':>9} {'XLA GFLOP/img':>13} {'TFLOP/s/dev':>11} {'MFU':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(
            f"{r['model']:<18} {r['dtype']:<9} {r['global_batch']:>5} {1e3 * r['step_s']:>9.1f} "
            f"{r['images_per_s']:>8.1f} {r['model_flops_per_image'] / 1e9:>9.2f} "
            f"{r['xla_flops_per_step_per_device'] * r['devices'] / r['global_batch'] / 1e9:>13.2f} "
            f"{r['achieved_flops_per_s_per_device'] / 1e12:>11.4f} {100 * r['mfu']:>5.1f}%"
        )
    print(
        f"GFLOP/img: model FLOPs, 3x the forward (XLA cost analysis of the lowered forward); "
        f"XLA GFLOP/img: XLA's count for the compiled train step (inflated on CPU, see --help); "
        f"MFU: model FLOP/s over the measured {args.dtype} {n}x{n} matmul rate, per device"
    )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
