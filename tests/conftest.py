"""Shared test fixtures.

The TF1 reference data lives in ``../shared/reference/tf1`` next to the checkout (read-only in CI).
``MOBILEDET_SHARED`` overrides that location.
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

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
    env = os.environ.get("MOBILEDET_SHARED")
    return pathlib.Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def tf1_reference_dir() -> pathlib.Path:
    path = shared_dir() / "reference" / "tf1"
    if not path.is_dir():
        raise FileNotFoundError(
            f"TF1 reference data not found at {path}; set MOBILEDET_SHARED to the shared/ folder"
        )
    return path


@pytest.fixture(scope="session")
def tf1_edgetpu_workdir(tmp_path_factory, tf1_reference_dir) -> pathlib.Path:
    """The seeded TF1 MobileDet-EdgeTPU checkpoint of make_checkpoint.py (90 classes), imported
    with ``python -m mobiledet_jax.import_tf1`` into a workdir."""
    base = tmp_path_factory.mktemp("tf1_edgetpu")
    prefix = base / "tf1" / "model.ckpt"
    workdir = base / "workdir"
    for args in (
        [str(tf1_reference_dir / "make_checkpoint.py"), "--variant", "edgetpu", "--ckpt", str(prefix)],
        ["-m", "mobiledet_jax.import_tf1", "--model=edgetpu", f"--checkpoint={prefix}",
         f"--workdir={workdir}"],
    ):  # fmt: skip
        result = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir
