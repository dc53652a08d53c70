"""The device mesh and the two shardings every part of the project uses.

Training, evaluation, the AOT compile and the search all run on a 1-D mesh whose one axis,
``DATA_AXIS``, splits the global batch; parameters and optimizer state are replicated. ``jit``
inserts the collectives, so BatchNorm in train mode computes its statistics over the whole global
batch (synchronized BN) without an ``axis_name``.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A 1-D ``data`` mesh over ``mesh_config.data`` devices (-1: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if mesh_config.data == -1 else mesh_config.data
    if n < 1 or n > len(devices) or len(devices) % n:
        raise ValueError(f"mesh.data={mesh_config.data} does not fit {len(devices)} devices")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def host_mesh() -> Mesh:
    """A one-device mesh on this process's first device (host-side work: export, TFLite runs)."""
    return Mesh(np.asarray(jax.local_devices()[:1]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))
