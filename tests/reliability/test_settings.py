"""Every setting is checked before any data is prepared or anything compiled (``config_checks``):
each bad value of the issue is a one-line ConfigError naming the field, found in milliseconds by the
check itself, and two of them through the train command (exit 2, nothing created)."""

import os
import subprocess
import time

import pytest

from mobiledet_jax import config_checks
from mobiledet_jax.config import ConfigError
from tests.helpers import train_harness as th
from tests.helpers.tiny_configs import tiny_config


def _config(tmp_path, **fields):
    c = tiny_config(tmp_path / "cache")
    c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 10, 8, 2
    for key, value in fields.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


BAD = {
    # field: (value, what the message names, devices)
    "num_steps=0": ({"train.num_steps": 0}, "train.num_steps", 1),
    "negative steps": ({"train.num_steps": -5}, "train.num_steps", 1),
    "train batch 0": ({"train.batch_size": 0}, "train.batch_size", 1),
    "train batch over 3 devices": (
        {"train.batch_size": 8},
        "train.batch_size=8 does not divide",
        3,
    ),
    "eval batch over 3 devices": (
        {"train.batch_size": 12, "eval.max_batches": -1},
        "eval.batch_size=8 does not divide over the 3 devices: use 6 or 9",
        3,
    ),
    "mesh does not fit": ({"mesh.data": 3}, "mesh.data", 4),
    "checkpoint.every_steps=0": ({"checkpoint.every_steps": 0}, "checkpoint.every_steps", 1),
    "train.log_every=0": ({"train.log_every": 0}, "train.log_every", 1),
    "negative eval interval": ({"eval.every_steps": -1}, "eval.every_steps", 1),
    "keep 0 checkpoints": ({"checkpoint.keep": 0}, "checkpoint.keep", 1),
    "image_size=7": ({"model.image_size": 7}, "model.image_size is 7", 1),
    "image_height=16": ({"model.image_height": 16}, "model.image_height is 16", 1),
    "negative learning rate": ({"train.base_lr": -0.1}, "train.base_lr", 1),
    "zero peak": ({"train.base_lr": 0.0}, "train.base_lr", 1),
    "negative warmup rate": ({"train.warmup_lr": -1e-3}, "train.warmup_lr", 1),
    "NaN learning rate": ({"train.base_lr": float("nan")}, "train.base_lr", 1),
    "warmup above the peak": ({"train.warmup_lr": 1.0, "train.base_lr": 0.1}, "above the peak", 1),
    "warmup as long as the run": ({"train.warmup_steps": 10}, "shorter than the run", 1),
    "unknown model": ({"model.name": "mobiledet_tpu"}, "model.name", 1),
    "zero classes": ({"model.num_classes": 0}, "model.num_classes", 1),
    "unknown conv form": ({"model.conv_form": "im2col"}, "model.conv_form", 1),
    "negative BN freeze delay": (
        {"train.qat": True, "train.qat_bn_freeze_delay": -1},
        "train.qat_bn_freeze_delay is -1",
        1,
    ),
    "BN freeze delay without QAT": (
        {"train.qat_bn_freeze_delay": 5},
        "qat_bn_freeze_delay needs QAT with folded BatchNorm",
        1,
    ),
    "BN freeze delay, BN not folded": (
        {"train.qat": True, "train.qat_fold_bn": False, "train.qat_bn_freeze_delay": 5},
        "qat_bn_freeze_delay needs QAT with folded BatchNorm",
        1,
    ),
    "unknown source": ({"data.source": "csv"}, "data.source", 1),
    "momentum 1.5": ({"train.momentum": 1.5}, "train.momentum", 1),
    "eval split": ({"eval.split": "test"}, "eval.split", 1),
    "missing annotations": (
        {"data.source": "coco_json", "data.coco_json.train_annotations": "/nonexistent/a.json"},
        "/nonexistent/a.json does not exist",
        1,
    ),
    "missing init_from": (
        {"checkpoint.init_from": "/nonexistent/run"},
        "checkpoint.init_from: /nonexistent/run does not exist",
        1,
    ),
    "bad init_from_step": (
        {"checkpoint.init_from": "/", "checkpoint.init_from_step": "newest"},
        "init_from_step",
        1,
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_setting_is_one_line_naming_the_field(tmp_path, name):
    fields, expected, devices = BAD[name]
    config = _config(tmp_path, **fields)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        config_checks.check_train_config(config, devices, str(tmp_path / "w"))
    assert time.monotonic() - t0 < 1.0
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "w").exists() and not (tmp_path / "cache").exists()


def test_good_settings_pass_and_zero_means_never_where_documented(tmp_path):
    config = _config(tmp_path, **{"eval.every_steps": 0, "train.nan_check_every": 0})
    config_checks.check_train_config(config, 1, str(tmp_path / "w"))
    # without evaluations the eval batch does not have to divide over the devices
    config = _config(tmp_path, **{"train.batch_size": 12, "eval.max_batches": 0})
    config_checks.check_train_config(config, 3, str(tmp_path / "w"))


def test_an_unwritable_workdir_or_output_is_refused(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode)
    )
    with pytest.raises(ConfigError, match=r"--workdir .*run is not writable"):
        config_checks.check_train_config(_config(tmp_path), 1, str(tmp_path / "new" / "run"))
    with pytest.raises(ConfigError, match="--output .*model.tflite is not writable"):
        config_checks.check_writable(tmp_path / "model.tflite", "--output")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        config_checks.check_writable(tmp_path / "file" / "run", "--workdir")


def test_bad_export_options_are_refused(tmp_path):
    from mobiledet_jax.export import exporter

    good = exporter.ExportOptions()
    config_checks.check_export(good, str(tmp_path / "m.tflite"))
    for field, value in (
        ("representative_images", -1),
        ("eval_batch_size", 0),
        ("latency_runs", -1),
    ):
        opts = exporter.ExportOptions(**{field: value})
        with pytest.raises(ConfigError, match=f"--{field}"):
            config_checks.check_export(opts, str(tmp_path / "m.tflite"))
    with pytest.raises(ConfigError, match="must be a file path"):
        config_checks.check_export(good, str(tmp_path))


@pytest.mark.parametrize(
    "extra, devices, expected",
    [
        ({"checkpoint.every_steps": 0}, 1, "config.checkpoint.every_steps is 0"),
        (
            {"train.batch_size": 9, "eval.max_batches": 1},
            3,
            "eval.batch_size=8 does not divide over the 3 devices",
        ),
    ],
)
def test_the_train_command_refuses_before_preparing_or_compiling(
    tmp_path, extra, devices, expected
):
    work = tmp_path / "w"
    overrides = th.tiny_overrides(tmp_path / "data", 3, **extra)
    env = th.environment(tmp_path / "jax_cache", devices=devices)
    t0 = time.monotonic()
    proc = subprocess.run(
        th.command(work, overrides),
        cwd=th.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train: ")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not work.exists() and not (tmp_path / "data").exists()
    assert not (tmp_path / "jax_cache").exists()  # nothing was compiled
    assert elapsed < 60, elapsed  # the imports only
