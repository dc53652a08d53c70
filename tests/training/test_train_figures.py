"""A short training run writes its evaluation pictures: TensorBoard images and PR curves at
every evaluation, and ``<workdir>/eval_<last step>/`` after the final one."""

import json

import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.evaluation.visual_report import FIGURE_NAMES as FIGURES
from mobiledet_jax.training import trainer
from tests.helpers.png_checks import assert_png_with_content
from tests.helpers.tensorboard_events import read_events


@pytest.mark.slow
def test_short_run_writes_tensorboard_figures_and_the_eval_folder(tmp_path):
    c = config_lib.base_config("mobiledet_edgetpu")
    c.model.num_classes = 4
    c.model.width_multiplier = 0.35
    c.model.image_size = 96
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.synthetic.num_train = 16
    c.data.synthetic.num_val = 8
    c.data.num_shards = 1
    c.data.shuffle_buffer = 16
    t = c.train
    t.num_steps, t.batch_size, t.warmup_steps, t.log_every = 2, 4, 1, 1
    c.checkpoint.every_steps = 2
    c.eval.every_steps = 1  # a periodic evaluation at step 1, the final one at step 2
    c.eval.batch_size = 8
    c.eval.num_sample_images = 3
    workdir = tmp_path / "workdir"
    trainer.train_and_evaluate(c, str(workdir))

    events = read_events(workdir)
    for tag in [f"eval_figures/{name}" for name in FIGURES] + ["eval_samples"]:
        plugin, values = events[tag]
        assert plugin == "images" and sorted(step for step, _ in values) == [1, 2], tag
    plugin, values = events["eval_pr_curves/all_classes"]
    assert plugin == "pr_curves" and sorted(step for step, _ in values) == [1, 2]
    assert values[0][1].shape == (6, 101)
    assert not (workdir / "eval_1").exists()  # folders only for the final evaluation
    folder = workdir / "eval_2"
    for name in FIGURES:
        assert_png_with_content(folder / f"{name}.png")
    assert len(list((folder / "samples").glob("*.png"))) == 3
    report = json.loads((folder / "metrics.json").read_text())
    assert report["step"] == 2 and "AP" in report["metrics"] and "overall" in report["best_f1"]
