"""Quantization-aware training as a config switch (``config.train.qat``), resume and int8 export.

A tiny QAT run of the real training command (tests/helpers/train_harness.py, MobileDet-EdgeTPU at width 0.25,
96x96): the checkpoint carries the ``quant_stats`` collection, a resume restores it and continues
exactly, and ``python -m mobiledet_jax.export --format=int8`` converts the fake-quant model with
those ranges (not PTQ) into a fully int8 file. A layer qwix would leave float is an error.
"""

import json
import shutil
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax import lax

from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.evaluation import tflite_eval
from mobiledet_jax.models import qat
from mobiledet_jax.tflite import flatbuffer
from tests.helpers import train_harness as th

STEPS = 4


def _overrides(root):
    fields = {"model.width_multiplier": 0.25, "train.qat": True, "checkpoint.every_steps": 2,
              "eval.max_batches": 1}  # fmt: skip
    return th.tiny_overrides(root / "data", STEPS, **fields)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    env = th.environment(root / "jax_cache")
    workdir = root / "workdir"
    result = th.run(workdir, _overrides(root), env)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, env, workdir, result


def _stats(workdir, step=None):
    variables = workdir_lib.load_model(str(workdir), step).variables
    return variables, traverse_util.flatten_dict(variables.get("quant_stats", {}))


@pytest.mark.slow
def test_qat_trains_and_checkpoints_quant_stats(qat_run):
    _, _, workdir, result = qat_run
    assert "QAT: calibrated" in result.stderr
    losses = th.losses_by_step(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(v[0]) for v in losses.values())
    assert th.complete_steps(workdir) == [2, 4]
    _, stats = _stats(workdir)
    counts = [int(v) for k, v in stats.items() if k[-1] == "count"]
    # one running average of min/max per fake-quantized tensor: calibration + one per step (the
    # fixed-range model input is re-initialised at each update)
    assert len(counts) > 90 and counts.count(1 + STEPS) >= len(counts) - 1 and min(counts) >= 1
    assert all(np.all(np.isfinite(v)) for v in stats.values())
    assert "AP50" in result.stdout  # the final evaluation ran the fake-quant model


@pytest.mark.slow
def test_qat_resume_restores_quant_stats_exactly(qat_run):
    root, env, workdir, _ = qat_run
    reference, ref_stats = _stats(workdir, STEPS)
    # as if the run had died before its last checkpoint: the same command resumes from step 2
    for d in ("checkpoints/4", "input_state/4", "best"):
        shutil.rmtree(workdir / d)
    result = th.run(workdir, _overrides(root), env)  # same config: the compiled steps are cached
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from checkpoint step 2" in result.stderr
    losses = th.losses_by_step(workdir)
    assert [len(losses[s]) for s in range(1, STEPS + 1)] == [1, 1, 2, 2]
    for s in (3, 4):  # steps 3 and 4 again, on the same batches from the restored state
        np.testing.assert_allclose(losses[s][1], losses[s][0], rtol=1e-5)
    resumed, stats = _stats(workdir, STEPS)
    assert set(stats) == set(ref_stats)
    for k, v in stats.items():
        np.testing.assert_allclose(v, ref_stats[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
    np.testing.assert_allclose(
        resumed["params"]["head"]["BoxPredictor_0"]["ClassPredictor"]["kernel"],
        reference["params"]["head"]["BoxPredictor_0"]["ClassPredictor"]["kernel"],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow
def test_int8_export_of_a_qat_checkpoint_uses_its_quant_stats(qat_run, tmp_path):
    _, env, workdir, _ = qat_run
    out = tmp_path / "qat.tflite"
    cmd = [sys.executable, "-m", "mobiledet_jax.export", f"--workdir={workdir}", "--target=edgetpu",
           "--format=int8", f"--output={out}", "--parity_images=2", "--eval_images=8",
           "--latency_runs=0"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=th.REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "qat.tflite.report.json").read_text())
    e = report["export"]
    assert (e["format"], e["quantization"], e["input"]["dtype"]) == ("int8", "qat", "UINT8")
    assert report["preflight"]["ok"]
    # the file is checked against the fake-quant model it was trained as, not the float one
    assert report["parity"]["reference"] == "fake-quant JAX model (QAT)"
    assert report["coco"]["reference"] == "fake-quant JAX model (QAT)"
    for name, stats in report["parity"]["outputs"].items():
        # the reference is the QAT model in the file's integer arithmetic (models.qat_integer),
        # BN's scale folded and biases snapped first (qat_convert.convert_snapped): every value
        assert stats["within_one_step"] >= 0.99 and stats["max_abs_diff_steps"] <= 1.0, (
            name,
            stats,
        )
    # no PTQ calibration images were drawn: the ranges are the checkpoint's
    assert report["calibration"]["kind"] == "qat" and "images" not in report["calibration"]
    ops = report["ops"]["counts"]
    # int8 throughout (qat_convert.check_int8), the sigmoid included; then the post-processing op
    assert ops["LOGISTIC"] == 1 and ops["TFLite_Detection_PostProcess"] == 1
    assert flatbuffer.quantization(out.read_bytes(), "class_scores") is not None
    # the reported COCO metrics are the file's: scored again by the evaluation code on the same
    # first batch of the run's validation split (--eval_images=8 rounds up to one batch of 16)
    config = workdir_lib.load_config(str(workdir))
    config.eval.batch_size, config.eval.max_batches = 16, 1
    metrics = tflite_eval.evaluate_tflite(config, str(out))
    for k, v in report["coco"]["tflite"].items():
        assert v == pytest.approx(metrics[k], abs=1e-9), k


class _VariableKernelConv(nn.Module):
    """A conv whose kernel is a plain variable, not ``self.param``: qwix never tags it as a weight."""

    @nn.compact
    def __call__(self, x):
        kernel = self.variable("params", "kernel", lambda: jnp.zeros((1, 1, 3, 3))).value
        dn = ("NHWC", "HWIO", "NHWC")
        return x + lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dn)


class _WithStem(nn.Module):
    detector: nn.Module

    @nn.compact
    def __call__(self, images, train: bool = False):
        return self.detector(_VariableKernelConv(name="stem")(images), train=train)


@pytest.mark.slow
def test_qat_of_a_layer_qwix_does_not_quantize_is_an_error(monkeypatch, tmp_path):
    from mobiledet_jax import config as config_lib
    from mobiledet_jax.training import trainer

    c = config_lib.base_config("mobiledet_edgetpu")
    c.model.num_classes, c.model.image_size, c.model.width_multiplier = 4, 96, 0.25
    c.train.num_steps, c.train.warmup_steps, c.train.batch_size, c.train.qat = 2, 1, 8, True
    c.data.cache_dir = str(tmp_path / "data")
    c.data.synthetic.num_train, c.data.synthetic.num_val, c.data.num_shards = 16, 8, 2
    build = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda *args: _WithStem(build(*args)))
    with pytest.raises(
        qat.QatError, match=r"1 conv layer\(s\) not fake-quantized by qwix: \['stem'\]"
    ):
        trainer.train_and_evaluate(c, str(tmp_path / "workdir"))
    assert th.complete_steps(tmp_path / "workdir") == []
