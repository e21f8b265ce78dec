"""A training run's throughput: steps per second between moments at which a known step has finished on the devices."""

from __future__ import annotations

import time

import jax


class ThroughputClock:
    """Steps per second between moments at which a known step has just finished on the devices.

    It waits for the newest dispatched step, not for the one being logged: with asynchronous
    dispatch the next step is already queued (or, on some platforms, already run) when a row
    is logged, and counting only the logged step over that time overstated the last row's rate.
    """

    def __init__(self):
        self.step, self.time, self.rate = None, None, None

    def start(self, step: int, outputs) -> None:
        """Start counting once `outputs` (of step `step`) are ready."""
        jax.block_until_ready(outputs)
        self.step, self.time = step, time.perf_counter()

    def steps_per_second(self, step: int, outputs) -> float | None:
        """Steps per second since the last call, once `outputs` of step `step` are ready (None before
        `start`); if no step finished since the last call, the last call's rate."""
        if self.step is not None and step > self.step:
            jax.block_until_ready(outputs)
            now = time.perf_counter()
            self.rate = (step - self.step) / (now - self.time)
            self.step, self.time = step, now
        return self.rate
