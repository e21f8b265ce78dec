"""Is a restored state the one that was saved? Its shapes, a checksum of its bits; damaged steps set aside.

Orbax restores whatever bytes are on disk: a flipped bit in a data file comes back as a wrong
weight, silently. Each checkpoint therefore stores a checksum of every array (computed on the
device, a leaf at a time, when the step is saved), and a copy of the data iterator's position; a
restore recomputes and compares them. Shapes are compared before reading, so a run whose
settings changed the state's shapes is told so instead of having its healthy checkpoints taken
for damaged ones. What a failed read says (damage, or the machine): checkpoint_failures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

SET_ASIDE = ".unreadable"  # the suffix of a damaged step's directory
_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}  # 8-byte values: two uint32 words


def leaf_paths(tree) -> list[str]:
    """`h_0.attn.c_attn.kernel`-style names of a tree's leaves, the same for a state and its orbax metadata.

    Orbax's metadata stores tuples and NamedTuples as lists and dicts, so a path is written with
    the bare key, index or field name of each level.
    """
    def name(key):
        return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))

    return [".".join(name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def shapes(tree) -> dict[str, tuple]:
    """{leaf path: (shape, dtype name)} of arrays, ShapeDtypeStructs or orbax array metadata."""
    leaves = jax.tree.leaves(tree)
    return {path: (tuple(leaf.shape), np.dtype(leaf.dtype).name) for path, leaf in zip(leaf_paths(tree), leaves)}


def shape_difference(saved_metadata, target) -> str | None:
    """How a saved state's orbax metadata differs in shapes from the abstract tree it must restore into, or None."""
    saved, expected = shapes(getattr(saved_metadata, "tree", saved_metadata)), shapes(target)
    for path in sorted(saved.keys() | expected.keys()):
        if saved.get(path) != expected.get(path):
            held = f"holds {path} as {_describe(saved[path])}" if path in saved else f"has no {path}"
            wanted = f"{_describe(expected[path])}" if path in expected else "nothing"
            return f"{held}, this run's model needs {wanted}"
    return None


def _describe(entry: tuple) -> str:
    return f"{entry[1]}{list(entry[0])}"


@jax.jit
def _leaf_checksum(leaf):
    """A uint32: the sum of the leaf's bits, each word weighted by an odd number that depends on its position,
    modulo 2**32 (so any single flipped bit changes it, and so do swapped values)."""
    leaf = leaf.astype(jnp.uint8) if leaf.dtype == jnp.bool_ else leaf
    words = jax.lax.bitcast_convert_type(leaf, _UINT[leaf.dtype.itemsize]).astype(jnp.uint32).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


def checksums(tree) -> dict[str, int]:
    """{leaf path: checksum} of a tree of arrays (sharded or not). One leaf at a time, each waited for: XLA on CPU
    holds a leaf's weighted words whole, and one program over all leaves held them all at once (a second copy)."""
    return {path: int(_leaf_checksum(leaf)) for path, leaf in zip(leaf_paths(tree), jax.tree.leaves(tree))}


def first_corrupt_leaf(tree, saved: dict[str, int]) -> str | None:
    """The path of the first leaf whose checksum differs from the one saved with it, or None."""
    return next((path for path, value in checksums(tree).items() if saved.get(path) != value), None)


def state_checksums(states: dict, data_iterator=None) -> dict:
    """What a step saves to check its restore by: {name: {leaf path: checksum}} of each state and a copy of
    the data iterator's position (a small JSON of its own: a flipped digit there would change the data order)."""
    position = {"data": json.loads(json.dumps(data_iterator.get_state()))} if data_iterator is not None else {}
    return {name: checksums(tree) for name, tree in states.items()} | position  # the position by value: it moves on


def first_mismatch(restored: dict, names, data_iterator, checkpoints: Path, step: int) -> str | None:
    """What of a restored step (of the directory `checkpoints`) differs from the checksums saved with it, or None.
    `restored["checksum"]`: the step's state_checksums. Every process gives the same answer (a multi-process run
    restores one step)."""
    if "checksum" not in restored:  # steps saved before checksums existed have none; steps after one that has do
        lost = any(p.name.isdigit() and int(p.name) < step and (p / "checksum").is_dir() for p in checkpoints.iterdir())
        return "its checksums are missing (a step before it has them)" if lost else None
    saved = restored["checksum"]
    for name in names:  # the checksums of the whole (sharded) arrays: the same on every process
        if leaf := first_corrupt_leaf(restored[name], saved[name]):
            return f"checksum mismatch in {name} {leaf}"
    # The copy is process 0's; every process's position is the same count of batches, so each checks its own,
    # and one that differs anywhere sets the step aside everywhere. Steps saved before the copy existed have none.
    moved = data_iterator is not None and "data" in saved and _as_json(saved["data"]) != _as_json(
        data_iterator.get_state())
    if jax.process_count() > 1:
        moved = bool(multihost_utils.process_allgather(np.array(moved)).any())
    return "the data iterator's position differs from the copy saved beside it" if moved else None


def _as_json(value) -> str:
    return json.dumps(value, sort_keys=True)


def set_aside(checkpoints: Path, step: int) -> str | None:
    """Rename a damaged step out of the way (kept for a person to look at); the run can write it again. Called by
    every process of a run: process 0 renames it (its new name, None elsewhere), and all wait for that, so that
    none lists the step as it was (it would write it again where it stands: orbax refuses)."""
    aside = None
    if jax.process_index() == 0:
        aside = next(checkpoints / f"{step}{SET_ASIDE}{n or ''}" for n in range(1000)
                     if not (checkpoints / f"{step}{SET_ASIDE}{n or ''}").exists())
        (checkpoints / str(step)).rename(aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"gpt2_jax: checkpoint step {step} set aside")
    return aside and aside.name
