"""The model's input convention, defined once.

Images enter the network as RGB pixels in [0, 255] mapped to [-1, 1] by ``float32(2/255) * x - 1``
(the TF Object Detection API's ``preprocess`` of the published MobileDets). ``normalize`` is
written with plain arithmetic so that the same function serves the input pipeline (TensorFlow
tensors), the model (``models.preprocess``, JAX) and numpy; exported TFLite files take the pixels
and do it inside the graph.
"""

import numpy as np

PIXEL_MAX = 255.0
PIXEL_SCALE = np.float32(2.0 / PIXEL_MAX)
PIXEL_OFFSET = np.float32(-1.0)
# The same map as (x - mean) / std, as image metadata states it: mean = std = 127.5.
NORM_MEAN = NORM_STD = PIXEL_MAX / 2.0


def normalize(pixels):
    """float32 pixels in [0, 255] -> [-1, 1] (works on numpy, JAX and TensorFlow arrays)."""
    return pixels * PIXEL_SCALE + PIXEL_OFFSET
