"""Fine-tuning end to end: import a TF1 checkpoint (90 COCO classes), re-head it to 3 classes and
train a few steps on a 3-class COCO-format dataset cut from the embedded one: the backbone and neck
are restored, the class predictors re-initialised, and the loss falls. A restore that matches
nothing is an error, never training from scratch."""

import json
import logging
import re

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.data import synthetic
from mobiledet_jax.training import finetune, trainer
from mobiledet_jax.training.monitoring import METRICS_FILE

STEPS = 16
SIZE = 128


def _three_class_split(directory, num_images, split_id):
    """A synthetic split without its 4th class: images holding a cross are dropped."""
    split = synthetic.generate_split(directory, num_images, 0, split_id, image_size=(SIZE, SIZE))
    coco = json.loads(split.annotations.read_text())
    drop = {a["image_id"] for a in coco["annotations"] if a["category_id"] == 4}
    coco["images"] = [im for im in coco["images"] if im["id"] not in drop]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in drop]
    coco["categories"] = [c for c in coco["categories"] if c["id"] != 4]
    path = split.annotations.with_name("instances_3class.json")
    path.write_text(json.dumps(coco))
    return str(path), str(split.images)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """The 3-class dataset (and its prepared shards, in ``cache``), shared by the tests."""
    root = tmp_path_factory.mktemp("three_classes")
    return root, _three_class_split(root / "train", 64, 0), _three_class_split(root / "val", 16, 1)


def _config(data, init_from):
    root, train_split, val_split = data
    c = config_lib.base_config("mobiledet_edgetpu")
    c.model.num_classes, c.model.image_size = 3, SIZE
    c.model.conv_form = "conv"  # a few steps: the faster compile (tests/helpers/train_harness.py)
    t = c.train
    t.num_steps, t.batch_size, t.log_every = STEPS, 8, 1
    t.base_lr, t.warmup_lr, t.warmup_steps = 0.05, 0.01, 5
    c.checkpoint.every_steps = 1000  # the final step only
    c.checkpoint.init_from = str(init_from)
    c.eval.max_batches, c.eval.batch_size = 0, 8  # no evaluation
    d = c.data
    d.source, d.cache_dir, d.num_shards, d.shuffle_buffer = "coco_json", str(root / "cache"), 2, 64
    cj = d.coco_json
    cj.train_annotations, cj.train_images = train_split
    cj.val_annotations, cj.val_images = val_split
    return c


@pytest.mark.slow
def test_import_rehead_to_3_classes_and_the_loss_falls(
    tf1_edgetpu_workdir, three_classes, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    config = _config(three_classes, tf1_edgetpu_workdir)
    workdir = tmp_path / "workdir"
    trainer.train_and_evaluate(config, str(workdir))

    (summary,) = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("initialised")
    ]
    restored, reinit = map(
        int, re.search(r"restored (\d+) variables, re-initialised (\d+)", summary).groups()
    )
    lines = [ln.strip() for ln in summary.splitlines() if ln.strip().startswith("re-initialised:")]
    # only the class predictors: width anchors x (90 + 1) in the checkpoint, anchors x (3 + 1) here
    assert reinit == len(lines) == 12
    assert all(re.match(r"re-initialised: params/head/BoxPredictor_\d/ClassPredictor/(kernel|bias) "
                        r"\(shape", ln) for ln in lines), lines  # fmt: skip
    assert not any("backbone" in ln or "neck" in ln for ln in lines)
    assert restored > 400  # every backbone/neck/box-branch variable and BN statistic

    losses = [m["loss"] for m in map(json.loads, (workdir / METRICS_FILE).open()) if "loss" in m]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.8 * first, losses

    variables, meta, _ = workdir_lib.load_model(str(workdir))
    assert meta["model"]["num_classes"] == 3
    assert (
        variables["params"]["head"]["BoxPredictor_0"]["ClassPredictor"]["bias"].shape[-1] % 4 == 0
    )


@pytest.mark.slow
def test_a_restore_that_matches_nothing_is_an_error(three_classes, tmp_path):
    other = tmp_path / "other"
    mc = config_lib.model_config("mobiledet_edgetpu")
    bogus = {"params": {"classifier": {"kernel": np.zeros((8, 10), np.float32)}}, "batch_stats": {}}
    workdir_lib.save_model(str(other), bogus, mc, source="not a detector")
    config = _config(three_classes, other)
    with pytest.raises(finetune.RestoreError, match="matched none of the model's variables"):
        trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
