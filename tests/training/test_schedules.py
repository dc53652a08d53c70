"""The learning-rate schedule against SPEC section 5's formula, and the paper's two schedules."""

import math

import numpy as np
import pytest

from configs import mobiledet_edgetpu
from mobiledet_jax.training import schedules


def _spec_long(step: int) -> float:
    # SPEC section 5, written out: warmup 0.13333 -> 0.8 over 2000 steps, cosine to 0 at 400k.
    if step < 2000:
        return 0.13333 + (0.8 - 0.13333) * step / 2000
    return 0.5 * 0.8 * (1 + math.cos(math.pi * (step - 2000) / 398000))


@pytest.mark.parametrize(
    "step", [0, 1, 999, 1999, 2000, 2001, 50_000, 199_000, 300_000, 399_999, 400_000]
)
def test_long_schedule_matches_the_spec_formula(step):
    sched = schedules.from_config(mobiledet_edgetpu.get_config("long").train)
    np.testing.assert_allclose(float(sched(step)), _spec_long(step), rtol=1e-5, atol=1e-7)


def test_schedule_landmarks():
    sched = schedules.from_config(mobiledet_edgetpu.get_config("long").train)
    assert float(sched(0)) == pytest.approx(0.13333)
    assert float(sched(2000)) == pytest.approx(0.8)
    assert float(sched(201_000)) == pytest.approx(0.4, rel=1e-4)  # half way through the decay
    assert float(sched(400_001)) == 0.0


@pytest.mark.parametrize(
    "schedule, steps, batch, peak", [("long", 400_000, 512, 0.8), ("short", 50_000, 1024, 4.0)]
)
def test_paper_schedules_in_every_config(schedule, steps, batch, peak):
    import importlib

    for name in (
        "mobiledet_cpu", "mobiledet_dsp", "mobiledet_edgetpu", "mobiledet_gpu",
        "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    ):  # fmt: skip
        t = importlib.import_module(f"configs.{name}").get_config(schedule).train
        assert (t.num_steps, t.batch_size, t.base_lr) == (steps, batch, peak), name
        assert (t.momentum, t.l2_weight) == (0.9, 4e-5), name
        sched = schedules.from_config(t)
        assert float(sched(t.warmup_steps)) == pytest.approx(peak)


def test_hold_steps_and_bad_arguments():
    sched = schedules.cosine_decay_with_warmup(1.0, 100, 0.1, 10, hold_steps=20)
    assert float(sched(5)) == pytest.approx(0.1 + 0.9 * 5 / 10)
    assert float(sched(25)) == 1.0
    assert float(sched(30)) == 1.0
    assert float(sched(65)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 35 / 70)))
    with pytest.raises(ValueError, match="total_steps"):
        schedules.cosine_decay_with_warmup(1.0, 10, 0.1, 20)
    with pytest.raises(ValueError, match="base_lr"):
        schedules.cosine_decay_with_warmup(0.1, 100, 1.0, 10)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        mobiledet_edgetpu.get_config("medium")
