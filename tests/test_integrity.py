"""integrity.py's checksums: the values saved checkpoints hold, and the memory they take."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from gpt2_jax import integrity


def test_checksums_are_the_ones_saved_checkpoints_hold():
    tree = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) - 5.5, "half": jnp.arange(5, dtype=jnp.bfloat16),
            "flags": jnp.array([True, False, True]), "step": jnp.int32(7)}
    assert integrity.checksums(tree) == {"flags": 1013904228, "half": 2903297728, "step": 7, "w": 1308622848}


# The peak memory checksums add (Linux's VmHWM), in a fresh process once a small tree's have been computed.
CHECKSUM_PEAK = """
import jax.numpy as jnp
from gpt2_jax import integrity

def high_water_mark():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024

tree = [jnp.full((1024, 1024), float(i)) for i in range(32)]  # 32 leaves of 4 MiB
integrity.checksums([jnp.ones(3)])
before = high_water_mark()
integrity.checksums(tree)
print(high_water_mark() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
def test_checksums_hold_one_leaf_s_words_not_the_tree_s():
    """XLA on CPU holds the weighted words of a leaf whole: one program over all leaves held the whole tree's at
    once (a second copy of the params at every save; gpt2-large: +3.1 GB), one per leaf holds one leaf's."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", CHECKSUM_PEAK], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 0.5 * 32 * 2**22  # 0.26x (a few leaves); was 1.13x
