"""JAX runtime failures that a user fixes by changing settings, as one-line UserErrors.

Out of device memory (XLA's RESOURCE_EXHAUSTED; "Out of memory allocating ..." on a CPU), a train
state too large for a CPU host's memory (refused before it is made), and a multi-process start with
no cluster to join. Anything else JAX raises is left as it is: a bug should keep its traceback.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import jax
import numpy as np

from gpt2_jax.errors import UserError

# What a training run can change when its step does not fit (train_config.py's keys).
TRAINING_MEMORY_ADVICE = ("lower batch_size (tokens_per_step stays, as more micro-batches), set remat=True, shard "
                          "over more devices with fsdp, or train a smaller model")


class DeviceError(UserError):
    """The devices cannot run what was asked: too little memory, or no cluster to join."""


@contextlib.contextmanager
def out_of_memory_as_user_error(advice: str):
    """Inside: an out-of-memory failure (the device's, or the host's MemoryError) becomes a DeviceError that
    says what failed and `advice`."""
    try:
        yield
    except MemoryError:
        raise DeviceError(f"out of host memory; {advice}") from None
    except jax.errors.JaxRuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not re.search(r"RESOURCE_EXHAUSTED|out of memory", first_line, re.IGNORECASE):
            raise
        raise DeviceError(f"out of memory on {jax.devices()[0].device_kind} ({first_line[:200]}); {advice}") from None


def check_state_fits_host(abstract_state, shardings) -> None:
    """On CPU devices, a DeviceError if this process's share of the train state (params and AdamW's two moments)
    and its gradients exceed the memory the host has available. Each of XLA:CPU's allocations succeeds on
    paper; the kernel's out-of-memory killer then ends the process mid-step, with no word (seen on a 24 GB
    host with the 1.5B config). Activations are not counted: what is refused cannot fit whatever the batch."""
    if jax.default_backend() != "cpu" or (available := _available_host_bytes()) is None:
        return
    shares = [int(np.prod(sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
              for leaf, sharding in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings))]
    needed = sum(shares) * jax.local_device_count() * 4 // 3  # params, 2 moments, + gradients like the params
    if needed > available:
        raise DeviceError(f"the train state and its gradients need {needed / 2**30:.1f} GiB on this host, which has "
                          f"{available / 2**30:.1f} GiB available; train a smaller model here, or this one on a GPU "
                          "or TPU")


def _available_host_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, within a cgroup's (v2) limit if one is set; None where neither is found."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def initialize_distributed() -> None:
    """jax.distributed.initialize(), or a DeviceError saying why this process found no cluster to join."""
    # It waits for every process of the cluster; if one never comes, JAX aborts them all after 5 minutes.
    print("distributed=True: joining the other processes (jax.distributed waits up to 5 minutes for all)", flush=True)
    try:
        jax.distributed.initialize()
    except ValueError as error:  # what it raises when nothing names the coordinator
        raise DeviceError(f"distributed=True, but no cluster to join ({error}); on one machine set distributed=False, "
                          "on several run where jax.distributed finds its cluster (a TPU pod, SLURM, Open MPI) or "
                          "set JAX_COORDINATOR_ADDRESS") from None
