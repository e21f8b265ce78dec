"""Ctrl-C as a flag that long compiled work checks between its pieces.

While XLA runs a program, Python cannot raise KeyboardInterrupt; a loop of bounded programs
can look at this flag between them and stop cleanly, keeping what it has made.
"""

from __future__ import annotations

import signal
import threading


class CtrlC:
    """`with CtrlC() as pressed: ... pressed.signal` is set once Ctrl-C arrives.

    Only where Python's own handler is in place (a CLI, a notebook): a program with its own
    handler (the train loop saves, then stops) keeps it. A second Ctrl-C raises at once.
    """

    def __enter__(self):
        self.signal = None
        self.installed = (threading.current_thread() is threading.main_thread()
                          and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self.installed:
            signal.signal(signal.SIGINT, self.request)
        return self

    def request(self, signum, frame):
        self.signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
