"""The roofline of ``training.roofline`` against hand-computed figures (no compile), and the chip
table of ``tpu_chips`` against the slices of ``tpu_slices``."""

import pytest

from mobiledet_jax.config import SCHEDULES
from mobiledet_jax.tpu_chips import CHIPS, host_vcpus
from mobiledet_jax.tpu_slices import FAMILIES, TpuSlice
from mobiledet_jax.training.roofline import input_cores_needed, roofline


def test_memory_bound_v5e_16_by_hand():
    # v5e: 197 TFLOP/s bf16, 819 GB/s. 1.97 TFLOP = 10 ms of compute, 16.38 GB = 20 ms of traffic:
    # memory-bound, 20 ms per step of 16 images = 800 images/s per chip, 12,800 on 16 chips,
    # 3,200 per host (4 hosts of 4 chips, 112 vCPUs each).
    r = roofline(TpuSlice.parse("v5e-16"), 1.97e12, 16.38e9, 16, compiler_s=0.012)
    assert r["compute_s"] == pytest.approx(0.010)
    assert r["memory_s"] == pytest.approx(0.020)
    assert r["step_s"] == pytest.approx(0.020) and r["bound"] == "memory"
    assert r["compiler_s"] == 0.012  # kept beside ours, not mixed in
    assert r["flops_per_image"] == pytest.approx(1.97e12 / 16)
    assert r["bytes_per_image"] == pytest.approx(16.38e9 / 16)
    assert r["arithmetic_intensity"] == pytest.approx(1.97e12 / 16.38e9)
    assert r["images_per_s_per_chip"] == pytest.approx(800)
    assert r["images_per_s_per_slice"] == pytest.approx(12_800)
    assert (r["chips_per_host"], r["host_vcpus"]) == (4, 112)
    assert r["images_per_s_per_host"] == pytest.approx(3_200)
    # long: 400K x 512 = 204.8M images / 12,800 per s = 16,000 s = 4.44 h, x 16 chips.
    long, short = r["schedules"]["long"], r["schedules"]["short"]
    assert long["wall_hours"] == pytest.approx(16_000 / 3600)
    assert long["chip_hours"] == pytest.approx(16 * 16_000 / 3600)
    # short: 50K x 1024 = 51.2M images / 12,800 = 4,000 s.
    assert short["wall_hours"] == pytest.approx(4_000 / 3600)
    assert (long["num_steps"], long["batch_size"]) == (400_000, 512)
    assert (short["num_steps"], short["batch_size"]) == (50_000, 1024)
    assert "not a measurement" in r["estimate"]


def test_compute_bound_and_two_devices_per_chip():
    # v3-8: 4 chips, 8 JAX devices (one per TensorCore): each device has half the chip's 123
    # TFLOP/s and 900 GB/s. 1.23 TFLOP per device = 20 ms; 0.9 GB = 2 ms: compute-bound.
    r = roofline(TpuSlice.parse("v3-8"), 1.23e12, 0.9e9, 8)
    assert r["compute_s"] == pytest.approx(0.020) and r["memory_s"] == pytest.approx(0.002)
    assert r["bound"] == "compute"
    assert r["images_per_s_per_chip"] == pytest.approx(2 * 8 / 0.020)  # two devices per chip
    assert r["images_per_s_per_slice"] == pytest.approx(4 * 800)
    assert r["chips_per_host"] == 4


def test_single_host_slice_vcpus_and_input_cores():
    r = roofline(TpuSlice.parse("v5e-8"), 1.97e12, 16.38e9, 16)
    assert (r["chips_per_host"], r["host_vcpus"]) == (8, 224)
    assert r["images_per_s_per_host"] == pytest.approx(8 * 800)
    assert input_cores_needed(6_400, 100.0) == pytest.approx(64)
    assert host_vcpus("v5e", 4) == 112 and host_vcpus("v4", 4) == CHIPS["v4"].host_vcpus


def test_chip_table_covers_every_family_and_matches_hbm():
    assert set(CHIPS) == set(FAMILIES)
    for family, chip in CHIPS.items():
        assert chip.peak_bf16_flops > 1e13 and chip.hbm_bytes_per_s > 1e11
        assert chip.peak_f32_highest_flops == pytest.approx(chip.peak_bf16_flops / 6)
        # the slice table's HBM per JAX device, times devices per chip, is the chip's
        per_chip = 2 if family in ("v2", "v3") else 1
        assert FAMILIES[family].hbm_gib * per_chip == pytest.approx(chip.hbm_gb, rel=0.05)
    assert set(SCHEDULES) == {"long", "short"}
