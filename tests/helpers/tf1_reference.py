"""The TF1 reference data in ``tests/reference_data/tf1`` and TF1 checkpoints of its seeded weights
(``mobiledet_jax.models.tf1_seeded_weights``)."""

import pathlib

from mobiledet_jax.models import tf1_seeded_weights

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1] / "reference_data" / "tf1"
VARIANTS = ("cpu", "dsp", "edgetpu", "gpu")


def manifest(variant: str) -> dict:
    return tf1_seeded_weights.read_manifest(REFERENCE_DIR / variant / "manifest.json")


def write_checkpoint(variant: str, prefix) -> str:
    """A TF1 checkpoint (``tf.compat.v1.train.Saver``) of the variant's seeded weights at
    ``prefix``; returns the prefix."""
    weights = tf1_seeded_weights.all_weights(manifest(variant))
    return tf1_seeded_weights.write_tf1_checkpoint(weights, prefix)
