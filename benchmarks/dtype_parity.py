"""Does bfloat16 train as well as float32? The quickstart trained in both, over several seeds.

    python benchmarks/dtype_parity.py [--seeds=0,1,2] [--dtypes=float32,bfloat16] \
        [--config=configs/quickstart.py] [--root=runs/dtype_parity] \
        [--figure=docs/images/dtype_parity.png] [--json=benchmarks/results/dtype_parity.json]

For every (dtype, seed) it runs ``python -m mobiledet_jax.train --config=<config>
--workdir=<root>/<dtype>_s<seed> --config.seed=<seed> --config.model.compute_dtype=<dtype>``
(a finished workdir is only re-read: the trainer re-evaluates it; an interrupted one resumes), then
reads each run's ``train_metrics.jsonl`` and its final ``eval_<steps>/metrics.json`` and prints,
per run and per dtype (mean and standard deviation over seeds): COCO AP, AP@0.5 and the mean loss
over the first and the second half of training; then each dtype's mean against the first dtype's,
beside the seeds' own spread (the run-to-run noise a difference must be compared with). The
figure: every run's loss curve (smoothed over 5 logged points), one colour per dtype, and the
final APs per seed. ``--config.seed`` changes the initial weights and the order and augmentation
of the batches; the synthetic dataset is the same for every run.
"""

import argparse
import pathlib
import statistics
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quickstart_runs import add_run_flags, read_run, train, write_results  # noqa: E402
from mobiledet_jax.visualization.figures import new_figure, save_figure  # noqa: E402

COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange"}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict, dtypes: list[str]) -> list[str]:
    keys = ("AP", "AP50", "loss_first_half", "loss_second_half")
    lines = [
        "| dtype | seed | COCO AP | AP@0.5 | mean loss, steps 100 to half | mean loss, second half |",
        "|---|---|---|---|---|---|",
    ]
    for (dtype, seed), r in sorted(runs.items()):
        vals = " | ".join(f"{r[k]:.4f}" for k in keys)
        lines.append(f"| {dtype} | {seed} | {vals} |")
    for dtype in dtypes:
        cells = []
        for k in keys:
            m, sd = _mean_sd([r[k] for (d, _), r in runs.items() if d == dtype])
            cells.append(f"{m:.4f} +- {sd:.4f}")
        lines.append(f"| **{dtype}** | mean +- sd | " + " | ".join(cells) + " |")
    ref = dtypes[0]
    for dtype in dtypes[1:]:
        cells = []
        for k in keys:
            a = [r[k] for (d, _), r in runs.items() if d == dtype]
            b = [r[k] for (d, _), r in runs.items() if d == ref]
            cells.append(f"{statistics.fmean(a) - statistics.fmean(b):+.4f}")
        lines.append(f"| {dtype} - {ref} | difference of means | " + " | ".join(cells) + " |")
    return lines


def figure(runs: dict, dtypes: list[str], path: str) -> None:
    fig = new_figure(10, 4)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for (dtype, seed), r in sorted(runs.items()):
        loss = np.convolve(r["loss"], np.ones(5) / 5, mode="valid")
        ax.plot(r["steps"][4:], loss, color=COLORS.get(dtype), lw=1, alpha=0.8)
        bx.scatter([seed], [r["AP"]], color=COLORS.get(dtype), s=30)
    for dtype in dtypes:
        ax.plot([], [], color=COLORS.get(dtype), label=dtype)
    ax.set(xlabel="step", ylabel="training loss (5-point mean)", yscale="log")
    ax.set_title("quickstart loss, one line per seed")
    ax.legend()
    bx.set(xlabel="seed", ylabel="final COCO AP (val)")
    bx.set_title("final AP per seed")
    bx.set_xticks(sorted({s for _, s in runs}))
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    add_run_flags(p, "runs/dtype_parity", "PNG of the loss curves and final APs")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    dtypes = args.dtypes.split(",")
    root = pathlib.Path(args.root).resolve()  # the train subprocess runs in the repository root
    runs = {}
    for seed in seeds:
        for dtype in dtypes:
            workdir = root / f"{dtype}_s{seed}"
            if not args.no_train:
                train(args.config, workdir, {"seed": seed, "model.compute_dtype": dtype})
            runs[(dtype, seed)] = read_run(workdir)
    print("\n".join(summarize(runs, dtypes)))
    named = {f"{d}_s{s}": r for (d, s), r in runs.items()}
    write_results(named, lambda path: figure(runs, dtypes, path), args.figure, args.json)


if __name__ == "__main__":
    main()
