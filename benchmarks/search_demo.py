"""The architecture search demonstration on two CPU cores: three latency targets, each result
retrained beside the MobileNet baselines and random architectures, measured latency against AP.

    python benchmarks/search_demo.py [--table=configs/latency/tiny_cpu_160.json] \
        [--targets_ms=1.4,2.2,3.2] [--random=5] [--baselines=mobilenet_v2:0.35,...] \
        [--stages=search,train,latency,scaling] [--root=runs/search_demo] \
        [--json=benchmarks/results/search_demo.json] [--figure=docs/images/search_demo.png]

What it runs, one command at a time (every one a documented command of the project):

1. ``search``: ``python -m mobiledet_jax.search --config=configs/search_tiny.py:<table>
   --config.search.c0_ms=<target>`` for every target; keeps the ``arch.json``, the wall seconds
   and the median seconds per step (step 1, the compilation, left out).
2. ``train``: every searched architecture and ``--random`` random ones of the same space
   (``configs/searched.py:<arch>:quickstart``) and every baseline (``configs/quickstart.py
   --config.model.name=<name> --config.model.width_multiplier=<w>``): the same recipe, data, seed
   and steps for all. Then each is exported (``python -m mobiledet_jax.export --target=cpu
   --outputs=raw``, float32); its file is timed there once, beside whatever else runs (a check).
3. ``latency``: every trained model timed side by side in one run (``search_demo_latency``:
   LiteRT, XNNPACK, one thread, this thread's CPU time, interleaved rounds) and the searched and
   random ones priced by ``--table``. Run it in the session that built ``--table`` (``python -m
   mobiledet_jax.latency_table``): per-thread CPU times differ between VMs.
4. ``scaling``: ``--scaling_steps`` steps of the same search on 1 and on 8 (virtual) devices.

Resumable across sessions: ``--json`` is the record. An item already in it is not run again, and
the architectures live in it (not only in the workdirs), so a later session continues from the
committed JSON alone; a workdir left by an interrupted item resumes. The table and the figure are
rewritten from the JSON after every item (``--no_run``: only that).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import search_demo_report as report  # noqa: E402
from benchmarks.quickstart_runs import read_run, train  # noqa: E402

# spanning the space's latencies (160 px, float32, 1 thread, random weights): V3-Large 1.0 2.30 ms,
# V2 1.0 2.99, V3-Small 1.0 0.74, V3-Large 0.75 1.52, V2 0.5 1.18 (the tiny space: 0.9-7.7 ms)
BASELINES = (
    "mobilenet_v3_large:1.0,mobilenet_v2:1.0,mobilenet_v3_small:1.0,"
    "mobilenet_v3_large:0.75,mobilenet_v2:0.5"
)
SPACE = "tiny"
IMAGE_SIZE = 160
TRAINED = "@trained"  # the latency stage's name suffix for a trained model's exported file


def run(cmd: list[str], env: dict | None = None) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def shown(cmd: list[str]) -> str:
    """A command as the README gives it: no interpreter path, paths relative to the repository."""
    return " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", "")


def load(path: pathlib.Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"searches": {}, "models": {}, "scaling": {}}


def save(results: dict, args) -> None:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    # paths inside the repository as the README gives them (the searches record absolute ones)
    path.write_text(json.dumps(results, indent=1).replace(str(REPO) + "/", "") + "\n")
    report.write(results, args.figure, args.markdown)


def step_seconds(search_dir: pathlib.Path) -> list[float]:
    rows = [json.loads(line) for line in (search_dir / "search_log.jsonl").read_text().splitlines()]
    return [r["step_seconds"] for r in rows if r["step"] > 1]


def search(args, results: dict, table: str) -> None:
    for target in args.targets_ms.split(","):
        name = f"search_{target}ms"
        if name in results["searches"]:
            continue
        results["table"] = report.table_info(table)  # the searches' table
        workdir = pathlib.Path(args.root).resolve() / name
        cmd = [
            sys.executable, "-m", "mobiledet_jax.search",
            f"--config=configs/search_tiny.py:{table}", f"--workdir={workdir}",
            f"--config.search.c0_ms={target}", *args.search_flag,
        ]  # fmt: skip
        wall = run(cmd)
        arch = json.loads((workdir / "arch.json").read_text())
        steps = step_seconds(workdir)
        results["searches"][name] = {
            "c0_ms": float(target),
            "arch": arch,
            "predicted_ms": arch["predicted_ms"],
            "wall_s": wall,
            "steps": arch["step"],
            "step_s_median": statistics.median(steps),
            "command": shown(cmd),
        }
        save(results, args)


def candidates(args, results: dict) -> list[tuple[str, dict]]:
    """(name, how to train it), searched first, then the baselines, then the random ones."""
    from mobiledet_jax.models import specs
    from mobiledet_jax.search import latency_builder
    from mobiledet_jax.search import space as space_lib

    out = []
    for name, s in results["searches"].items():
        out.append((name, {"kind": "searched", "arch": s["arch"], "c0_ms": s["c0_ms"]}))
    for item in args.baselines.split(",") if args.baselines else []:
        model, width = item.split(":")
        out.append(
            (
                f"{model}_{width}",
                {"kind": "baseline", "model": model, "width": float(width)},
            )
        )
    space = space_lib.get_space(SPACE)
    rng = np.random.default_rng(args.random_seed)
    for i, idx in enumerate(latency_builder.random_architectures(space, args.random, rng)):
        spec = space_lib.decode(space, idx)
        arch = {"backbone": specs.spec_to_dict(spec), "image_size": IMAGE_SIZE, "space": SPACE}
        arch["indices"] = [int(v) for v in idx]
        out.append((f"random_{i}", {"kind": "random", "arch": arch}))
    return out


def training_config(root: pathlib.Path, name: str, item: dict) -> tuple[str, dict]:
    """(--config, {key: value} overrides) the model is trained with."""
    if item["kind"] == "baseline":
        overrides = {"model.name": item["model"], "model.width_multiplier": item["width"]}
        return "configs/quickstart.py", overrides
    arch_file = root / "archs" / f"{name}.json"
    arch_file.parent.mkdir(parents=True, exist_ok=True)
    arch_file.write_text(json.dumps(item["arch"]))
    return f"configs/searched.py:{arch_file}:quickstart", {}


def train_all(args, results: dict, table_path: str) -> None:
    from mobiledet_jax.models import specs
    from mobiledet_jax.search import cost_model, latency_builder

    table = cost_model.CostModel.load(table_path)
    root = pathlib.Path(args.root).resolve()
    for name, item in candidates(args, results):
        if name in results["models"]:
            continue
        workdir = root / name
        config, overrides = training_config(root, name, item)
        wall = train(config, workdir, overrides)
        command = shown(
            [
                sys.executable,
                "-m",
                "mobiledet_jax.train",
                f"--config={config}",
                f"--workdir={workdir}",
            ]
            + [f"--config.{k}={v}" for k, v in overrides.items()]
        )
        figures = read_run(workdir)
        tflite = workdir / "model_float32_raw.tflite"
        run(
            [
                sys.executable, "-m", "mobiledet_jax.export", f"--workdir={workdir}",
                "--target=cpu", "--format=float32", "--outputs=raw", f"--output={tflite}",
                "--eval_images=0", "--latency_runs=0",
            ]
        )  # fmt: skip
        ms, _ = latency_builder.time_tflite(tflite.read_bytes())  # beside training: a check only
        row = {
            "kind": item["kind"],
            "AP": figures["AP"],
            "AP50": figures["AP50"],
            "evals": figures["evals"],
            "train_s": figures["train_s"],
            "wall_s": wall,
            "file_ms_after_training": ms,
            "load_1min": os.getloadavg()[0],
            "command": command,
        }
        if item["kind"] == "baseline":
            row.update(model=item["model"], width=item["width"])
        else:
            spec = specs.spec_from_dict(item["arch"]["backbone"])
            row.update(predicted_ms=float(table.predict(spec)), arch=item["arch"])
            if item["kind"] == "searched":
                row["c0_ms"] = item["c0_ms"]
        results["models"][name] = row
        save(results, args)


def latency(args, results: dict, table_path: str) -> None:
    """Every trained model's file timed side by side in this run (``search_demo_latency``), and the
    searched and random ones priced by ``table_path``, the table built on this machine."""
    from benchmarks import search_demo_latency as lat
    from mobiledet_jax.models import specs
    from mobiledet_jax.search import cost_model

    table = cost_model.CostModel.load(table_path)
    root = pathlib.Path(args.root).resolve()
    items = {n: i for n, i in candidates(args, results) if n in results["models"]}
    files = {}
    for name, item in items.items():
        print(f"converting {name} (float32, random weights)", flush=True)
        files[name] = lat.random_weight_file(*training_config(root, name, item))
        trained = root / name / "model_float32_raw.tflite"
        if trained.exists():  # the trained weights' file, where this session still has it
            files[name + TRAINED] = trained.read_bytes()
    timed = lat.side_by_side(files, rounds=args.latency_rounds)
    for name, item in items.items():
        row = results["models"][name]
        row["measured_ms"], row["measured_spread_ms"] = timed[name]
        row.pop("trained_file_ms", None)
        if name + TRAINED in timed:
            row["trained_file_ms"] = timed[name + TRAINED][0]
        if item["kind"] != "baseline":
            row["predicted_ms"] = float(
                table.predict(specs.spec_from_dict(item["arch"]["backbone"]))
            )
    results["latency"] = {
        "table": report.table_info(table_path),
        "rounds": args.latency_rounds,
        "date": time.strftime("%Y-%m-%d"),
        "load_1min": os.getloadavg()[0],
        "command": shown([sys.executable, *sys.argv]),
    }
    save(results, args)


def scaling(args, results: dict, table: str) -> None:
    root = pathlib.Path(args.root).resolve()
    for devices in (1, 8):
        name = f"{devices}_devices"
        if name in results["scaling"]:
            continue
        workdir = root / f"scaling_{devices}"
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        cmd = [
            sys.executable, "-m", "mobiledet_jax.search",
            f"--config=configs/search_tiny.py:{table}", f"--workdir={workdir}",
            f"--config.train.num_steps={args.scaling_steps}", "--config.train.warmup_steps=5",
            "--config.checkpoint.every_steps=1000",
        ]  # fmt: skip
        wall = run(cmd, env)
        steps = step_seconds(workdir)[5:]  # past the op / filter warm-ups' widest steps
        results["scaling"][name] = {
            "devices": devices,
            "steps": args.scaling_steps,
            "wall_s": wall,
            "step_s_median": statistics.median(steps),
            "command": f"XLA_FLAGS={env['XLA_FLAGS']} {shown(cmd)}",
        }
        save(results, args)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--table", default="configs/latency/tiny_cpu_160.json")
    p.add_argument("--targets_ms", default="1.4,2.2,3.2", help="c0 of each search, comma-separated")
    p.add_argument(
        "--search_flag", action="append", default=[], help="extra flag for every search command"
    )
    p.add_argument("--random", type=int, default=5, help="random architectures of the space")
    p.add_argument("--random_seed", type=int, default=7)
    p.add_argument("--baselines", default=BASELINES, help="<model>:<width multiplier>, ...")
    p.add_argument("--stages", default="search,train,latency,scaling")
    p.add_argument("--latency_rounds", type=int, default=7, help="side-by-side timing rounds")
    p.add_argument("--scaling_steps", type=int, default=40)
    p.add_argument("--root", default="runs/search_demo")
    p.add_argument("--json", default="benchmarks/results/search_demo.json")
    p.add_argument("--figure", default="docs/images/search_demo.png")
    p.add_argument("--markdown", default="benchmarks/results/search_demo.md")
    p.add_argument("--no_run", action="store_true", help="only rewrite the table and the figure")
    args = p.parse_args()
    results = load(pathlib.Path(args.json))
    table = str(pathlib.Path(args.table).resolve())
    stages = set(args.stages.split(","))
    if not args.no_run:
        if "search" in stages:
            search(args, results, table)
        if "train" in stages:
            train_all(args, results, table)
        if "latency" in stages:
            latency(args, results, table)
        if "scaling" in stages:
            scaling(args, results, table)
    save(results, args)
    print(pathlib.Path(args.markdown).read_text())


if __name__ == "__main__":
    main()
