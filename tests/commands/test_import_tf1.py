"""``python -m mobiledet_jax.import_tf1`` on TF1 checkpoints of the reference weight rule: exact outputs,
clear failures."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.models import build_model, preprocess
from tests.helpers import tf1_reference

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# README section 9 of the reference data: max |ref| of box encodings and class logits per variant.
REF_MAX = {"cpu": (0.40, 0.46), "dsp": (0.40, 0.46), "edgetpu": (0.39, 0.46), "gpu": (1.93, 3.64)}


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
def imported(tmp_path_factory):
    """TF1 checkpoints of the seeded weights (``models.tf1_seeded_weights``), imported with the
    CLI: {variant: workdir}."""
    out = {}
    for variant in tf1_reference.VARIANTS:
        base = tmp_path_factory.mktemp(variant)
        prefix = tf1_reference.write_checkpoint(variant, base / "tf1" / "model.ckpt")
        workdir = base / "workdir"
        result = _run(["-m", "mobiledet_jax.import_tf1", f"--model={variant}",
                       f"--checkpoint={prefix}", f"--workdir={workdir}"])  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "imported" in result.stdout
        out[variant] = workdir
    return out


def _outputs(workdir):
    variables, meta, _ = workdir_lib.load_model(str(workdir))
    model = build_model(workdir_lib.model_config_from_meta(meta))
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


def test_cli_reports_a_missing_checkpoint(tmp_path):
    result = _run(["-m", "mobiledet_jax.import_tf1", "--model=edgetpu",
                   f"--checkpoint={tmp_path / 'nope.ckpt'}", f"--workdir={tmp_path / 'w'}"])  # fmt: skip
    assert result.returncode == 2
    assert "cannot read TF checkpoint" in result.stderr
