"""What a train step should cost on a TPU slice, from its compiled FLOPs and bytes: a roofline.

A device's step takes at least ``max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)``: the compute
and the memory traffic of the compiled program, each at the chip's published peak
(``mobiledet_jax.tpu_chips``; a v2/v3 chip's figures are shared by its two JAX devices). From that
step time follow images/s per chip and per slice, the wall time and chip-hours of the paper's two
schedules (``config.SCHEDULES``: 400K steps x 512, 50K x 1024), and how many images/s each host
must feed.

These are estimates from the compiled program, never measurements: real steps are slower (no op
reaches both peaks, collectives and host input are not in it, and a step at the schedule's global
batch has another per-device batch than the compiled one; the schedules are priced at the compiled
program's cost per image). ``compiler_s`` is the compiler's own estimate of the step
(``cost_analysis()["optimal_seconds"]`` on TPU), shown beside ours where it exists; libtpu 0.0.42
returns a negative value for multi-device train steps (e.g. -49.96 s for MobileDet-EdgeTPU on
v5e-16), which is kept in the report's ``cost_analysis`` but is not an estimate, so it is None here.
"""

from mobiledet_jax.config import SCHEDULES
from mobiledet_jax.tpu_chips import CHIPS, host_vcpus
from mobiledet_jax.tpu_slices import TpuSlice


def roofline(
    tpu: TpuSlice,
    flops_per_device: float,
    bytes_per_device: float,
    batch_per_device: int,
    compiler_s: float | None = None,
) -> dict:
    """The roofline estimate of one step of ``batch_per_device`` images per device on ``tpu``."""
    chip = CHIPS[tpu.family]
    per_chip = tpu.devices // tpu.chips  # JAX devices per chip (2 on v2/v3, else 1)
    peak = chip.peak_bf16_flops / per_chip
    bandwidth = chip.hbm_bytes_per_s / per_chip
    compute_s = flops_per_device / peak
    memory_s = bytes_per_device / bandwidth
    step_s = max(compute_s, memory_s)
    per_chip_rate = batch_per_device * per_chip / step_s if step_s else 0.0
    slice_rate = per_chip_rate * tpu.chips
    chips_per_host = tpu.chips // tpu.hosts
    schedules = {}
    for name, s in SCHEDULES.items():
        hours = s["num_steps"] * s["batch_size"] / slice_rate / 3600 if slice_rate else 0.0
        schedules[name] = {
            "num_steps": s["num_steps"],
            "batch_size": s["batch_size"],
            "wall_hours": hours,
            "chip_hours": hours * tpu.chips,
        }
    return {
        "estimate": "roofline from the compiled program, not a measurement",
        "flops_per_image": flops_per_device / batch_per_device,
        "bytes_per_image": bytes_per_device / batch_per_device,
        "arithmetic_intensity": flops_per_device / bytes_per_device if bytes_per_device else 0.0,
        "chip_peak_bf16_flops": chip.peak_bf16_flops,
        "chip_peak_f32_highest_flops": chip.peak_f32_highest_flops,
        "chip_hbm_bytes_per_s": chip.hbm_bytes_per_s,
        "ridge_intensity": chip.peak_bf16_flops / chip.hbm_bytes_per_s,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "step_s": step_s,
        "bound": "memory" if memory_s >= compute_s else "compute",
        "compiler_s": compiler_s if compiler_s and compiler_s > 0 else None,
        "images_per_s_per_chip": per_chip_rate,
        "images_per_s_per_slice": slice_rate,
        "chips_per_host": chips_per_host,
        "images_per_s_per_host": per_chip_rate * chips_per_host,
        "host_vcpus": host_vcpus(tpu.family, chips_per_host),
        "schedules": schedules,
    }


def input_cores_needed(images_per_s_per_host: float, images_per_s_per_core: float) -> float:
    """Host cores the augmented input needs to keep one host's chips fed at the predicted rate."""
    return images_per_s_per_host / images_per_s_per_core
