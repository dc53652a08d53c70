"""Shared test fixtures.

The TF1 reference data (outputs of the TF1 Object Detection API for the published MobileDet
configs with seeded random weights) lives in ``tests/reference_data/tf1``; see its README.
"""

import os
import pathlib
import subprocess
import sys

import pytest

# With libtpu installed (requirements-tpu-aot.txt, for the AOT compile test), JAX would probe for a
# TPU in this process and in every subprocess a test starts; the tests run on the CPU. The AOT
# compile uses libtpu's compile-only topology, which needs no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tests.helpers import tf1_reference  # noqa: E402  (after JAX_PLATFORMS)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tf1_reference_dir() -> pathlib.Path:
    return tf1_reference.REFERENCE_DIR


@pytest.fixture(scope="session")
def tf1_edgetpu_workdir(tmp_path_factory) -> pathlib.Path:
    """The seeded TF1 MobileDet-EdgeTPU checkpoint (90 classes, ``models.tf1_seeded_weights``),
    imported with ``python -m mobiledet_jax.import_tf1`` into a workdir."""
    base = tmp_path_factory.mktemp("tf1_edgetpu")
    prefix = tf1_reference.write_checkpoint("edgetpu", base / "tf1" / "model.ckpt")
    workdir = base / "workdir"
    result = subprocess.run(
        [sys.executable, "-m", "mobiledet_jax.import_tf1", "--model=edgetpu",
         f"--checkpoint={prefix}", f"--workdir={workdir}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir
