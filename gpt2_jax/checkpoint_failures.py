"""What a failed checkpoint read or write says: one line, whether its files are damaged, and to every process.

Orbax and tensorstore wrap the cause (an OSError, an errno in a status string) in paragraphs of
their own and log tracebacks; a restore must tell damaged files (set aside, the step before
restored) from a machine that could not read healthy ones (stop, touch nothing). In a run of
several processes each reads its own files (its place in the data, its shards): what one of
them could not read, all of them act on.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import textwrap
import warnings

import jax
import numpy as np
from jax.experimental import multihost_utils

from gpt2_jax.errors import UserError, error_chain


class CheckpointError(UserError):
    """A checkpoint that is missing, that none of the saved steps can restore, or that cannot be saved."""


class Unreadable(Exception):
    """A step that could not be read, or whose state fails its checksums. `machine`: the machine could not read
    healthy files (never set aside: the run stops) rather than the files being damaged."""

    def __init__(self, reason: str, machine: bool = False):
        super().__init__(reason)
        self.machine = machine


def unreadable(what: str, error: BaseException) -> Unreadable:
    """`what: <one-line reason>` for a failed read, its cause `error`, and whether the machine is to blame."""
    failure = Unreadable(f"{what}: {failure_reason(error)}", machine=not is_damage(error))
    failure.__cause__ = error
    return failure


class Failed:
    """What an item's read raised on this process, returned in its place (`failures_kept`)."""

    def __init__(self, error: Exception):
        self.error = error


def failures_kept(handlers: dict) -> dict:
    """The orbax handlers, each one's restore returning a `Failed` instead of raising. Orbax's restore ends at a
    barrier of all processes, which a process whose read raised would not reach: the others waited there until
    it came back restoring the step before, and each went on from another step. Every process now reaches it,
    and they act together on what any could not read (`agree`)."""
    for handler in handlers.values():
        handler.restore = _returning_failures(handler.restore)
    return handlers


def _returning_failures(restore):
    def restore_keeping_failures(*args, **kwargs):
        try:
            return restore(*args, **kwargs)
        except Exception as error:  # orbax, grain and tensorstore raise many types for a failed read
            return Failed(error)

    return restore_keeping_failures


def failure_of(items) -> Exception | None:
    """What the reads of a step's items raised (each a `Failed`) that counts: the machine's failure before damage
    (damaged files beside ones the machine could not read: the step is left as it is, the run stops)."""
    errors = [item.error for item in items if isinstance(item, Failed)]
    return next((error for error in errors if not is_damage(error)), next(iter(errors), None))


def agree(failure: Unreadable | None) -> None:
    """Raise what this process could not read, or what another could not (the machine's failure first, on any
    process): every process of a run calls it at the same point of each restore, so all restore one step."""
    if jax.process_count() > 1:
        kinds = multihost_utils.process_allgather(np.array(0 if failure is None else 2 if failure.machine else 1))
        worst = int(kinds.max())
        if worst > (0 if failure is None else 1 + failure.machine):
            raise Unreadable(f"process {int(np.argmax(kinds == worst))} could not read it", machine=worst == 2)
    if failure is not None:
        raise failure


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
        noise = "Event loop is closed" in str(unraisable.exc_value) or "orbax" in getattr(code, "co_filename", "")
        if not noise or issubclass(unraisable.exc_type, KeyboardInterrupt):  # a lost Ctrl-C: raised again (cli_main.py)
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
    return os.strerror(int(code.group(1))) if code else f"{type(error).__name__}: {textwrap.shorten(str(error), 200)}"


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
