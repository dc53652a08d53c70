"""Detection math as pure, jit-able JAX functions with static shapes (docs/reference/head_and_anchors.md).

Boxes are normalized ``[ymin, xmin, ymax, xmax]`` everywhere. One concept per module:

- ``anchors``: SSD multiple-grid anchors (numpy, computed once per input size);
- ``box_coder``: Faster R-CNN box encoding/decoding (scales 10, 10, 5, 5);
- ``matcher``: IoU similarity and the argmax matcher;
- ``target_assigner``: per-anchor class/box targets on padded ground truth (vmapped over a batch);
- ``losses``: focal + smooth-L1 SSD loss and the L2 regularization convention;
- ``postprocess``: sigmoid, decoding and per-class NMS with fixed output shapes.

Import the modules (``from mobiledet_jax.detection import postprocess``); nothing is re-exported
here, so ``detection.postprocess`` is always the module.
"""
