"""The search demonstration's table and figure, from its JSON record (benchmarks/search_demo.py).

The checks the README states, computed here from the measured rows:

- **predicted vs measured**: every searched (and random) model's table price against its exported
  file's measured latency, and whether it is within 10%.
- **against the baselines' front**: a searched model is on or above the front when no baseline is
  both at most as slow and more accurate (Pareto dominance on measured ms and val AP).
- **against the random architectures at equal latency**: the least-squares line of the random
  models' AP on their measured ms, evaluated at the searched model's ms (with five points a line
  is what the data can carry; the median random AP is printed beside it).
"""

import hashlib
import json
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
KIND_STYLE = {
    "searched": dict(marker="*", s=160, color="tab:red", zorder=3),
    "baseline": dict(marker="s", s=50, color="tab:blue", zorder=2),
    "random": dict(marker="o", s=40, color="tab:gray", zorder=1),
}


def table_info(path: str) -> dict:
    data = pathlib.Path(path).read_bytes()
    table = json.loads(data)
    try:
        shown = str(pathlib.Path(path).resolve().relative_to(REPO))
    except ValueError:
        shown = path
    return {
        "file": shown,
        "sha256": hashlib.sha256(data).hexdigest(),
        "host": table.get("host"),
        "date": table.get("date"),
        "report": table.get("report"),
    }


def ms(row: dict) -> float:
    """The side-by-side measurement (the latency stage), else the one taken after training."""
    return row.get("measured_ms", row.get("file_ms_after_training", float("nan")))


def dominated_by(row: dict, baselines: dict) -> list[str]:
    return [name for name, b in baselines.items() if ms(b) <= ms(row) and b["AP"] > row["AP"]]


def random_fit(randoms: dict):
    """AP at a latency from the random models' least-squares line (None below two points)."""
    if len(randoms) < 2:
        return None
    x = np.array([ms(r) for r in randoms.values()])
    y = np.array([r["AP"] for r in randoms.values()])
    slope, intercept = np.polyfit(x, y, 1)
    return lambda ms: float(intercept + slope * ms)


def markdown(results: dict) -> str:
    models = results.get("models", {})
    by_kind = {k: {n: r for n, r in models.items() if r["kind"] == k} for k in KIND_STYLE}
    fit = random_fit(by_kind["random"])
    t = results.get("table", {})
    rep = t.get("report") or {}
    lines = [
        f"The searches' latency table: `{t.get('file')}` ({t.get('host')}, {t.get('date')}, "
        f"sha256 {str(t.get('sha256'))[:12]}); held-out accuracy: "
        f"MAPE {100 * rep.get('mape', float('nan')):.1f}%, "
        f"{100 * rep.get('within_10pct', float('nan')):.0f}% within 10%, "
        f"Kendall tau {rep.get('kendall_tau', float('nan')):.2f}.",
        "",
        "| search | target c0 ms | predicted ms (search's table) | steps | wall s | s / step (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results.get("searches", {}).items():
        lines.append(
            f"| {name} | {s['c0_ms']:.2f} | {s['predicted_ms']:.3f} | {s['steps']} "
            f"| {s['wall_s']:.0f} | {s['step_s_median']:.2f} |"
        )
    lines += [
        "",
        "| model | kind | measured ms | predicted ms (error) | val AP | AP@0.5 | training s "
        "| dominated by a baseline | AP - random line at its ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(models.items(), key=lambda kv: ms(kv[1])):
        pred = "-"
        if "predicted_ms" in r:
            err = r["predicted_ms"] / ms(r) - 1
            pred = f"{r['predicted_ms']:.3f} ({100 * err:+.1f}%)"
        dom = "-"
        vs_random = "-"
        if r["kind"] == "searched":
            dom = ", ".join(dominated_by(r, by_kind["baseline"])) or "no"
            if fit:
                vs_random = f"{r['AP'] - fit(ms(r)):+.4f}"
        lines.append(
            f"| {name} | {r['kind']} | {ms(r):.3f} | {pred} | {r['AP']:.4f} "
            f"| {r['AP50']:.4f} | {r['train_s']:.0f} | {dom} | {vs_random} |"
        )
    lat = results.get("latency")
    if lat:
        lt = lat["table"]
        lines += [
            "",
            f"Measured side by side on {lat['date']} ({lat['rounds']} interleaved rounds, "
            f"1-min load {lat['load_1min']:.1f} at the end), priced by `{lt['file']}` "
            f"({lt['host']}, {lt['date']}, sha256 {lt['sha256'][:12]}; held-out: MAPE "
            f"{100 * lt['report']['mape']:.1f}%, {100 * lt['report']['within_10pct']:.0f}% within "
            "10%). Random-weight files are timed; where a trained model's exported file was at "
            "hand it was timed beside its twin:",
        ]
        twins = [f"{n} {r['trained_file_ms']:.3f} ms trained against {r['measured_ms']:.3f} ms"
                 for n, r in models.items() if "trained_file_ms" in r]  # fmt: skip
        lines.append("; ".join(twins) + "." if twins else "none.")
    else:
        lines += ["", "Measured once each after its training (no side-by-side latency stage yet)."]
    if by_kind["random"]:
        med = float(np.median([r["AP"] for r in by_kind["random"].values()]))
        lines += ["", f"Median AP of the {len(by_kind['random'])} random architectures: {med:.4f}."]
    scaling = results.get("scaling", {})
    if scaling:
        lines += ["", "| search on | steps | wall s | s / step (median) |", "|---|---|---|---|"]
        for s in scaling.values():
            lines.append(
                f"| {s['devices']} device(s) | {s['steps']} | {s['wall_s']:.0f} "
                f"| {s['step_s_median']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def figure(results: dict, path: str) -> None:
    from mobiledet_jax.visualization.figures import new_figure, save_figure

    models = results.get("models", {})
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for kind, style in KIND_STYLE.items():
        rows = {n: r for n, r in models.items() if r["kind"] == kind}
        if not rows:
            continue
        ax.scatter(
            [ms(r) for r in rows.values()],
            [r["AP"] for r in rows.values()],
            label=kind,
            **style,
        )
        if kind != "random":
            for name, r in rows.items():
                ax.annotate(name, (ms(r), r["AP"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")  # fmt: skip
    fit = random_fit({n: r for n, r in models.items() if r["kind"] == "random"})
    if fit:
        xs = np.linspace(*ax.get_xlim(), 20)
        ax.plot(xs, [fit(x) for x in xs], color="tab:gray", lw=1, ls="--", label="random: line")
    ax.set(
        xlabel="measured TFLite latency, ms (float32, XNNPACK, 1 thread, 160x160)",
        ylabel="val COCO AP (quickstart recipe)",
    )
    ax.set_title("search_tiny results against baselines and random architectures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write(results: dict, figure_path: str, markdown_path: str) -> None:
    if markdown_path:
        pathlib.Path(markdown_path).write_text(markdown(results))
    if figure_path and results.get("models"):
        figure(results, figure_path)
