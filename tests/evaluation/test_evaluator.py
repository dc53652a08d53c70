"""The evaluator is built once per run: its iterator, anchors and jitted detect function are reused,
so periodic evaluations compile once."""

import json

import numpy as np
import pytest

from mobiledet_jax import workdir
from mobiledet_jax.evaluation import evaluator as evaluator_lib
from mobiledet_jax.evaluation.visual_report import FIGURE_NAMES
from mobiledet_jax.models import build_model, input_size
from mobiledet_jax.models.random_weights import random_variables
from mobiledet_jax.sharding import make_mesh
from mobiledet_jax.training import trainer
from tests.helpers.png_checks import assert_png_with_content
from tests.helpers.tensorboard_events import read_events
from tests.helpers.tiny_configs import tiny_config


def test_repeated_evaluations_reuse_one_program(tmp_path):
    config = tiny_config(tmp_path / "cache")
    model = build_model(config.model)
    variables = random_variables(model, input_size(config.model), seed=0, class_logit_scale=10.0)
    ev = evaluator_lib.Evaluator(config, make_mesh(config.mesh), model=model)
    first = ev.evaluate(variables)
    second = ev.evaluate(variables)
    assert ev.compile_count() == 1
    assert first == second  # the same split, in the same order, scored the same
    assert len(ev.iterator) == 2  # 16 val images in batches of 8, opened once


def test_pixel_batches_score_like_normalized_batches(tmp_path):
    """``pixels=True`` normalizes inside the jitted function: the same metrics as [-1, 1] input."""
    config = tiny_config(tmp_path / "cache")
    model = build_model(config.model)
    variables = random_variables(model, input_size(config.model), seed=1, class_logit_scale=10.0)
    mesh = make_mesh(config.mesh)
    normalized = evaluator_lib.Evaluator(config, mesh, model=model).evaluate(variables)
    pixels = evaluator_lib.Evaluator(config, mesh, model=model, pixels=True).evaluate(variables)
    for k, v in normalized.items():
        np.testing.assert_allclose(pixels[k], v, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_three_periodic_evaluations_of_a_training_run_compile_once(tmp_path, monkeypatch):
    """Also: every evaluation writes its pictures to TensorBoard (images and PR curves), and the
    final one the folder ``<workdir>/eval_<last step>/``."""
    config = tiny_config(tmp_path / "cache")
    config.eval.num_sample_images = 3
    t = config.train
    t.num_steps, t.batch_size, t.warmup_steps, t.log_every = 6, 8, 2, 2
    config.checkpoint.every_steps = 6
    config.eval.every_steps = 2  # steps 2, 4 and 6 (the last one is the final evaluation)
    built = []

    class CountingEvaluator(evaluator_lib.Evaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0
            built.append(self)

        def evaluate(self, variables, max_batches=None):
            self.calls += 1
            return super().evaluate(variables, max_batches)

    monkeypatch.setattr(trainer, "Evaluator", CountingEvaluator)
    metrics = trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
    assert len(built) == 1, "the trainer must build its evaluator once"
    assert built[0].calls == 3
    assert built[0].compile_count() == 1
    # the run's final metrics are those of its saved final state, scored afresh
    loaded = workdir.load_model(str(tmp_path / "workdir"))
    assert loaded.step == 6
    again = evaluator_lib.Evaluator(config, make_mesh(config.mesh)).evaluate(loaded.variables)
    for k, v in metrics.items():
        np.testing.assert_allclose(again[k], v, atol=1e-6, err_msg=k)

    workdir_path = tmp_path / "workdir"
    events = read_events(workdir_path)
    for tag in [f"eval_figures/{name}" for name in FIGURE_NAMES] + ["eval_samples"]:
        plugin, values = events[tag]
        assert plugin == "images" and sorted(step for step, _ in values) == [2, 4, 6], tag
    plugin, values = events["eval_pr_curves/all_classes"]
    assert plugin == "pr_curves" and sorted(step for step, _ in values) == [2, 4, 6]
    assert values[0][1].shape == (6, 101)
    assert not (workdir_path / "eval_2").exists()  # folders only for the final evaluation
    folder = workdir_path / "eval_6"
    for name in FIGURE_NAMES:
        assert_png_with_content(folder / f"{name}.png")
    assert len(list((folder / "samples").glob("*.png"))) == 3
    report = json.loads((folder / "metrics.json").read_text())
    assert report["step"] == 6 and "AP" in report["metrics"] and "overall" in report["best_f1"]
