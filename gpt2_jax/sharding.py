"""The device mesh and the one table that says how every parameter is laid out on it.

The mesh has two axes: `data` (pure data parallelism: params replicated) and `fsdp` (params
and optimizer state split across devices, gathered by XLA where a matmul needs them). The
batch is split over both. With fsdp=1 training is plain data parallel; a new layout is a
change to RULES, not to the model.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every device

# (regex over the "/"-joined param path, layout). First match wins; optimizer-state paths
# end with the param path, so the same rules lay out Adam's moments like their params.
RULES = (
    (r"(wte|wpe)/embedding$", P(None, "fsdp")),  # [vocab or positions, embed]: split embed
    (r"(c_attn|c_fc)/kernel$", P("fsdp", None)),  # [embed, out]: split embed
    (r"c_proj/kernel$", P(None, "fsdp")),  # [in, embed]: split embed
    (r"(bias|scale)$", P()),  # vectors: replicated, they are tiny
)


class ShardingError(UserError):
    """A mesh that does not fit the devices, or a parameter that the rules cannot place."""


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all devices (of every process); data = n_devices / fsdp, fsdp=0: all."""
    devices = jax.devices() if devices is None else devices
    problem = fsdp_problem(fsdp, len(devices))
    if problem:
        raise ShardingError(problem)
    fsdp = fsdp or len(devices)
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), MESH_AXES)


def fsdp_problem(fsdp: int, n_devices: int) -> str | None:
    """Why `fsdp` cannot split `n_devices` devices, or None."""
    if fsdp < 0:
        return f"fsdp={fsdp} must be >= 0 (0: all devices)"
    if n_devices % (fsdp or n_devices):
        return f"fsdp={fsdp} does not divide the {n_devices} device{'s' * (n_devices != 1)}"
    return None


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of one array, checked against its shape."""
    if not shape:  # scalars: step counters
        return P()
    for pattern, spec in RULES:
        if re.search(pattern, path):
            for dim, axis in zip(shape, spec):
                if axis is not None and dim % mesh.shape[axis]:
                    raise ShardingError(f"{path}: dimension {dim} is not divisible by {axis}={mesh.shape[axis]}")
            return spec
    raise ShardingError(f"{path}: no rule in sharding.RULES places this array")


def tree_shardings(mesh: Mesh, abstract_tree):
    """NamedShardings for every array of a pytree (params, optimizer state, train state)."""
    def sharding(path, leaf):
        return NamedSharding(mesh, spec_for(jax.tree_util.keystr(path, simple=True, separator="/"), leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(sharding, abstract_tree)


def with_shardings(abstract_tree, shardings):
    """abstract_tree's ShapeDtypeStructs, each with its sharding: what orbax restores into, what a plan compiles."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def batch_sharding(mesh: Mesh, leading_dims: int = 0) -> NamedSharding:
    """Split dimension `leading_dims` (the batch) over all devices; e.g. 1 for [accum, batch, time]."""
    return NamedSharding(mesh, P(*([None] * leading_dims), BATCH_AXES))
