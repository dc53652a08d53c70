"""The pictures of an evaluation (``evaluation.visual_report``): the eval folder's PNGs and
metrics.json, TensorBoard images and PR curves in the event files, and a training run whose
evaluations write them (and whose drawing failures are warnings, never errors)."""

import json
import logging

import numpy as np
import pytest
from clu import metric_writers

from mobiledet_jax import config as config_lib
from mobiledet_jax.evaluation import curves, visual_report
from mobiledet_jax.evaluation.coco_metric import CocoEvaluator
from mobiledet_jax.evaluation.evaluator import EvalResult
from mobiledet_jax.evaluation.samples import Sample
from mobiledet_jax.training import monitoring
from tests.helpers.png_checks import assert_png_with_content
from tests.helpers.tensorboard_events import read_events

NAMES = ("circle", "square", "triangle")
FIGURES = visual_report.FIGURE_NAMES


def fake_result(num_samples=2, seed=0) -> EvalResult:
    """A computed CocoEvaluator on noisy copies of random boxes, and samples on random pixels."""
    rng = np.random.default_rng(seed)
    ev = CocoEvaluator(category_ids=(1, 2, 3), category_names=NAMES)
    b, n, d = 8, 4, 12
    centers, sizes = rng.uniform(0.3, 0.7, (b, n, 2)), rng.uniform(0.1, 0.4, (b, n, 2))
    gt = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1)
    gt_classes = rng.integers(0, 3, (b, n))
    pick = rng.integers(0, n, d)
    det = np.clip(gt[:, pick] + rng.normal(0, 0.03, (b, d, 4)), 0, 1)
    det_classes = np.where(
        rng.random((b, d)) < 0.8, gt_classes[:, pick], rng.integers(0, 3, (b, d))
    )
    scores = rng.random((b, d))
    ev.add_batch(
        image_sizes=np.full((b, 2), 96), gt_boxes=gt, gt_classes=gt_classes,
        gt_mask=np.ones((b, n), bool), det_boxes=det, det_scores=scores,
        det_classes=det_classes, num_detections=np.full(b, d),
    )  # fmt: skip
    metrics = ev.compute()
    samples = [
        Sample(
            image=rng.integers(0, 255, (96, 96, 3), np.uint8),
            image_id=i + 1,
            gt_boxes=gt[i],
            gt_classes=gt_classes[i],
            gt_is_crowd=np.zeros(n, bool),
            det_boxes=det[i],
            det_scores=scores[i],
            det_classes=det_classes[i],
        )  # fmt: skip
        for i in range(num_samples)
    ]
    return EvalResult(metrics, ev, samples, NAMES)


def test_eval_folder(tmp_path):
    config = config_lib.base_config()
    result = fake_result(num_samples=3)
    files = visual_report.write_eval_report(result, tmp_path / "eval_7", config, step=7)
    names = sorted(f.name for f in files)
    assert names == sorted([f"{f}.png" for f in FIGURES] + [
        "sample_000_id1.png", "sample_001_id2.png", "sample_002_id3.png", "metrics.json"
    ])  # fmt: skip
    for f in files:
        if f.suffix == ".png":
            assert_png_with_content(f)
    sample = assert_png_with_content(tmp_path / "eval_7" / "samples" / "sample_000_id1.png")
    # upscaled to sample_min_side (96 -> 384), two panels side by side under a caption strip
    assert sample.shape[1] == 2 * 384 + 4 and sample.shape[0] > 384
    report = json.loads((tmp_path / "eval_7" / "metrics.json").read_text())
    assert report["step"] == 7
    assert report["metrics"]["AP"] == pytest.approx(result.metrics["AP"])
    assert report["best_f1"] == curves.best_f1_thresholds(result.coco)  # JSON floats round-trip
    counts = np.asarray(report["confusion_matrix"]["counts"])
    assert counts.shape == (4, 4) and counts[3, 3] == 0
    assert report["confusion_matrix"]["labels"] == [*NAMES, "background"]
    # rows: every ground-truth box once (matched, or missed in the background column)
    assert counts[:3].sum() == len(result.coco.annotations)


def test_tensorboard_images_and_pr_curves(tmp_path):
    config = config_lib.base_config()
    writer = metric_writers.create_default_writer(str(tmp_path), asynchronous=False)
    result = fake_result()
    visual_report.write_tensorboard(writer, 5, result, config)
    writer.flush()
    events = read_events(tmp_path)
    for name in FIGURES:
        plugin, values = events[f"eval_figures/{name}"]
        assert plugin == "images" and values[0][0] == 5
    plugin, values = events["eval_samples"]
    assert plugin == "images" and len(values[0][1]) == 2 + 2  # width, height, then 2 PNGs
    for tag in ("eval_pr_curves/all_classes", *(f"eval_pr_curves/{n}" for n in NAMES)):
        plugin, values = events[tag]
        assert plugin == "pr_curves"
        step, tensor = values[0]
        assert step == 5 and tensor.shape == (6, curves.NUM_THRESHOLDS)
    # the PR curve of all classes is the threshold curve of the pooled matches
    t = curves.threshold_curves(curves.detection_matches(result.coco).pooled())
    tensor = events["eval_pr_curves/all_classes"][1][0][1]
    np.testing.assert_allclose(tensor[0], t["tp"])
    np.testing.assert_allclose(tensor[1], t["fp"])
    np.testing.assert_allclose(tensor[5], np.nan_to_num(t["recall"]), atol=1e-6)


def test_a_drawing_failure_is_a_warning(tmp_path, caplog):
    config = config_lib.base_config()
    log = monitoring.MetricsLog(tmp_path)
    broken = EvalResult({}, CocoEvaluator(category_ids=(1,)), [], ("a",))  # never computed
    with caplog.at_level(logging.WARNING):
        monitoring.write_eval_figures(log, 3, broken, config, tmp_path / "eval_3")
    assert "evaluation figures were not written" in caplog.text
    monitoring.write_eval_figures(log, 3, None, config)  # nothing to draw
    config.eval.figures = False
    monitoring.write_eval_figures(log, 3, fake_result(), config, tmp_path / "eval_off")
    assert not (tmp_path / "eval_off").exists()
    log.flush()
