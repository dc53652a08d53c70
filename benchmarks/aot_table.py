"""The README's TPU memory table: compiles each model's train step for TPU slices ahead of time.

Runs ``python -m mobiledet_jax.aot_compile`` once per (model, slice) at a fixed batch per device
(the paper's 16 images per replica by default), writes each report to
``<out_dir>/<model>-<slice>.json``, then prints the Markdown table from the reports. Reports that
already exist are reused unless ``--force`` (so an interrupted run continues where it stopped).
Needs libtpu (``pip install -r requirements-tpu-aot.txt``), no TPU.

  python benchmarks/aot_table.py                       # 7 models x v4-32, v5e-16 + EdgeTPU v5e-256
  python benchmarks/aot_table.py --table_only          # the table from the reports on disk
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobiledet_jax.config import MODEL_NAMES  # noqa: E402
from mobiledet_jax.tpu_slices import TpuSlice  # noqa: E402


def compile_one(model: str, slice_name: str, per_device: int, path: pathlib.Path) -> dict:
    devices = TpuSlice.parse(slice_name).devices
    cmd = [
        sys.executable,
        "-m",
        "mobiledet_jax.aot_compile",
        f"--config={REPO / 'configs' / f'{model}.py'}",
        f"--topology={slice_name}",
        f"--config.train.batch_size={per_device * devices}",
        f"--json={path}",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if not path.exists():  # exit 1 (does not fit) still writes the report
        raise RuntimeError(f"{model} on {slice_name} failed:\n{proc.stderr[-3000:]}")
    print(f"{model} on {slice_name}: {time.time() - start:.0f} s", flush=True)
    return json.loads(path.read_text())


def table(reports: list[dict]) -> str:
    lines = [
        "| model | slice (devices) | batch per device | per-chip memory (GiB) | of HBM "
        "| XLA GFLOP per image | compile (s, 2 cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| `{r['model']}` | {r['topology']} ({r['devices']}) | {r['batch_per_device']} "
            f"| {r['memory_gib']:.2f} | {100 * r['memory_gib'] / r['hbm_gib']:.0f}% of "
            f"{r['hbm_gib']:g} | {r['flops_total'] / r['global_batch'] / 1e9:.2f} "
            f"| {r['compile_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    p.add_argument("--slices", default="v4-32,v5e-16", help="comma-separated TPU slices")
    p.add_argument(
        "--extra",
        default="mobiledet_edgetpu:v5e-256",
        help="further comma-separated model:slice pairs ('' for none)",
    )
    p.add_argument("--batch_per_device", type=int, default=16)
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "aot"))
    p.add_argument("--force", action="store_true", help="recompile even where a report exists")
    p.add_argument("--table_only", action="store_true", help="only print the table")
    args = p.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    slices = [s.strip() for s in args.slices.split(",") if s.strip()]
    pairs = [(m, s) for m in models for s in slices]
    for extra in (x.strip() for x in args.extra.split(",") if x.strip()):
        if extra.count(":") != 1:
            p.error(f"--extra takes model:slice pairs, got {extra!r}")
        pairs.append(tuple(extra.split(":")))
    pairs.sort()
    for model, slice_name in pairs:
        if not (REPO / "configs" / f"{model}.py").exists():
            p.error(f"no configs/{model}.py (models: {', '.join(MODEL_NAMES)})")
        try:
            TpuSlice.parse(slice_name)
        except ValueError as e:
            p.error(str(e))
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for i, (model, slice_name) in enumerate(pairs, 1):
        path = out / f"{model}-{slice_name}.json"
        if path.exists() and not args.force:
            reports.append(json.loads(path.read_text()))
        elif args.table_only:
            print(f"no report for {model} on {slice_name} ({path})", file=sys.stderr)
        else:
            print(f"[{i}/{len(pairs)}] compiling {model} for {slice_name} ...", flush=True)
            reports.append(compile_one(model, slice_name, args.batch_per_device, path))
    print(table(reports))


if __name__ == "__main__":
    main()
