"""Importing TF1 checkpoints written by the reference weight rule: exact outputs, clear failures."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import workdir
from mobiledet_jax import config as config_lib
from mobiledet_jax.import_tf1 import ImportMismatchError, map_tf1_variables
from mobiledet_jax.models import build_model, preprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# README section 9 of the reference data: max |ref| of box encodings and class logits per variant.
REF_MAX = {"cpu": (0.40, 0.46), "dsp": (0.40, 0.46), "edgetpu": (0.39, 0.46), "gpu": (1.93, 3.64)}


def _make_checkpoint_module(tf1_reference_dir):
    spec = importlib.util.spec_from_file_location(
        "make_checkpoint", tf1_reference_dir / "make_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_input():
    return np.random.default_rng(1234).uniform(0, 255, (1, 320, 320, 3)).astype(np.float32)


def tolerance(ref):
    return 1e-4 * max(1.0, float(np.max(np.abs(ref))))


def _run(args, **kw):
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, **kw
    )
    return result


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tf1_reference_dir):
    """TF1 checkpoints by make_checkpoint.py, imported with the CLI: {variant: workdir}."""
    out = {}
    for variant in ("cpu", "dsp", "edgetpu", "gpu"):
        base = tmp_path_factory.mktemp(variant)
        prefix = base / "tf1" / "model.ckpt"
        made = _run([str(tf1_reference_dir / "make_checkpoint.py"), "--variant", variant,
                     "--ckpt", str(prefix)])  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr[-2000:]
        workdir = base / "workdir"
        result = _run(["-m", "mobiledet_jax.import_tf1", f"--model={variant}",
                       f"--checkpoint={prefix}", f"--workdir={workdir}"])  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "imported" in result.stdout
        out[variant] = workdir
    return out


def _outputs(workdir):
    variables, meta = checkpoints.load_model(str(workdir))
    model = build_model(checkpoints.model_config_from_meta(meta))
    fn = jax.jit(lambda v, x: model.apply(v, preprocess(x)))
    with jax.default_matmul_precision("float32"):
        return jax.tree.map(np.asarray, fn(variables, jnp.asarray(reference_input())))


@pytest.mark.slow
def test_edgetpu_import_is_output_exact(imported, tf1_reference_dir):
    out = _outputs(imported["edgetpu"])
    ref = np.load(tf1_reference_dir / "edgetpu" / "outputs.npz")
    features = np.load(tf1_reference_dir / "edgetpu" / "features.npz")
    for ours, theirs in (
        (out["box_encodings"], ref["box_encodings"]),
        (out["class_logits"], ref["class_predictions_with_background"]),
    ):
        assert ours.shape == theirs.shape
        assert np.max(np.abs(ours - theirs)) <= tolerance(theirs)
    for i in range(6):
        theirs = features[f"feature_map_{i}"]
        assert out["feature_maps"][i].shape == theirs.shape
        assert np.max(np.abs(out["feature_maps"][i] - theirs)) <= tolerance(theirs)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cpu", "dsp", "gpu"])
def test_other_variants_import_and_match_reference_statistics(imported, variant, tf1_reference_dir):
    """No reference outputs ship for these; the README's max |ref| (2 digits) still pins them."""
    out = _outputs(imported[variant])
    box_max, cls_max = REF_MAX[variant]
    assert abs(np.max(np.abs(out["box_encodings"])) - box_max) < 0.006
    assert abs(np.max(np.abs(out["class_logits"])) - cls_max) < 0.006


def test_mismatches_are_listed(tf1_reference_dir):
    mc = _make_checkpoint_module(tf1_reference_dir)
    weights = mc.all_weights(mc.load_manifest("edgetpu"))
    cfg = config_lib.model_config("mobiledet_edgetpu")
    variables, report = map_tf1_variables({**weights, "global_step": np.int64(5)}, cfg)
    assert report.num_values == 4_196_095 and report.ignored == ["global_step"]
    assert variables["params"]["backbone"]["IBN"]["SeparableConv2d"]["kernel"].shape == (
        3, 3, 1, 320,
    )  # fmt: skip

    broken = dict(weights)
    del broken["FeatureExtractor/MobileDetEdgeTPU/IBN_3/Conv/weights"]
    broken["BoxPredictor_0/ClassPredictor/biases"] = np.zeros(7, np.float32)
    broken["Extra/unknown/weights"] = np.zeros(3, np.float32)
    with pytest.raises(ImportMismatchError) as e:
        map_tf1_variables(broken, cfg)
    msg = str(e.value)
    assert "FeatureExtractor/MobileDetEdgeTPU/IBN_3/Conv/weights" in msg
    assert "BoxPredictor_0/ClassPredictor/biases: checkpoint (7,)" in msg
    assert "Extra/unknown/weights" in msg
    # a checkpoint of another model fails loudly too
    with pytest.raises(ImportMismatchError, match="MobileDetCPU"):
        map_tf1_variables(weights, config_lib.model_config("mobiledet_cpu"))


def test_cli_reports_a_missing_checkpoint(tmp_path):
    result = _run(["-m", "mobiledet_jax.import_tf1", "--model=edgetpu",
                   f"--checkpoint={tmp_path / 'nope.ckpt'}", f"--workdir={tmp_path / 'w'}"])  # fmt: skip
    assert result.returncode == 2
    assert "cannot read TF checkpoint" in result.stderr
