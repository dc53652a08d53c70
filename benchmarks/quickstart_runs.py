"""Quickstart training runs for the benchmarks that compare recipes: run one, read its figures.

``train(config, workdir, overrides)`` runs ``python -m mobiledet_jax.train --config=<config>
--workdir=<workdir> --config.<key>=<value> ...`` in the repository root and returns its wall
seconds (a finished workdir is only re-read: the trainer re-evaluates it; an interrupted one
resumes). ``read_run(workdir)`` reads its ``train_metrics.jsonl`` and every
``eval_<step>/metrics.json``: the loss curve, every evaluation (step, AP, AP@0.5) and the training
seconds per step, taken as the median over the logged windows (so that neither the first
window's compile nor the evaluations and checkpoints inside later windows count).
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def train(config: str, workdir: pathlib.Path, overrides: dict) -> float:
    cmd = [
        sys.executable,
        "-m",
        "mobiledet_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
    ]
    cmd += [f"--config.{key}={value}" for key, value in overrides.items()]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def read_run(workdir: pathlib.Path) -> dict:
    lines = (workdir / "train_metrics.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, lines) if "loss" in r]
    evals = sorted(workdir.glob("eval_*/metrics.json"), key=lambda p: int(p.parent.name[5:]))
    if not evals:
        raise FileNotFoundError(f"{workdir}: no eval_<step>/metrics.json (training not finished?)")
    # every evaluation is logged as eval/* scalars; the final one also has its eval_<step> folder
    points = [
        (r["step"], r["eval/AP"], r["eval/AP50"]) for r in map(json.loads, lines) if "eval/AP" in r
    ]
    for path in evals:
        metrics = json.loads(path.read_text())["metrics"]
        step = int(path.parent.name[5:])
        points = [p for p in points if p[0] != step] + [(step, metrics["AP"], metrics["AP50"])]
    points.sort()
    config = json.loads((workdir / "config.json").read_text())
    batch = config["train"]["batch_size"]
    step_s = batch / statistics.median(r["images_per_sec"] for r in rows[1:] or rows)
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    half = steps.max() / 2
    return {
        "steps": steps.tolist(),
        "loss": loss.tolist(),
        "evals": points,
        "AP": points[-1][1],
        "AP50": points[-1][2],
        "step_s": step_s,
        "train_s": step_s * int(steps.max()),
        "loss_first_half": float(loss[(steps > 100) & (steps <= half)].mean()),
        "loss_second_half": float(loss[steps > half].mean()),
    }


def write_results(
    named_runs: dict, figure: Callable[[str], None], figure_path: str, json_path: str
):
    """``figure(figure_path)`` and ``named_runs`` (run name: its figures) as JSON, where asked."""
    if figure_path:
        figure(figure_path)
        print(f"figure: {figure_path}")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(named_runs) + "\n")


def add_run_flags(p: argparse.ArgumentParser, root: str, figure_help: str) -> None:
    """The flags every quickstart comparison takes: the config, where runs go, what is written."""
    p.add_argument("--config", default="configs/quickstart.py")
    p.add_argument("--root", default=root)
    p.add_argument("--figure", default="", help=figure_help)
    p.add_argument("--json", default="", help="write every run's figures here")
    p.add_argument("--no_train", action="store_true", help="only read the runs on disk")
