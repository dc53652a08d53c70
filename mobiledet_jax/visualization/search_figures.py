"""Pictures of an architecture search: the controller's choice probabilities over the steps, and
latency against accuracy of trained architectures.

``controller_figure`` draws one small stacked-area panel per block width and per layer's op family
(rows: blocks; columns: the width, then layers 1..n), each band the probability of one choice, so
the moment each decision settles is visible at a glance. ``latency_accuracy_figure`` puts
measured latency against val AP for groups of models (searched, baselines, random), with the
baselines' Pareto front. Both return Agg figures (``figures.save_figure`` writes them).
"""

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from mobiledet_jax.visualization.figures import new_figure

CHOICE_COLORS = ("#4c8bf5", "#f4a742", "#5bb36d", "#9e9e9e", "#8e44ad", "#c62828", "#26a69a")


def controller_figure(
    steps: Sequence[int],
    probabilities: Sequence[Sequence[Sequence[float]]],
    names: Sequence[str],
    choices: Sequence[Sequence],
) -> Figure:
    """``probabilities[t][d]``: the choice probabilities of decision ``d`` (named ``names[d]``,
    choices ``choices[d]``) at ``steps[t]``. Only width (``*.filters``) and family decisions are
    drawn; sub-decisions (kernel, expansion, ranks) would triple the grid."""
    keep = [i for i, n in enumerate(names) if n.endswith(".filters") or n.endswith(".family")]
    blocks: dict[str, list[int]] = {}
    for i in keep:
        blocks.setdefault(names[i].split(".")[0], []).append(i)
    rows, cols = len(blocks), max(len(v) for v in blocks.values())
    fig = new_figure(2.2 * cols + 0.6, 1.25 * rows + 0.8)
    x = np.asarray(steps, float)
    for r, decisions in enumerate(blocks.values()):
        for c, d in enumerate(decisions):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            p = np.array([np.asarray(step_probs[d], float) for step_probs in probabilities])
            p = p[:, : len(choices[d])]
            colors = [CHOICE_COLORS[k % len(CHOICE_COLORS)] for k in range(p.shape[1])]
            labels = [str(v) for v in choices[d]]
            ax.stackplot(x, p.T, colors=colors, labels=labels, alpha=0.85)
            ax.set_ylim(0, 1)
            ax.set_xlim(x[0], x[-1] if len(x) > 1 else x[0] + 1)
            ax.set_title(names[d].replace(".family", "").replace(".filters", " width"), fontsize=7)
            ax.tick_params(labelsize=6)
            if r < rows - 1:
                ax.set_xticklabels([])
            ax.legend(fontsize=5, loc="lower left", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle("controller choice probabilities over the search steps", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, AP) points no other point beats on both (lower latency, higher AP), sorted
    by latency."""
    front, best = [], -np.inf
    for lat, ap in sorted(points):
        if ap > best:
            front.append((lat, ap))
            best = ap
    return front


def latency_accuracy_figure(
    groups: Mapping[str, Sequence[tuple[str, float, float]]], title: str = ""
) -> Figure:
    """``groups[name]``: (label, latency ms, AP) points. The group called ``baselines`` gets its
    Pareto front drawn; ``random`` points are grey; every other group is highlighted."""
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    style = {"baselines": ("s", "#c62828"), "random": ("o", "#9e9e9e")}
    for i, (group, pts) in enumerate(groups.items()):
        marker, color = style.get(group, ("*", CHOICE_COLORS[i % len(CHOICE_COLORS)]))
        if not pts:
            continue
        lat = [p[1] for p in pts]
        ap = [p[2] for p in pts]
        ax.scatter(
            lat,
            ap,
            marker=marker,
            color=color,
            s=90 if marker == "*" else 36,
            label=group,
            zorder=3,
        )
        for label, x, y in pts:
            if group != "random":
                ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if group == "baselines" and len(pts) > 1:
            front = pareto_front([(p[1], p[2]) for p in pts])
            ax.plot(*zip(*front, strict=True), color=color, lw=1, ls="--", zorder=2)
    ax.set_xlabel("measured TFLite latency (ms, XNNPACK, 1 thread)")
    ax.set_ylabel("val AP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
