"""A searched architecture as a model: configs/searched.py, config checks, the reward quality."""

import json
import sys

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax import config_checks
from mobiledet_jax.config import ConfigError
from mobiledet_jax.detection.postprocess import Detections
from mobiledet_jax.models import build_model, model_backbone_spec, specs
from mobiledet_jax.search import space as S
from mobiledet_jax.search.quality import batch_quality

sys.path.insert(0, "configs")
import searched  # noqa: E402


@pytest.fixture
def arch_file(tmp_path):
    space = S.get_space("tiny")
    spec = S.decode(space, S.random_indices(space, np.random.default_rng(3)))
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"backbone": specs.spec_to_dict(spec), "image_size": 160}))
    return path, spec


@pytest.mark.parametrize(
    "suffix,steps,size", [("", 400_000, 320), (":short", 50_000, 320), (":quickstart", 800, 160)]
)
def test_searched_config_recipes(arch_file, suffix, steps, size):
    path, spec = arch_file
    config = searched.get_config(f"{path}{suffix}")
    assert config.model.name == "searched"
    assert config.train.num_steps == steps and config.model.image_size == size
    assert model_backbone_spec(config.model) == spec
    assert build_model(config.model).backbone_spec == spec
    config_checks.check_model(config)


def test_searched_config_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="needs the search result"):
        searched.get_config("")
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="no 'backbone'"):
        searched.get_config(str(bad))


def test_config_checks_of_the_arch_field():
    config = config_lib.base_config("searched")
    with pytest.raises(ConfigError, match="arch is empty"):
        config_checks.check_model(config)
    config.model.arch = "{not json"
    with pytest.raises(ConfigError, match="not JSON"):
        config_checks.check_model(config)
    other = config_lib.base_config("mobiledet_edgetpu")
    other.model.arch = specs.spec_to_json(specs.MOBILEDET_EDGETPU)
    with pytest.raises(ConfigError, match="read only for"):
        config_checks.check_model(other)


def _dets(boxes, classes, scores):
    b = np.zeros((1, 4, 4), np.float32)
    c = np.zeros((1, 4), np.int32)
    s = np.zeros((1, 4), np.float32)
    n = len(boxes)
    b[0, :n], c[0, :n], s[0, :n] = boxes, classes, scores
    return Detections(b, s, c, np.array([n]), np.zeros((1, 4), np.int32))


def test_batch_quality_hand_cases():
    batch = {
        "gt_boxes": np.array([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]]], np.float32),
        "gt_classes": np.array([[1, 0]], np.int32),
        "gt_mask": np.array([[True, False]]),
    }
    exact = _dets([[0.1, 0.1, 0.5, 0.5]], [1], [0.9])
    assert batch_quality(exact, batch, (64, 64), 3, "ap") == pytest.approx(1.0)
    wrong_class = _dets([[0.1, 0.1, 0.5, 0.5]], [2], [0.9])
    assert batch_quality(wrong_class, batch, (64, 64), 3, "ap50") == 0.0
    # a 0.45 x 0.4 box around the 0.4 x 0.4 one: IoU 0.16 / 0.18 = 0.889, a hit at the IoU
    # thresholds 0.50 .. 0.85 and a miss at 0.90 and 0.95: AP 8 / 10
    near = _dets([[0.1, 0.1, 0.55, 0.5]], [1], [0.9])
    assert batch_quality(near, batch, (64, 64), 3, "ap") == pytest.approx(0.8)
    empty = {**batch, "gt_mask": np.zeros((1, 2), bool)}
    assert batch_quality(exact, empty, (64, 64), 3) == 0.0
    with pytest.raises(ValueError, match="quality"):
        batch_quality(exact, batch, (64, 64), 3, "f1")
