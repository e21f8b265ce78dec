"""Stop signals (Ctrl-C, a preemption's SIGTERM) as a flag that long work checks between its pieces.

While XLA runs a program, Python cannot raise KeyboardInterrupt; a loop of bounded programs
(the train loop's steps, sampling's chunks) looks at this flag between them and stops cleanly,
keeping what it has made. Before a CLI's main begins, and where a command has no handler of its own, the
signals are answered here too (cli_main.exit_on_user_error gives main its handlers).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading


class StopSignals:
    """`with StopSignals(signal.SIGINT) as stop: ... stop.signal` names the first of the signals to
    arrive ("SIGINT"), None until then. A second one gets the handler that was there before (Ctrl-C
    raises KeyboardInterrupt at once; `stop.repeated` then says so); on exit every handler is given back.

    A signal that is ignored stays ignored (a script's `cmd &` ignores Ctrl-C, `nohup` the hangup).
    `only_over_python_default`: take a signal only where Python's own handler is in place (a CLI, a
    notebook; for SIGTERM and SIGHUP, a CLI's `stop_as_ctrl_c`), so that work inside a program with its own
    handler (sampling in a train run) keeps it.
    `repeats_ignored`: a second signal is ignored, not handed on (a process of several, which must stop
    with the others: alone, it would leave them waiting).
    """

    def __init__(self, *signums: int, only_over_python_default: bool = False, repeats_ignored: bool = False):
        self.signums, self.only_over_python_default = signums, only_over_python_default
        self.repeats_ignored = repeats_ignored

    def __enter__(self):
        self.signal, self.previous, self.told, self.repeated = None, {}, False, False
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in self.signums:
                handler = signal.getsignal(signum)
                if handler is not signal.SIG_IGN and (not self.only_over_python_default
                                                      or handler in (signal.default_int_handler, stop_as_ctrl_c)):
                    self.previous[signum] = handler
                    signal.signal(signum, self.request)
        return self

    def request(self, signum, frame):
        if self.signal and self.repeats_ignored and not self.told:  # said once: a print is not reentrant
            self.told = True
            try:
                print(f"{signal.Signals(signum).name} ignored: stopping with the other processes (SIGKILL stops "
                      "this one at once, and the others when JAX sees it gone)", file=sys.stderr)
            except OSError:  # stderr gone (a hangup): raised here, it would break whatever the process was doing
                pass
        self.signal = self.signal or signal.Signals(signum).name
        if not self.repeats_ignored:
            signal.signal(signum, self._again if callable(self.previous[signum]) else self.previous[signum])

    def _again(self, signum, frame):
        """A second signal: the handler that was there before (Ctrl-C: KeyboardInterrupt, at once), noted in
        `repeated` for the work's next check, in case what that handler raised was lost (raised inside a
        callback of jaxlib's or a destructor, Python prints it and goes on)."""
        self.repeated = True
        self.previous[signum](signum, frame)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Stopped(KeyboardInterrupt):
    """A stop signal ended a run early, cleanly (saved, or nothing begun): the CLI exits 128 + signum. `rows`: a
    training run's metric rows so far."""

    def __init__(self, signum: signal.Signals, rows: list[dict] | None = None):
        super().__init__(signum.name)
        self.signum, self.rows = signum, rows or []


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # `kill`, `timeout`, Slurm; a terminal or ssh session closed


def stop_as_ctrl_c(signum, frame):
    """SIGTERM or SIGHUP in a command without a handler of its own: a KeyboardInterrupt, as Ctrl-C, whose `signum`
    makes it "stopped by SIGTERM", exit 143 (SIGHUP's 129). By default it ended the process without a word, and
    without the clean-up of its `finally` blocks (an output's temporary directory was left behind)."""
    interrupt = KeyboardInterrupt()
    interrupt.signum = signal.Signals(signum)
    raise interrupt


def leave_on_ctrl_c_while_starting() -> None:
    """Until a CLI's main begins (`exit_on_user_error`), Ctrl-C exits 130 at once, saying "interrupted", and SIGTERM
    143, "stopped by SIGTERM" (SIGHUP 129): the CLI's module is still importing JAX and the rest, with nothing
    begun, and Python's own KeyboardInterrupt there is a traceback, or lost in a callback of jaxlib's (the start
    went on).
    Only over the default handlers: an ignored SIGINT (a job started with `&` by a script) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, leave_while_starting)
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, leave_while_starting)
    atexit.register(_ignored_once_left)  # before JAX's clean-up is registered: so the last to run


def leave_quietly_when_stopped() -> None:
    """Ctrl-C, SIGTERM or SIGHUP while a finished command's process exits (~0.3 s of JAX's atexit clean-up; minutes
    at a multi-process run's shutdown barrier) ends it at once, exit 0, without a word: there one was an "Exception
    ignored in atexit callback" traceback. Not ignored: an exit that hangs can still be stopped. A signal ignored
    from the start stays ignored."""
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _leave_quietly)


def _leave_quietly(signum, frame):
    os._exit(0)  # the work is done and its output flushed


def _ignored_once_left() -> None:
    """The last exit callback: a finished command's stop signals ignored from here on. Python then puts back the
    default handlers of those it handled (killed by the signal: exit 143, 130, 129, in the ~0.3 s of JAX's C++
    teardown that follows), but leaves ignored ones ignored."""
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        if signal.getsignal(signum) is _leave_quietly:
            signal.signal(signum, signal.SIG_IGN)


def leave_while_starting(signum, frame):
    said = b"interrupted\n" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}\n".encode()
    try:
        os.write(2, said)  # a handler may run inside a print: no buffered write; stderr may be gone
    finally:
        os._exit(128 + signum)
