"""The pictures of an evaluation: figure files, sample images, TensorBoard images and PR curves.

From one ``EvalResult`` (``evaluation.evaluator``), with pycocotools' matching throughout:

- ``pr_curve_iou50.png`` / ``pr_curve_iou50_95.png``: COCO's per-class precision-recall curves at
  IoU 0.5 and averaged over 0.5:0.95 (``curves.precision_curves``);
- ``f1_threshold.png``: F1 (and overall precision, recall) against the score threshold at IoU
  0.5, the best overall threshold marked (``curves.threshold_curves``, ``curves.best_f1``);
- ``confusion_matrix.png``: the IoU 0.5 confusion matrix with background row and column
  (``confusion``; its convention is in that module), detections with ``score >=
  config.eval.confusion_score_threshold``;
- ``ap_per_class.png``: AP and AP50 per class;
- ``samples/sample_<k>_id<image id>.png``: the split's first K images, ground truth (non-crowd
  boxes) beside the detections with ``score >= config.eval.sample_score_threshold``, enlarged
  by an integer factor to ``config.visualization.sample_min_side`` so that labels stay legible;
- ``metrics.json``: the COCO metrics, the best-F1 thresholds and the confusion counts.

``write_eval_report`` writes those files into a folder (``evaluate``, the final evaluation of
``train``); ``write_tensorboard`` writes the same figures and samples as TensorBoard images and
the per-class score-threshold curves as TensorBoard PR curves through the run's clu writer
(``write_summaries`` with the ``pr_curves`` plugin metadata: the tensor is TensorBoard's
``[TP, FP, TN, FN, precision, recall] x thresholds`` layout, TN = 0 as detection has none).
"""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import numpy as np
from etils import epath

from mobiledet_jax import atomic_files
from mobiledet_jax.evaluation import confusion, curves
from mobiledet_jax.evaluation.evaluator import EvalResult
from mobiledet_jax.visualization import draw, figures, mosaic

FIGURE_NAMES = (
    "pr_curve_iou50",
    "pr_curve_iou50_95",
    "f1_threshold",
    "confusion_matrix",
    "ap_per_class",
)  # the PNG stems of make_figures, in order
METRICS_FILE = "metrics.json"
SAMPLES_DIR = "samples"
BACKGROUND = "background"


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The numbers behind the figures of one evaluation."""

    precision: curves.PrecisionCurves
    matches: curves.Matches
    per_class_thresholds: list[dict]  # curves.threshold_curves of each class
    overall_thresholds: dict  # of all classes pooled
    best_f1: dict  # curves.best_f1_thresholds
    confusion: np.ndarray  # [K + 1, K + 1]
    confusion_labels: tuple[str, ...]  # class names + "background"


def analyze(result: EvalResult, config: ml_collections.ConfigDict) -> Analysis:
    """Curves, best-F1 thresholds and the confusion matrix of ``result``."""
    matches = curves.detection_matches(result.coco, 0.5)
    matrix = confusion.confusion_matrix(
        result.coco,
        iou_threshold=config.eval.confusion_iou_threshold,
        score_threshold=config.eval.confusion_score_threshold,
    )
    return Analysis(
        precision=curves.precision_curves(result.coco),
        matches=matches,
        per_class_thresholds=[curves.threshold_curves(m) for m in matches.per_class],
        overall_thresholds=curves.threshold_curves(matches.pooled()),
        best_f1=curves.best_f1_thresholds(matches),
        confusion=matrix,
        confusion_labels=(*matches.names, BACKGROUND),
    )


def make_figures(analysis: Analysis, config: ml_collections.ConfigDict) -> dict:
    """``{file stem: matplotlib Figure}`` of the five evaluation figures (``FIGURE_NAMES``)."""
    vis = config.visualization
    kw = dict(max_legend=vis.max_legend_classes, dpi=vis.figure_dpi)
    p, names = analysis.precision, analysis.precision.names
    t = analysis.overall_thresholds
    f1 = np.stack([c["f1"] for c in analysis.per_class_thresholds]) if names else np.zeros((0, 0))
    no_gt = np.asarray([m.num_gt == 0 for m in analysis.matches.per_class], bool)
    if no_gt.any():
        f1[no_gt] = np.nan
    return {
        "pr_curve_iou50": figures.pr_curve_figure(
            p.recall, p.iou50, names, "precision-recall at IoU 0.5", **kw
        ),
        "pr_curve_iou50_95": figures.pr_curve_figure(
            p.recall, p.iou50_95, names, "precision-recall, mean over IoU 0.5:0.95", **kw
        ),
        "f1_threshold": figures.f1_threshold_figure(
            t["thresholds"], f1, names, t, analysis.best_f1["overall"], **kw
        ),
        "confusion_matrix": figures.confusion_figure(
            analysis.confusion,
            analysis.confusion_labels,
            f"confusion at IoU {config.eval.confusion_iou_threshold:g}, "
            f"score >= {config.eval.confusion_score_threshold:g}",
            dpi=vis.figure_dpi,
        ),
        "ap_per_class": figures.ap_bar_figure(names, p.ap, p.ap50, dpi=vis.figure_dpi),
    }


def sample_images(result: EvalResult, config: ml_collections.ConfigDict) -> list[np.ndarray]:
    """Each sample as one uint8 image: ground truth (left) beside detections (right)."""
    threshold = config.eval.sample_score_threshold
    names = result.class_names
    out = []
    for s in result.samples:
        image, _ = draw.upscale(s.image, config.visualization.sample_min_side)
        real = ~s.gt_is_crowd
        gt = draw.draw_boxes(image, s.gt_boxes[real], s.gt_classes[real], names)
        keep = s.det_scores >= threshold
        det = draw.draw_boxes(
            image, s.det_boxes[keep], s.det_classes[keep], names, scores=s.det_scores[keep]
        )
        out.append(
            mosaic.side_by_side(
                draw.caption(gt, f"ground truth, image {s.image_id}"),
                draw.caption(det, f"detections, score >= {threshold:g}"),
            )
        )
    return out


def _confusion_json(analysis: Analysis, config) -> dict:
    return {
        "iou_threshold": config.eval.confusion_iou_threshold,
        "score_threshold": config.eval.confusion_score_threshold,
        "rows": "ground truth class (last: background = false positives)",
        "columns": "detected class (last: background = missed ground truth)",
        "labels": list(analysis.confusion_labels),
        "counts": analysis.confusion.tolist(),
    }


def write_eval_report(
    result: EvalResult,
    out_dir,
    config: ml_collections.ConfigDict,
    step: int | None = None,
    analysis: Analysis | None = None,
) -> list[epath.Path]:
    """Writes the figures, sample images and ``metrics.json`` of ``result`` into ``out_dir``
    (created; any ``epath``); returns the files written."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = analysis or analyze(result, config)
    written = [
        figures.save_figure(fig, out_dir / f"{name}.png")
        for name, fig in make_figures(analysis, config).items()
    ]
    for k, (image, s) in enumerate(zip(sample_images(result, config), result.samples, strict=True)):
        path = out_dir / SAMPLES_DIR / f"sample_{k:03d}_id{s.image_id}.png"
        written.append(mosaic.save_png(image, path))
    report = {
        "step": step,
        "metrics": result.metrics,
        "best_f1": analysis.best_f1,
        "confusion_matrix": _confusion_json(analysis, config),
    }
    metrics_path = out_dir / METRICS_FILE
    atomic_files.write_text(metrics_path, json.dumps(report, indent=1))  # whole or the old one
    return [*written, metrics_path]


