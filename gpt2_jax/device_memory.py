"""How much device memory a run has held: JAX's allocator's peak, for the train CLI's rows.

GPUs and TPUs count it (`Device.memory_stats`); CPUs keep no count, and their rows have no such column.
"""

from __future__ import annotations

import jax


def peak_gib() -> float | None:
    """The most memory any of this process's devices has held since the process started, in GiB (2^30 bytes),
    by JAX's allocator's count (the step's buffers; not the CUDA context's), or None where no device counts it."""
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()]
    peaks = [peak for peak in peaks if peak is not None]
    return max(peaks) / 2**30 if peaks else None
