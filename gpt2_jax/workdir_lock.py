"""One trainer at a time in a workdir: an exclusive lock from before anything in it is read.

The lock is `fcntl.flock` on DIR/train.lock rather than a lock file's existence (or the
`filelock` package's, which adds nothing here): the kernel releases it when its process
ends, however it ends (SIGKILL, a crash), so a dead process's lock is never in the way and
needs no timeout. The file names the holder (pid and host) for the message the second
trainer prints. It is advisory, so every trainer takes it; one process per run does (process 0).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from gpt2_jax.errors import UserError
from gpt2_jax.model_dirs import CHECKPOINTS, LOSS_PLOT, METRICS, TRAIN_CONFIG, TRAIN_LOCK as LOCK

RUN_FILES = {LOCK, CHECKPOINTS, TRAIN_CONFIG, METRICS}  # any one: a run's workdir (its first: the lock)
# and what else a run and its report write there, and a new filesystem's lost+found: a workdir holding only these is
# one to check against the run's settings, not to refuse
RUN_WRITES = RUN_FILES | {"config.json", "tensorboard", LOSS_PLOT, "report.md", "report.png", "lost+found"}


class WorkdirError(UserError):
    """A workdir that is in use, cannot be written, or holds a run with other settings."""


class WorkdirLock:
    """An exclusive lock on a workdir, held from `acquire()` to `release()` (or the process's end)."""

    def __init__(self, workdir: str | Path):
        self.workdir, self.file = Path(workdir), None
        self.found: set[str] | None = None  # the names in the workdir before acquire (None: it did not exist)
        self.made: list[Path] = []  # the folders acquire made: the workdir, and those above it

    def acquire(self) -> None:
        if self.workdir.exists() and not self.workdir.is_dir():
            raise WorkdirError(f"{self.workdir} is a file, not a workdir; give a directory")
        if (self.workdir / CHECKPOINTS).exists() and not (self.workdir / CHECKPOINTS).is_dir():
            raise WorkdirError(f"{self.workdir / CHECKPOINTS} is a file, where the run keeps its checkpoints; "
                               "move it away, or use another --workdir")
        if (self.workdir / CHECKPOINTS).is_dir() and not os.access(self.workdir / CHECKPOINTS, os.W_OK | os.X_OK):
            raise WorkdirError(f"{self.workdir / CHECKPOINTS} is read-only here: no checkpoint could be saved (or "
                               "old ones removed); make it writable")  # said before any step is spent
        try:
            self.found = {path.name for path in self.workdir.iterdir()} if self.workdir.exists() else None
        except OSError as error:
            raise WorkdirError(f"{self.workdir}: cannot list it ({error.strerror or error})") from None
        others = sorted(name for name in (self.found or set()) - RUN_WRITES if not name.startswith("."))
        if others and not self.found & RUN_FILES:  # a data directory, a model, a project: never a run's files in it
            listed = ", ".join(others[:3]) + ", ..." * (len(others) > 3)
            raise WorkdirError(f"{self.workdir} holds other files ({listed}) and no training run; give a new or empty "
                               "--workdir")
        for _ in range(5):  # again if the lock file was removed (a refused start's release) as it was opened
            if (file := self._locked_file()) is not None:
                break
        else:
            raise WorkdirError(f"{self.workdir / LOCK}: the file changes under every lock taken on it (a filesystem "
                               "whose files' identities are not stable?); use a workdir on a local disk")
        self.file = file
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()

    def _locked_file(self):
        """DIR/train.lock opened and locked, or None if it is no longer the file at that path."""
        try:
            absolute = Path(os.path.abspath(self.workdir))  # without "..", whose folder rmdir would not take
            self.made = self.made or [path for path in [absolute, *absolute.parents] if not path.exists()]
            self.workdir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.workdir, os.W_OK):
                raise PermissionError(13, "read-only")
            file = open(self.workdir / LOCK, "a+")
        except OSError as error:
            raise WorkdirError(f"{self.workdir}: cannot write there ({error.strerror or error})") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise WorkdirError(f"{self.workdir} is in use by another trainer ({holder}); wait for it to finish, "
                               "or stop it, or use another --workdir") from None
        try:
            if os.path.samestat(os.fstat(file.fileno()), os.stat(self.workdir / LOCK)):
                return file
        except FileNotFoundError:
            pass
        file.close()
        return None

    def release(self) -> None:
        """Unlock. A start that wrote nothing (a refused one) takes away what it made: the lock file, an empty
        checkpoints/, and the workdir itself (and the folders above it) if it made that."""
        if not self.file:
            return
        try:
            if self._only_setup_made():  # removed while still held: a trainer that opened the file meanwhile
                for made in {LOCK, CHECKPOINTS} - (self.found or set()):  # finds it gone and opens it anew
                    path = self.workdir / made
                    if path.is_dir():
                        path.rmdir()
                    elif path.exists():
                        path.unlink()
                if self.found is None:
                    for made in self.made:  # the workdir, then the folders above it that the start made
                        made.rmdir()
        except OSError:  # the workdir went away, or someone wrote into it meanwhile: leave what is there
            pass
        finally:
            self.file.close()  # closing the file releases the lock
            self.file = None

    def _only_setup_made(self) -> bool:
        """Nothing new since acquire but the lock and the empty checkpoints/ that setup makes."""
        new = {path.name for path in self.workdir.iterdir()} - (self.found or set())
        return new <= {LOCK, CHECKPOINTS} and not (CHECKPOINTS in new and any((self.workdir / CHECKPOINTS).iterdir()))
