"""Shared test fixtures.

The TF1 reference data lives in ``../shared/reference/tf1`` next to the checkout (read-only in CI).
``MOBILEDET_SHARED`` overrides that location.
"""

import os
import pathlib

import pytest

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
