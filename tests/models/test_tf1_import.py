"""The TF1 variable mapping (``models.tf1_import``): a one-to-one map of the seeded reference
checkpoint, and every mismatch listed by name when the checkpoint and the model differ."""

import numpy as np
import pytest

from mobiledet_jax import config as config_lib
from mobiledet_jax.models import tf1_seeded_weights
from mobiledet_jax.models.tf1_import import ImportMismatchError, map_tf1_variables
from tests.helpers import tf1_reference


def test_mismatches_are_listed():
    weights = tf1_seeded_weights.all_weights(tf1_reference.manifest("edgetpu"))
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
