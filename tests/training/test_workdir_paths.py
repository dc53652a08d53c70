"""Workdirs given as relative paths (the README's ``--workdir=runs/quickstart``) work: orbax refuses
relative checkpoint paths, so every entry point makes local workdirs absolute first."""

import os

import numpy as np
from ml_collections import ConfigDict

from mobiledet_jax import workdir


def test_workdir_path_makes_local_paths_absolute_and_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(workdir.workdir_path("runs/q")) == os.path.join(str(tmp_path), "runs", "q")
    assert str(workdir.workdir_path(tmp_path / "a")) == str(tmp_path / "a")
    assert str(workdir.workdir_path("gs://bucket/runs/q")) == "gs://bucket/runs/q"


def test_save_and_load_model_in_a_relative_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variables = {
        "params": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
        "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}},
    }
    path = workdir.save_model("runs/rel", variables, ConfigDict({"name": "x"}), step=7)
    assert path.is_absolute() and (tmp_path / "runs" / "rel" / "checkpoints" / "7").is_dir()
    assert workdir.latest_step("runs/rel") == 7
    loaded, meta, step = workdir.load_model("runs/rel")
    np.testing.assert_array_equal(
        loaded["params"]["dense"]["kernel"], variables["params"]["dense"]["kernel"]
    )
    assert meta["model"] == {"name": "x"} and step == 7
