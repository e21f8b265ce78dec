"""One stop for all the processes of a run: they agree on the step after which every one of them stops.

A stop signal reaches the processes of a multi-host run one by one, or one alone (a scheduler's
SIGTERM to one host, Ctrl-C in one terminal). A process that stopped on its own would leave the others
waiting forever in the next step's collectives, and its checkpoint save (a collective too) waiting for
theirs. So after each step every process reads the max over all devices of the signal numbers that the
processes gave after the step before, then gives its own: every process reads the same value after the
same step, and the device never waits for the host. The run stops one or two steps after the first signal
anywhere. An evaluation's batches are agreed on the same way, batch by batch.

Why not JAX's preemption service (`multihost_utils.reached_preemption_sync_point`, as orbax's
`reached_preemption` uses): it hears only SIGTERM, through a handler of its own that the train loop's
Python handler (which also hears Ctrl-C and says what it saved) replaces. (Turning the service off instead
breaks every save of orbax-checkpoint before 0.12.3, which asks it about preemption at each save.)
"""

from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gpt2_jax.interrupt import StopSignals


class AgreedStop:
    """`signal`: the name of the signal the run stops for, None until then. One process: its own signal, as
    soon as it arrives. Several: the one agreed by `agree_now()` or `poll()`, the same on all of them."""

    def __init__(self, signals: StopSignals, mesh):
        self.signals, self.agreed, self.in_flight = signals, None, None  # in_flight: the last agreement started
        self.alone = jax.process_count() == 1
        if not self.alone:
            self.numbers_sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))  # one number per device
            self.max_over_devices = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

    @property
    def signal(self) -> str | None:
        return self.signals.signal if self.alone else self.agreed

    def agree_now(self) -> str | None:
        """Agree at once: every process waits here for all the others (before the first step)."""
        if not self.alone:
            self.agreed = self.agreed or signal_name(self.start_agreeing())
        return self.signal

    def poll(self) -> str | None:
        """After each program that all processes run (a step, an evaluation batch) is dispatched: read the
        agreement started at the call before (ready when the program before has run; the host waits for it),
        then start agreeing on the signals seen by now. Every process must call it as often as the others."""
        if self.signals.repeated:  # a second Ctrl-C whose KeyboardInterrupt was lost: raise it here
            raise KeyboardInterrupt
        if not self.alone:
            if self.in_flight is not None:
                self.agreed = self.agreed or signal_name(self.in_flight)
            self.in_flight = self.start_agreeing()
        return self.signal

    def start_agreeing(self) -> jax.Array:
        number = signal.Signals[self.signals.signal].value if self.signals.signal else 0
        numbers = np.full(jax.local_device_count(), number, np.int32)
        return self.max_over_devices(jax.make_array_from_process_local_data(self.numbers_sharding, numbers))


def signal_name(agreement: jax.Array) -> str | None:
    number = int(agreement)
    return signal.Signals(number).name if number else None
