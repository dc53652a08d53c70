"""Seeded test weights for the TF1 MobileDet graphs ("weight rule v1" of the reference data).

Why this exists: the TF1 Object Detection API reference outputs under ``tests/reference_data/tf1``
were computed with every variable of the four published MobileDet graphs set by a fixed rule
instead of trained values. Regenerating exactly the same weights here lets the tests write a TF1
checkpoint, import it with ``mobiledet_jax.import_tf1`` and check the model output for output
(raw box encodings, class logits, feature maps) against the reference, with no trained checkpoint
and no download. These are random test weights, not a model.

The rule, per variable, independent of every other variable (so the order never matters):

- the RNG is ``numpy.random.default_rng(crc32(name))``, where ``name`` is the TF1 variable name
  without ``:0`` (the checkpoint key) and the CRC is zlib's unsigned 32-bit one of its UTF-8 bytes;
- by the last path component of the name: ``weights``, ``depthwise_weights``,
  ``pointwise_weights`` and ``biases`` draw ``normal(0, 0.05)``; ``gamma`` is
  ``1 + 0.1 * normal(0, 1)``; ``beta`` and ``moving_mean`` are ``0.1 * normal(0, 1)``;
  ``moving_variance`` is ``uniform(0.5, 1.5)``;
- values are drawn in float64 in the TF shape (C order, HWIO kernels, ``[kh, kw, in, 1]``
  depthwise kernels) and cast once to float32.

``checksum`` is the sha256 of every value's little-endian float32 bytes, concatenated in sorted-name
order; it equals the ``weights_sha256`` of the variant's ``manifest.json``.

Only numpy is needed, except ``write_tf1_checkpoint`` (TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NORMAL_005 = ("weights", "depthwise_weights", "pointwise_weights", "biases")


def weight_value(name: str, shape: Sequence[int]) -> np.ndarray:
    """The float32 value of the TF1 variable ``name`` (no ``:0``) of TF shape ``shape``."""
    rng = np.random.default_rng(seed=zlib.crc32(name.encode("utf-8")))
    shape = tuple(int(d) for d in shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf in NORMAL_005:
        value = rng.normal(0.0, 0.05, size=shape)
    elif leaf == "gamma":
        value = 1.0 + 0.1 * rng.normal(0.0, 1.0, size=shape)
    elif leaf in ("beta", "moving_mean"):
        value = 0.1 * rng.normal(0.0, 1.0, size=shape)
    elif leaf == "moving_variance":
        value = rng.uniform(0.5, 1.5, size=shape)
    else:
        raise ValueError(f"{name}: no seeded-weight rule for a variable named {leaf!r}")
    return value.astype(np.float32)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A reference ``manifest.json`` (a file, or the variant folder holding it)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    return json.loads(path.read_text())


def all_weights(manifest: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of a manifest (its dict, or its path) by TF1 name, in sorted-name order."""
    if not isinstance(manifest, Mapping):
        manifest = read_manifest(manifest)
    entries = sorted(manifest["variables"], key=lambda v: v["name"])
    return {v["name"]: weight_value(v["name"], v["shape"]) for v in entries}


def checksum(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 (hex) of the little-endian float32 bytes of all values, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return digest.hexdigest()


def write_tf1_checkpoint(weights: Mapping[str, np.ndarray], prefix: str | os.PathLike) -> str:
    """Writes ``weights`` as a TF1 checkpoint (``tf.compat.v1.train.Saver``, V2 format, no meta
    graph) whose keys are exactly the given names; returns the checkpoint prefix."""
    import tensorflow as tf  # lazily: the rule itself needs numpy only

    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables, assigns, feeds = {}, [], {}
        for name in sorted(weights):
            value = np.asarray(weights[name], np.float32)
            var = tf.compat.v1.get_variable(
                name,
                shape=value.shape,
                dtype=tf.float32,
                initializer=tf.compat.v1.zeros_initializer(),
                use_resource=False,
            )
            feed = tf.compat.v1.placeholder(tf.float32, value.shape)
            variables[name] = var
            assigns.append(tf.compat.v1.assign(var, feed))
            feeds[feed] = value
        saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(assigns, feeds)
            saver.save(sess, prefix, write_meta_graph=False)
    return prefix
