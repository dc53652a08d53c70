"""The seeded TF1 test weights (``models.tf1_seeded_weights``) are the reference data's: checksums
and per-variable sums of all four manifests, the rule by hand, and a TF1 checkpoint round trip."""

import hashlib
import zlib

import numpy as np
import pytest

from mobiledet_jax.models import tf1_seeded_weights
from mobiledet_jax.models.tf1_import import read_tf1_checkpoint
from tests.helpers import tf1_reference


@pytest.mark.parametrize("variant", tf1_reference.VARIANTS)
def test_checksum_and_sums_equal_the_manifest(variant):
    manifest = tf1_reference.manifest(variant)
    weights = tf1_seeded_weights.all_weights(manifest)
    assert tf1_seeded_weights.checksum(weights) == manifest["weights_sha256"]
    assert len(weights) == manifest["counts"]["num_variables"]
    assert sum(w.size for w in weights.values()) == manifest["counts"]["total_params"]
    for entry in manifest["variables"]:
        value = weights[entry["name"]]
        assert value.dtype == np.float32 and list(value.shape) == entry["shape"]
        assert np.sum(value, dtype=np.float64) == pytest.approx(entry["sum"], rel=1e-12, abs=1e-12)


def test_rule_by_hand():
    name = "FeatureExtractor/MobileDetEdgeTPU/Conv/BatchNorm/moving_variance"
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    np.testing.assert_array_equal(
        tf1_seeded_weights.weight_value(name, [4]), rng.uniform(0.5, 1.5, 4).astype(np.float32)
    )
    gamma = "X/BatchNorm/gamma"
    rng = np.random.default_rng(zlib.crc32(gamma.encode()))
    np.testing.assert_array_equal(
        tf1_seeded_weights.weight_value(gamma, [2, 3]),
        (1.0 + 0.1 * rng.normal(0.0, 1.0, (2, 3))).astype(np.float32),
    )
    with pytest.raises(ValueError, match="Momentum"):
        tf1_seeded_weights.weight_value("X/weights/Momentum", [1])


def test_checksum_is_over_sorted_names_little_endian_float32():
    a = {"b": np.array([1.0], np.float32), "a": np.array([2.0, 3.0], np.float64)}
    expected = hashlib.sha256(np.array([2.0, 3.0, 1.0], "<f4").tobytes()).hexdigest()
    assert tf1_seeded_weights.checksum(a) == expected


def test_tf1_checkpoint_round_trip(tmp_path):
    weights = tf1_seeded_weights.all_weights(tf1_reference.manifest("edgetpu"))
    prefix = tf1_seeded_weights.write_tf1_checkpoint(weights, tmp_path / "tf1" / "model.ckpt")
    assert (tmp_path / "tf1" / "checkpoint").exists()
    restored = read_tf1_checkpoint(prefix)
    assert sorted(restored) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
