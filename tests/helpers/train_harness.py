"""Runs the real training command (``python -m mobiledet_jax.train``) as a subprocess for tests.

Every run uses a tiny setting of the quickstart config (MobileDet-EdgeTPU width 0.35 at 96x96, batch 8,
64 synthetic training images), one metrics line per step, and a compilation cache shared by the
test session, so that repeated runs of the same configuration compile once.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
FAULT_RUNNER = pathlib.Path(__file__).with_name("train_fault_runner.py")


def tiny_overrides(cache_dir, steps: int, **extra) -> list[str]:
    fields = {
        # the test model is pinned here, whatever configs/quickstart.py trains
        "model.name": "mobiledet_edgetpu",
        "model.width_multiplier": 0.35,
        "model.image_size": 96,
        # XLA's convolution: this tiny program compiles in half the time of the CPU forms (about
        # 27 against 50 s), which a few steps never earn back; the CPU forms are held equal to it
        # in tests/models/test_conv_forms.py, and the 8-vs-1-device test trains in them
        "model.conv_form": "conv",
        "train.num_steps": steps,
        "train.batch_size": 8,
        "train.warmup_steps": 2,
        "train.log_every": 1,
        "checkpoint.every_steps": 4,
        "eval.batch_size": 8,
        "eval.max_batches": 0,
        "data.cache_dir": str(cache_dir),
        "data.synthetic.num_train": 64,
        "data.synthetic.num_val": 16,
        "data.num_shards": 4,
        "data.shuffle_buffer": 64,
    }
    fields.update(extra)
    return [f"--config.{k}={v}" for k, v in fields.items()]


def environment(compile_cache, devices: int = 1) -> dict:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": str(compile_cache),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return env


def command(workdir, overrides: list[str], runner: str | None = None) -> list[str]:
    entry = [str(runner)] if runner else ["-m", "mobiledet_jax.train"]
    return [
        sys.executable,
        *entry,
        f"--config={REPO / 'configs' / 'quickstart.py'}",  # runs from any working directory
        f"--workdir={workdir}",
        *overrides,
    ]


def run(workdir, overrides, env, timeout=900, runner=None, cwd=REPO) -> subprocess.CompletedProcess:
    """Runs training to its end (``workdir`` may be relative to ``cwd``)."""
    proc = subprocess.run(
        command(workdir, overrides, runner),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def start(workdir, overrides, env, runner=None) -> subprocess.Popen:
    return subprocess.Popen(
        command(workdir, overrides, runner),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def metrics(workdir) -> list[dict]:
    """Every line of ``train_metrics.jsonl`` (steps repeat after a resume from an older step)."""
    path = pathlib.Path(workdir) / "train_metrics.jsonl"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:  # a line cut by SIGKILL
            pass
    return out


def losses_by_step(workdir) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for m in metrics(workdir):
        if "loss" in m:
            out.setdefault(m["step"], []).append(m["loss"])
    return out


def wait_for_step(proc: subprocess.Popen, workdir, step: int, after_lines: int, timeout=900):
    """Waits until the run has logged ``step`` (in lines past ``after_lines``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logged = [m["step"] for m in metrics(workdir)[after_lines:] if "loss" in m]
        if logged and max(logged) >= step:
            return max(logged)
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"training exited ({proc.returncode}) early:\n{out[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def stop(proc: subprocess.Popen, sig: int, timeout=300) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def complete_steps(workdir) -> list[int]:
    """Checkpoint steps that orbax finished (its temporary folders are not steps)."""
    root = pathlib.Path(workdir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
