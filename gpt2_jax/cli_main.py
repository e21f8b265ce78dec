"""How every command's `main` runs: a UserError as one line and exit code 2, Ctrl-C and stop signals as a short
word and 128 + the signal's number, never a traceback for what a user did (errors.py: what a UserError is).
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from collections.abc import Callable

from gpt2_jax import standard_output
from gpt2_jax.errors import UserError
from gpt2_jax.interrupt import (STOP_SIGNALS, StopSignals, leave_quietly_when_stopped, leave_while_starting,
                                stop_as_ctrl_c)


def exit_on_user_error(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap a CLI entry point: a UserError becomes `<prog>: error: <message>` and exit code 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        if signal.getsignal(signal.SIGINT) is leave_while_starting:  # main's own Ctrl-C handling from here on
            signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in STOP_SIGNALS:  # and SIGTERM's and SIGHUP's: as Ctrl-C, unless main has its own
            if signal.getsignal(signum) is leave_while_starting:
                signal.signal(signum, stop_as_ctrl_c)
        if not getattr(_ctrl_c_raised_again, "installed", False):  # once a process
            sys.unraisablehook, _ctrl_c_raised_again.installed = _ctrl_c_raised_again(sys.unraisablehook), True
        _MAINS_RUNNING.append(main)
        stdout = sys.stdout
        standard_output.guard()  # a failed write: one line (standard_output.py)
        try:
            result = main(*args, **kwargs)
            if sys.stdout is not None:  # None: started with stdout closed (`cmd >&-`)
                sys.stdout.flush()  # what is still buffered fails here, in one line, not in Python's exit
            if not (args or kwargs):  # the command is done, its process leaving: a stop signal now changes nothing
                leave_quietly_when_stopped()
            return result
        except (UserError, standard_output.StdoutError) as error:
            message = " ".join(str(error).split())  # one line, whatever the library put in it
            with contextlib.suppress(OSError):  # stderr gone too (a terminal hung up): the exit code says it
                print(f"{Path(sys.argv[0]).stem}: error: {message}", file=sys.stderr)
            exit_now_if_one_of_several(2)
            sys.exit(2)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or a stop signal that a long command answered cleanly
            signum = getattr(interrupt, "signum", signal.SIGINT)
            try:
                print("interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}",
                      file=sys.stderr)
                if type(interrupt) is not KeyboardInterrupt or args or kwargs:  # a clean stop (saved, or
                    sys.exit(128 + signum)  # nothing begun), or main called from Python: its caller goes on
                for stream in filter(None, (sys.stdout, sys.stderr)):
                    stream.flush()
            except (KeyboardInterrupt, OSError, standard_output.StdoutError):  # one more Ctrl-C while leaving, or
                pass  # no stdout or stderr (a terminal hung up: SIGHUP): leave all the same
            os._exit(128 + signum)  # Python's own Ctrl-C, maybe with XLA mid-compile: its teardown segfaulted
        except BrokenPipeError:  # the reader went away (`... --help | head`): nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else Python's exit flush reports it
            sys.exit(141)
        finally:
            _MAINS_RUNNING.pop()
            sys.stdout = stdout

    return wrapped


_MAINS_RUNNING = []  # the wrapped mains running now (a main may call another)


def _ctrl_c_raised_again(hook):
    """An unraisable-exception hook that gives a lost Ctrl-C back while a main runs: a KeyboardInterrupt raised
    inside a garbage collector callback (jaxlib's, while XLA compiles) or a destructor is printed as "Exception
    ignored" and dropped, and the command went on. Over Python's own handler it is delivered again a moment
    later, once the callback is over (at once, the handler would raise inside this hook, lost again); where a
    StopSignals has it, its work raises it at its next check (`repeated`), so it is only kept quiet here."""

    def unraisable(info):
        signum = getattr(info.exc_value, "signum", signal.SIGINT)  # SIGTERM's (stop_as_ctrl_c) says which
        handler = signal.getsignal(signum)
        if not issubclass(info.exc_type, KeyboardInterrupt) or not _MAINS_RUNNING or sys.is_finalizing():
            hook(info)
        elif handler in (signal.default_int_handler, stop_as_ctrl_c):
            again = threading.Timer(0.01, _raise_again_if_main_runs, (signum,))
            again.daemon = True
            again.start()
        elif not isinstance(getattr(handler, "__self__", None), StopSignals):
            hook(info)

    return unraisable


def _raise_again_if_main_runs(signum=signal.SIGINT):
    if _MAINS_RUNNING:
        _thread.interrupt_main(signum)  # as if the signal came now


def exit_now_if_one_of_several(code: int) -> None:
    """In a process of a multi-process JAX run, exit at once: a normal exit waits (5 minutes, then aborts) at
    jax.distributed's shutdown barrier for the other processes, which may be waiting for this one in a
    collective that it will never join. Gone, it lets them fail too. Its files are closed by then."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
