"""JAX runtime failures that a user fixes by changing settings, as one-line UserErrors.

Out of device memory (XLA's RESOURCE_EXHAUSTED; "Out of memory allocating ..." on a CPU) and a
multi-process start with no cluster to join. Anything else JAX raises is left as it is: a bug
should keep its traceback.
"""

from __future__ import annotations

import contextlib
import re

import jax

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