def pr_curve_tensor(t: dict) -> np.ndarray:
    """``threshold_curves`` output as TensorBoard's PR-curve tensor ``[6, thresholds]`` float32:
    TP, FP, TN (0), FN, precision, recall; precision and recall with TensorBoard's own guard
    (``x / max(1e-7, denominator)``: 0 where nothing is detected or there is no ground truth)."""
    tp, fp, fn = t["tp"], t["fp"], t["fn"]
    precision = tp / np.maximum(1e-7, tp + fp)
    recall = tp / np.maximum(1e-7, tp + fn)
    return np.stack([tp, fp, np.zeros_like(tp), fn, precision, recall]).astype(np.float32)


def write_tensorboard(
    writer, step: int, result: EvalResult, config, analysis: Analysis | None = None
) -> Analysis:
    """The evaluation figures and samples as TensorBoard images (``eval_figures/<name>``,
    ``eval_samples``) and the IoU 0.5 score-threshold curves as PR curves
    (``eval_pr_curves/<class>`` and ``eval_pr_curves/all_classes``), through a clu writer."""
    from tensorboard.plugins.pr_curve import metadata as pr_metadata

    analysis = analysis or analyze(result, config)
    images = {
        f"eval_figures/{name}": figures.figure_to_array(fig)[None]
        for name, fig in make_figures(analysis, config).items()
    }
    samples = sample_images(result, config)
    if samples:
        images["eval_samples"] = np.stack(samples)
    writer.write_images(step, images)
    curves_by_tag = {"eval_pr_curves/all_classes": analysis.overall_thresholds}
    for name, m, t in zip(
        analysis.matches.names, analysis.matches.per_class, analysis.per_class_thresholds,
        strict=True,
    ):  # fmt: skip
        if m.num_gt > 0:
            curves_by_tag[f"eval_pr_curves/{name}"] = t
    values, meta = {}, {}
    for tag, t in curves_by_tag.items():
        values[tag] = pr_curve_tensor(t)
        meta[tag] = pr_metadata.create_summary_metadata(
            display_name=tag, description="IoU 0.5, by score threshold", num_thresholds=len(t["tp"])
        ).SerializeToString()
    writer.write_summaries(step, values, meta)
    return analysis
