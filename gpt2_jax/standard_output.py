"""Standard output whose failures are one line: a full disk under `> train.log`, a terminal gone (EIO).

Every command's stdout is guarded while its main runs (cli_main.exit_on_user_error). A failed write
raises `StdoutError` (one line, exit 2) where the output is what the command makes (a sample, an
evaluation); a training run, whose record is its workdir (metrics.jsonl, checkpoints), marks its
output `optional`: one warning on stderr, then it goes on without a console. A reader that went
away (`... | head`: BrokenPipeError) is the command's to answer, unless its output is optional.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class StdoutError(Exception):
    """Standard output could not be written (the message: why), and what was left to write is dropped."""


class GuardedStdout:
    """`stream` (sys.stdout) with its write and flush failures answered as the module says."""

    def __init__(self, stream):
        self.stream, self.optional, self.dropped = stream, False, False

    def write(self, text: str) -> int:
        self._guarded(self.stream.write, text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, call, *args) -> None:
        if self.dropped:  # said once where optional; else each write fails (the command's last flush too)
            if not self.optional:
                raise StdoutError(self.reason)
            return
        try:
            call(*args)
        except OSError as error:
            if isinstance(error, BrokenPipeError) and not self.optional:
                raise
            self.dropped = True
            try:  # what is buffered goes nowhere from now on, at exit too (Python's flush there would fail again)
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
            except (OSError, ValueError, AttributeError):  # a stream without a file (a test's capture)
                pass
            reason = error.strerror or str(error)
            self.reason = f"cannot write to standard output: {reason}"
            if not self.optional:
                raise StdoutError(self.reason) from None
            try:
                print(f"{Path(sys.argv[0]).stem}: warning: cannot write to standard output ({reason}); going on "
                      "without it", file=sys.stderr, flush=True)
            except OSError:  # stderr is gone too
                pass

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer...: the stream's own
        return getattr(self.stream, name)


def guard() -> None:
    """Guard sys.stdout, once (none where the process was started without one)."""
    if sys.stdout is not None and not isinstance(sys.stdout, GuardedStdout):
        sys.stdout = GuardedStdout(sys.stdout)


def make_optional() -> None:
    """This command's output is a convenience: if it cannot be written, warn once and go on without it."""
    if isinstance(sys.stdout, GuardedStdout):
        sys.stdout.optional = True
