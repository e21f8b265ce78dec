"""Is a restored state the one that was saved? Its shapes, a checksum of its bits, quiet failures; damaged steps set aside.

Orbax restores whatever bytes are on disk: a flipped bit in a data file comes back as a wrong
weight, silently. Each checkpoint therefore stores a checksum of every array (computed on the
device, in one pass, when the step is saved) and a restore recomputes and compares it. Shapes
are compared before reading, so a run whose settings changed the state's shapes is told so
instead of having its healthy checkpoints taken for damaged ones.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.errors import error_chain

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
def _leaf_checksums(leaves):
    """One uint32 per leaf: the sum of its bits, each word weighted by an odd number that depends on its
    position, modulo 2**32 (so any single flipped bit changes it, and so do swapped values)."""
    sums = []
    for leaf in leaves:
        leaf = leaf.astype(jnp.uint8) if leaf.dtype == jnp.bool_ else leaf
        words = jax.lax.bitcast_convert_type(leaf, _UINT[leaf.dtype.itemsize]).astype(jnp.uint32).reshape(-1)
        weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return sums


def checksums(tree) -> dict[str, int]:
    """{leaf path: checksum} of a tree of arrays (sharded or not); waits for them to be computed."""
    return dict(zip(leaf_paths(tree), (int(s) for s in jax.device_get(_leaf_checksums(jax.tree.leaves(tree))))))


def first_corrupt_leaf(tree, saved: dict[str, int]) -> str | None:
    """The path of the first leaf whose checksum differs from the one saved with it, or None."""
    return next((path for path, value in checksums(tree).items() if saved.get(path) != value), None)


def quiet_orbax_failures() -> None:
    """Keep a failed read or write of a checkpoint to the one line its caller prints.

    When one of orbax's reads or writes fails, it logs the error with a traceback, and its
    other reads and writes finish later on a closed event loop, each printing another
    ("Event loop is closed", "exception was never retrieved"): hundreds of lines for one failure.
    """
    if getattr(sys.unraisablehook, "quiet_orbax", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if "Event loop is closed" in str(unraisable.exc_value) or "orbax" in getattr(code, "co_filename", ""):
            return
        previous(unraisable)

    hook.quiet_orbax = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(lambda record: "never retrieved" not in record.getMessage())
    # Its reads abandoned by a failure may also be dropped unstarted, each a warning at exit (we run no coroutines).
    warnings.filterwarnings("ignore", message="coroutine '.*' was never awaited", category=RuntimeWarning)
    # Its errors, and its warnings that a step's metadata is missing: the caller names the damaged step in one line.
    logging.getLogger("absl").addFilter(
        lambda record: "orbax" not in record.pathname or record.levelno < logging.WARNING
        or record.levelno < logging.ERROR and "does not exist" not in record.getMessage())


def failure_reason(error: BaseException) -> str:
    """`No space left on device` rather than the paragraph tensorstore wraps around it."""
    chain = error_chain(error)
    os_error = next((link for link in chain if isinstance(link, OSError) and link.strerror), None)
    if os_error is not None:
        return os_error.strerror
    error = chain[-1]
    code = re.search(r"os_error_code='?(\d+)", str(error))
    return os.strerror(int(code.group(1))) if code else f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"


# What the machine says when it could not read healthy files (no access, no memory or file handles, a network
# filesystem or object store gone quiet, an I/O error that may pass): such a step is never set aside.
MACHINE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EINTR,
                  errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                  errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH}
MACHINE_STATUS = re.compile(r"\b(RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED|UNAVAILABLE|PERMISSION_DENIED|UNAUTHENTICATED)\b|"
                            r"Permission denied")


def is_damage(error: BaseException) -> bool:
    """Whether a failed read says the files are damaged, rather than that the machine could not read them."""
    chain = error_chain(error)
    codes = {link.errno for link in chain if isinstance(link, OSError)}
    codes |= {int(code) for link in chain for code in re.findall(r"os_error_code='?(\d+)", str(link))}
    return not (any(isinstance(link, MemoryError) for link in chain) or codes & MACHINE_ERRNOS
                or any(MACHINE_STATUS.search(str(link)) for link in chain))


def set_aside(checkpoints: Path, step: int) -> str:
    """Rename a damaged step out of the way (kept for a person to look at); the run can write it again."""
    aside = next(checkpoints / f"{step}{SET_ASIDE}{n or ''}" for n in range(1000)
                 if not (checkpoints / f"{step}{SET_ASIDE}{n or ''}").exists())
    (checkpoints / str(step)).rename(aside)
    return aside.name
