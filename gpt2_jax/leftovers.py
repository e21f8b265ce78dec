"""What a killed writer left beside an output, tidied by the next writer of that output.

outdir.py writes an output into a temporary sibling (`.OUT.tmp-HOST-PID`, a file's `.STEM.tmp-HOST-PID.SUFFIX`),
moves the previous version aside (`.OUT.old-HOST-PID`), then renames. A writer killed in between (SIGKILL, a
crash, a power cut) leaves those behind. A writer holds an exclusive `flock` on its temporary while it runs,
and the kernel drops the lock when the process ends, however it ends: so a temporary whose lock is free is a
dead writer's, whatever host, container or PID namespace wrote it (a disk without locks, such as some FUSE
mounts, is never tidied). One younger than GRACE_S is left alone: its writer may not hold the lock yet.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import time
from pathlib import Path

GRACE_S = 60


def writer_tag() -> str:
    """What makes a writer's temporary names its own: HOST-PID."""
    return f"{socket.gethostname().replace(os.sep, '_')}-{os.getpid()}"


def hold(temporary: Path) -> int:
    """Lock `temporary`, just made by this writer, until the returned descriptor is closed or the process ends."""
    descriptor = os.open(temporary, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a disk without locks: nothing there is ever judged abandoned
        pass
    return descriptor


def tidy_dir(out_dir: Path) -> None:
    """Before writing `out_dir`, best effort: dead writers' temporaries go, and a previous version one of them moved
    aside while `out_dir` is missing (killed between its two renames) is put back; once `out_dir` is in place,
    the previous versions left aside go too (a writer that dies after its second rename leaves one)."""
    tmp, old = f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"
    try:
        for temporary in out_dir.parent.glob(glob.escape(tmp) + "*"):
            if _abandoned(temporary):
                previous = temporary.with_name(old + temporary.name[len(tmp):])
                if previous.is_dir() and not previous.is_symlink() and not out_dir.exists():
                    previous.rename(out_dir)
                remove(temporary)
        for previous in out_dir.parent.glob(glob.escape(old) + "*"):
            if out_dir.exists() and not previous.with_name(tmp + previous.name[len(old):]).exists():
                remove(previous)
    except OSError:
        pass  # a folder that cannot be written: the write says so


def tidy_file(path: Path) -> None:
    """Before writing the file `path`, best effort: dead writers' temporaries of it go."""
    try:
        for temporary in path.parent.glob(glob.escape(f".{path.stem}.tmp-") + "*" + glob.escape(path.suffix)):
            if _abandoned(temporary):
                remove(temporary)
    except OSError:
        pass


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _abandoned(temporary: Path) -> bool:
    """Older than GRACE_S, and its writer's lock free (taken and let go here at once)."""
    try:
        if time.time() - temporary.lstat().st_mtime < GRACE_S:
            return False
        descriptor = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        finally:
            os.close(descriptor)  # the lock with it
    except OSError:  # its writer holds the lock (it lives), a symlink, a disk without locks: leave it
        return False
