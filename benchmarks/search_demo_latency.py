"""The search demonstration's latency stage: every model of the record timed side by side.

Per-thread CPU time is steady on one machine but not between machines: two 2-core VMs of the
same CPU model, on consecutive days, timed the same float32 files 1.3x apart (the 2026-12-03
table against 2026-12-04 measurements of its own held-out networks). So the figures the
demonstration compares (predicted against measured, searched against baseline) come from one
run on one machine: ``python -m mobiledet_jax.latency_table`` rebuilds the table, then this stage
times every model's float32 file in the same session, interleaved (every round times every file
once, in a rotated order; the lowest round median counts, as for the table's pieces).

The file timed is the model's own graph (its training config's ``build_model``, converted by
``export.convert.convert`` like ``export --format=float32 --outputs=raw``) with random weights:
float32 latency does not depend on the weights' values, which the stage checks wherever a
trained model's exported file is still in its workdir (timed beside its random-weight twin).
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(config: str, overrides: dict):
    """``--config=<file>[:arg]`` plus ``--config.<key>=<value>`` overrides, as the trainer reads
    them (the keys exist already; values keep their types)."""
    path, _, arg = config.partition(":")
    spec = importlib.util.spec_from_file_location("demo_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value)
    return cfg


def random_weight_file(config: str, overrides: dict, seed: int = 0) -> bytes:
    """The float32 .tflite (raw outputs) of the config's model with random weights."""
    from mobiledet_jax.export import convert
    from mobiledet_jax.models import random_weights
    from mobiledet_jax.models.factory import build_model
    from mobiledet_jax.search import latency_builder

    cfg = load_config(config, overrides)
    model = build_model(cfg.model)
    size = (cfg.model.image_size, cfg.model.image_size)
    variables = random_weights.random_variables(model, size, seed=seed)
    with latency_builder._quiet_stderr():
        return convert.convert(model, variables, size, "float32", "logits")


def side_by_side(files: dict[str, bytes], rounds: int = 7, invokes: int = 20, progress=print):
    """{name: (ms, spread)}: each round times every file once (order rotated round to round);
    ms is the lowest round median, spread the highest minus the lowest."""
    from mobiledet_jax.search import latency_builder

    names = list(files)
    medians = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            ms, _ = latency_builder.time_tflite(files[n], warmup=3, rounds=1, invokes=invokes)
            medians[n].append(ms)
        progress(f"latency round {r + 1}/{rounds} done")
    return {n: (float(np.min(v)), float(np.max(v) - np.min(v))) for n, v in medians.items()}
