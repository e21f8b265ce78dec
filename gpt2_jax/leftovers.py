"""What a killed writer left beside an output: the temporary siblings outdir.py names by host and process.

A writer killed by SIGKILL (or a crash, or a power cut) cannot clean up after itself, so the next
writer of the same output does: it removes (or, for a previous version that was moved aside, puts
back) what this host's processes that are gone left. Another host's (on a shared disk) and a live
process's are never touched.
"""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def writer_tag() -> str:
    """This process, as its temporary files' names hold it: HOST-PID."""
    return f"{socket.gethostname()}-{os.getpid()}"


def left_by_killed_writers(folder: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    """The paths `prefix + writer_tag() + suffix` in `folder` whose process, on this host, is gone."""
    prefix += f"{socket.gethostname()}-"
    for path in folder.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = path.name[len(prefix):len(path.name) - len(suffix)]
        if pid.isdigit() and not _alive(int(pid)):
            yield path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
