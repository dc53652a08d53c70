"""Which MobileDet learns best per second on this machine? The quickstart recipe, every model.

    python benchmarks/quickstart_models.py [--models=mobiledet_gpu,mobiledet_edgetpu,...] \
        [--conv_forms=auto] [--eval_every=200] [--config=configs/quickstart.py] \
        [--root=runs/quickstart_models] [--figure=docs/images/quickstart_models.png] \
        [--json=benchmarks/results/quickstart_models.json] [--no_train]

For every (model, conv form) it trains ``configs/quickstart.py`` with ``--config.model.name=<model>
--config.model.conv_form=<form> --config.eval.every_steps=<eval_every>`` (the same data, seed,
steps, batch and optimizer for all; a finished workdir is only re-read), one run at a time, and
prints per run: the command's wall seconds (data cache filled by the first run), the training
seconds per step (median over the logged windows: no compile, evaluation or checkpoint inside),
the final COCO AP and AP@0.5 on the 128 val images, and AP per training minute. The figure plots
each run's evaluations as val AP against training seconds (step x seconds per step): the curve
that is highest at a given time learns best per second. ``--conv_forms=conv,auto`` also shows
each model before and after the CPU forms of the convolutions (``config.model.conv_form``).
"""

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quickstart_runs import add_run_flags, read_run, train, write_results  # noqa: E402
from mobiledet_jax.visualization.figures import new_figure, save_figure  # noqa: E402

MODELS = "mobiledet_gpu,mobiledet_edgetpu,mobiledet_cpu,mobiledet_dsp"


def table(runs: dict) -> list[str]:
    lines = [
        "| model | conv form | command wall s | training s / step | training s (all steps) "
        "| COCO AP | AP@0.5 | AP per training minute |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, form), r in runs.items():
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else "(not run now)"
        lines.append(
            f"| {model} | {form} | {wall} | {r['step_s']:.3f} | {r['train_s']:.0f} "
            f"| {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP'] / (r['train_s'] / 60):.4f} |"
        )
    return lines


def figure(runs: dict, path: str) -> None:
    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    for (model, form), r in runs.items():
        steps = [0] + [s for s, _, _ in r["evals"]]
        ap = [0.0] + [a for _, a, _ in r["evals"]]
        label = model if len({f for _, f in runs}) == 1 else f"{model} ({form})"
        ax.plot([s * r["step_s"] for s in steps], ap, marker="o", label=label)
    ax.set(xlabel="training seconds (step x median seconds per step)", ylabel="val COCO AP")
    ax.set_title("quickstart recipe: AP against training time, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=MODELS)
    p.add_argument("--conv_forms", default="auto", help="models.layers.CONV_FORMS, comma-separated")
    p.add_argument("--eval_every", type=int, default=200, help="steps between evaluations")
    add_run_flags(p, "runs/quickstart_models", "PNG of AP against training seconds")
    args = p.parse_args()
    root = pathlib.Path(args.root).resolve()  # the train subprocess runs in the repository root
    runs = {}
    for model in args.models.split(","):
        for form in args.conv_forms.split(","):
            workdir = root / f"{model}_{form}"
            overrides = {
                "model.name": model,
                "model.conv_form": form,
                "eval.every_steps": args.eval_every,
            }
            wall = None if args.no_train else train(args.config, workdir, overrides)
            runs[(model, form)] = {**read_run(workdir), "wall_s": wall}
            print("\n".join(table({(model, form): runs[(model, form)]})[2:]), flush=True)
    print("\n".join(table(runs)))
    named = {f"{m}_{f}": r for (m, f), r in runs.items()}
    write_results(named, lambda path: figure(runs, path), args.figure, args.json)


if __name__ == "__main__":
    main()
