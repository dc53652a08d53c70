"""The README's TPU tables: compiles each model's train step for TPU slices ahead of time.

Runs ``python -m mobiledet_jax.aot_compile --top_ops=15`` once per (model, slice, compute dtype) at
a fixed batch per device (the paper's 16 images per replica by default), writes each report to
``<out_dir>/<model>-<slice>[-bfloat16].json``, then prints Markdown tables from the reports:
memory, and the roofline estimate (FLOPs and bytes per image, arithmetic intensity, step time,
images/s per chip and slice, the paper's two schedules in hours and chip-hours, the compiler's own
step estimate beside ours); with both dtypes, bytes per image bfloat16 against float32; with
``--input_per_core``, the host cores the input needs per slice. Reports that already exist are
reused unless ``--force`` (an interrupted run continues where it stopped); reports written before
the roofline existed get it computed from their FLOPs and bytes. Needs libtpu
(``pip install -r requirements-tpu-aot.txt``), no TPU. All figures are estimates from the compiled
program, not measurements.

  python benchmarks/aot_table.py                       # 7 models x v4-32, v5e-16, v5e-256
  python benchmarks/aot_table.py --dtypes=float32,bfloat16 --models=mobiledet_edgetpu
  python benchmarks/aot_table.py --table_only          # the tables from the reports on disk
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobiledet_jax.config import PUBLISHED_MODELS  # noqa: E402
from mobiledet_jax.tpu_chips import CHIPS  # noqa: E402
from mobiledet_jax.tpu_slices import TpuSlice  # noqa: E402
from mobiledet_jax.training.roofline import roofline  # noqa: E402


def report_path(
    out: pathlib.Path, model: str, slice_name: str, dtype: str, one_pass: int = 0
) -> pathlib.Path:
    suffix = ("" if dtype == "float32" else "-" + dtype) + (
        f"-onepass{one_pass}" if one_pass else ""
    )
    return out / f"{model}-{slice_name}{suffix}.json"


def variant(r: dict) -> str:
    """The compute dtype of a report, with its BatchNorm statistics when one-pass."""
    one_pass = r.get("bn_one_pass_min_pixels", 0)
    return r["compute_dtype"] + (f" + 1-pass BN >= {one_pass} px" if one_pass else "")


def with_roofline(r: dict) -> dict:
    """The report, with the roofline computed from its FLOPs and bytes where it has none."""
    if "roofline" not in r:
        tpu = TpuSlice.parse(r["topology"])
        r["roofline"] = roofline(
            tpu, r["flops_per_device"], r["bytes_accessed_per_device"], r["batch_per_device"]
        )
        r["hosts"] = tpu.hosts
    return r


def compile_one(
    model: str,
    slice_name: str,
    per_device: int,
    path: pathlib.Path,
    dtype: str = "float32",
    one_pass: int = 0,
) -> dict:
    devices = TpuSlice.parse(slice_name).devices
    cmd = [
        sys.executable,
        "-m",
        "mobiledet_jax.aot_compile",
        f"--config={REPO / 'configs' / f'{model}.py'}",
        f"--topology={slice_name}",
        f"--config.train.batch_size={per_device * devices}",
        f"--config.model.compute_dtype={dtype}",
        f"--config.model.bn_one_pass_min_pixels={one_pass}",
        "--top_ops=15",
        f"--json={path}",
    ]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if not path.exists():  # exit 1 (does not fit) still writes the report
        raise RuntimeError(f"{model} on {slice_name} failed:\n{proc.stderr[-3000:]}")
    print(f"{model} {dtype} on {slice_name}: {time.time() - start:.0f} s", flush=True)
    return json.loads(path.read_text())


def table(reports: list[dict]) -> str:
    lines = [
        "| model | slice (devices) | dtype | batch per device | per-chip memory (GiB) | of HBM "
        "| XLA GFLOP per image | compile (s, 2 cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| `{r['model']}` | {r['topology']} ({r['devices']}) | {variant(r)} "
            f"| {r['batch_per_device']} | {r['memory_gib']:.2f} "
            f"| {100 * r['memory_gib'] / r['hbm_gib']:.0f}% of {r['hbm_gib']:g} "
            f"| {r['flops_total'] / r['global_batch'] / 1e9:.2f} | {r['compile_s']:.0f} |"
        )
    return "\n".join(lines)


def roofline_table(reports: list[dict]) -> str:
    """Per (model, slice, dtype): the roofline estimate of ``training.roofline``."""
    lines = [
        "| model | slice | dtype | GFLOP / image | GB / image (XLA) | HBM GB / image (HLO) "
        "| FLOP / byte | step ms (bound) | compiler ms | images/s per chip | images/s per slice "
        "| 400K x 512: h (chip-h) | 50K x 1024: h (chip-h) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in map(with_roofline, reports):
        f = r["roofline"]
        long, short = f["schedules"]["long"], f["schedules"]["short"]
        compiler = f"{f['compiler_s'] * 1e3:.1f}" if f.get("compiler_s") else "-"
        hbm = f"{r['hlo']['bytes'] / r['batch_per_device'] / 1e9:.3f}" if "hlo" in r else "-"
        lines.append(
            f"| `{r['model']}` | {r['topology']} | {variant(r)} "
            f"| {f['flops_per_image'] / 1e9:.2f} | {f['bytes_per_image'] / 1e9:.3f} | {hbm} "
            f"| {f['arithmetic_intensity']:.1f} | {f['step_s'] * 1e3:.1f} ({f['bound'][:3]}) "
            f"| {compiler} | {f['images_per_s_per_chip']:,.0f} "
            f"| {f['images_per_s_per_slice']:,.0f} "
            f"| {long['wall_hours']:.1f} ({long['chip_hours']:,.0f}) "
            f"| {short['wall_hours']:.2f} ({short['chip_hours']:,.0f}) |"
        )
    return "\n".join(lines)


def dtype_table(reports: list[dict]) -> str:
    """Bytes per image of bfloat16 against float32, per (model, slice) compiled in both."""
    by = {(r["model"], r["topology"], variant(r)): with_roofline(r) for r in reports}
    lines = [
        "| model | slice | variant (against float32, two-pass BN) | XLA GB / image | ratio "
        "| HLO HBM GB / image | ratio | step ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, topo, dtype), r in sorted(by.items()):
        other = by.get((model, topo, "float32"))
        if dtype == "float32" or other is None:
            continue
        f32, b16 = other["roofline"], r["roofline"]
        if "hlo" in other and "hlo" in r:
            h32, h16 = other["hlo"]["bytes"], r["hlo"]["bytes"]
            n = r["batch_per_device"]
            hbm = f"{h32 / n / 1e9:.3f} -> {h16 / n / 1e9:.3f} | {h32 / h16:.2f}x"
        else:
            hbm = "- | -"
        lines.append(
            f"| `{model}` | {topo} | {dtype} | {f32['bytes_per_image'] / 1e9:.3f} -> "
            f"{b16['bytes_per_image'] / 1e9:.3f} "
            f"| {f32['bytes_per_image'] / b16['bytes_per_image']:.2f}x | {hbm} "
            f"| {f32['step_s'] * 1e3:.1f} -> {b16['step_s'] * 1e3:.1f} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def input_table(reports: list[dict], per_core: float) -> str:
    """Host cores the augmented input needs, per slice: the hungriest model's images/s per host."""
    lines = [
        "| slice | chips per host | host vCPUs | hungriest model (dtype) | predicted images/s "
        "per host | input cores needed | of the host's vCPUs |",
        "|---|---|---|---|---|---|---|",
    ]
    by_slice: dict[str, dict] = {}
    for r in map(with_roofline, reports):
        best = by_slice.get(r["topology"])
        rate = r["roofline"]["images_per_s_per_host"]
        if best is None or rate > best["roofline"]["images_per_s_per_host"]:
            by_slice[r["topology"]] = r
    for topo, r in sorted(by_slice.items()):
        f = r["roofline"]
        cores = f["images_per_s_per_host"] / per_core
        mark = "" if CHIPS[TpuSlice.parse(topo).family].host_vcpus_certain else " (uncertain)"
        lines.append(
            f"| {topo} | {f['chips_per_host']} | {f['host_vcpus']}{mark} "
            f"| `{r['model']}` ({variant(r)}) | {f['images_per_s_per_host']:,.0f} "
            f"| {cores:.0f} | {100 * cores / f['host_vcpus']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models", default=",".join(PUBLISHED_MODELS), help="comma-separated model names"
    )
    p.add_argument("--slices", default="v4-32,v5e-16,v5e-256", help="comma-separated TPU slices")
    p.add_argument("--dtypes", default="float32", help="comma-separated compute dtypes")
    p.add_argument(
        "--bn_one_pass",
        default="0",
        help="comma-separated config.model.bn_one_pass_min_pixels values (0: two-pass BN)",
    )
    p.add_argument(
        "--input_per_core",
        type=float,
        default=0.0,
        help="measured augmented input images/s per host core (benchmarks/input_pipeline.py): "
        "adds the table of host cores the input needs per slice",
    )
    p.add_argument(
        "--extra",
        default="",
        help="further comma-separated model:slice pairs",
    )
    p.add_argument("--batch_per_device", type=int, default=16)
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "aot"))
    p.add_argument("--force", action="store_true", help="recompile even where a report exists")
    p.add_argument("--table_only", action="store_true", help="only print the table")
    args = p.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    slices = [s.strip() for s in args.slices.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    pairs = [(m, s) for m in models for s in slices]
    for extra in (x.strip() for x in args.extra.split(",") if x.strip()):
        if extra.count(":") != 1:
            p.error(f"--extra takes model:slice pairs, got {extra!r}")
        pairs.append(tuple(extra.split(":")))
    pairs = sorted(set(pairs))
    for model, slice_name in pairs:
        if not (REPO / "configs" / f"{model}.py").exists():
            p.error(f"no configs/{model}.py (models: {', '.join(PUBLISHED_MODELS)})")
        try:
            TpuSlice.parse(slice_name)
        except ValueError as e:
            p.error(str(e))
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    one_passes = [int(x) for x in args.bn_one_pass.split(",") if x.strip()]
    runs = [(m, s, d, o) for m, s in pairs for d in dtypes for o in one_passes]
    reports = []
    for i, (model, slice_name, dtype, one_pass) in enumerate(runs, 1):
        path = report_path(out, model, slice_name, dtype, one_pass)
        if path.exists() and not args.force:
            reports.append(json.loads(path.read_text()))
        elif args.table_only:
            print(f"no report for {path.name}", file=sys.stderr)
        else:
            print(f"[{i}/{len(runs)}] compiling {model} {dtype} for {slice_name} ...", flush=True)
            reports.append(
                compile_one(model, slice_name, args.batch_per_device, path, dtype, one_pass)
            )
    print(table(reports))
    print()
    print(roofline_table(reports))
    if dtypes_table := dtype_table(reports):
        print()
        print(dtypes_table)
    if args.input_per_core:
        print()
        print(input_table(reports, args.input_per_core))


if __name__ == "__main__":
    main()
