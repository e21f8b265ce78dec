"""A training workdir: one trainer at a time, and a resumed run that is the same run.

The lock is `fcntl.flock` on DIR/train.lock rather than a lock file's existence (or the
`filelock` package's, which adds nothing here): the kernel releases it when its process
ends, however it ends (SIGKILL, a crash), so a dead process's lock is never in the way and
needs no timeout. The file names the holder (pid and host) for the message the second
trainer prints. It is advisory, so every trainer takes it; one process per run does (process 0).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path

from gpt2_jax.config import GPT2Config
from gpt2_jax.errors import UserError
from gpt2_jax.train_checkpoints import CHECKPOINTS

LOCK, MODEL_CONFIG, TRAIN_CONFIG = "train.lock", "config.json", "train_config.json"
# Settings that change the shapes of the saved state without changing the model's config.json.
SHAPE_SETTINGS = ("vocab_pad_multiple",)
# With the data itself, what fixes which windows each step reads (a restored iterator counts steps).
ORDER_SETTINGS = ("seed", "tokens_per_step")
DATA = "data_fingerprint"  # train_config.json's record of the data's identity (data_fingerprint)
PROCESSES = "processes"  # and of how many processes trained it: each keeps its own place in the data


class WorkdirError(UserError):
    """A workdir that is in use, cannot be written, or holds a run with other settings."""


class WorkdirLock:
    """An exclusive lock on a workdir, held from `acquire()` to `release()` (or the process's end)."""

    def __init__(self, workdir: str | Path):
        self.workdir, self.file = Path(workdir), None
        self.found: set[str] | None = None  # the names in the workdir before acquire (None: it did not exist)

    def acquire(self) -> None:
        if self.workdir.exists() and not self.workdir.is_dir():
            raise WorkdirError(f"{self.workdir} is a file, not a workdir; give a directory")
        if (self.workdir / CHECKPOINTS).exists() and not (self.workdir / CHECKPOINTS).is_dir():
            raise WorkdirError(f"{self.workdir / CHECKPOINTS} is a file, where the run keeps its checkpoints; "
                               "move it away, or use another --workdir")
        try:
            self.found = {path.name for path in self.workdir.iterdir()} if self.workdir.exists() else None
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
        file.truncate(0)
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        """Unlock. A start that wrote nothing (a refused one) takes away what it made: the lock file, an empty
        checkpoints/, and the workdir itself if it made that."""
        if self.file:
            if self._only_setup_made():
                try:  # while still held; a trainer starting this very moment may keep it (then it stays)
                    for made in {LOCK, CHECKPOINTS} - (self.found or set()):
                        path = self.workdir / made
                        if path.is_dir():
                            path.rmdir()
                        elif path.exists():
                            path.unlink()
                    if self.found is None:
                        self.workdir.rmdir()
                except OSError:
                    pass
            self.file.close()  # closing the file releases the lock
            self.file = None

    def _only_setup_made(self) -> bool:
        """Nothing new since acquire but the lock and the empty checkpoints/ that setup makes."""
        new = {path.name for path in self.workdir.iterdir()} - (self.found or set())
        return new <= {LOCK, CHECKPOINTS} and not (CHECKPOINTS in new and any((self.workdir / CHECKPOINTS).iterdir()))


def check_settings(workdir: Path, model_config: GPT2Config, config, meta: dict, processes: int) -> dict[str, tuple]:
    """Refuse a workdir whose run trained another model, saved its state with other shapes or, with
    checkpoints to resume, read other data or another order of it; return the other settings that
    changed since the run's last start, {key: (before, now)}."""
    if (workdir / MODEL_CONFIG).exists():
        saved = GPT2Config.from_json(workdir / MODEL_CONFIG).to_dict()
        changed = [f"{key} {saved[key]} -> {value}" for key, value in model_config.to_dict().items()
                   if saved.get(key) != value]
        if changed:
            raise WorkdirError(f"{workdir} holds a run of another model ({', '.join(changed)} in config.json); "
                               "use a new --workdir")
    if not (workdir / TRAIN_CONFIG).exists():
        return {}
    try:
        saved = json.loads((workdir / TRAIN_CONFIG).read_text())
    except (OSError, ValueError) as error:
        raise WorkdirError(f"{workdir / TRAIN_CONFIG}: unreadable ({error})") from None
    if not isinstance(saved, dict):
        raise WorkdirError(f"{workdir / TRAIN_CONFIG}: unreadable (a JSON {type(saved).__name__}, not the run's "
                           "settings)")
    resuming = any(path.name.isdigit() for path in (workdir / CHECKPOINTS).glob("*"))
    for key in SHAPE_SETTINGS + (ORDER_SETTINGS if resuming else ()):
        if key in saved and saved[key] != config[key]:
            why = "changes the shapes of its checkpoints" if key in SHAPE_SETTINGS else "changes its data order"
            raise WorkdirError(f"--config.{key}={config[key]} differs from the run in {workdir} ({key}={saved[key]}) "
                               f"and {why}; rerun with --config.{key}={saved[key]}, or use a new --workdir")
    fingerprint = data_fingerprint(meta)
    if resuming and saved.get(DATA, fingerprint) != fingerprint:  # a run from before fingerprints: none to compare
        raise WorkdirError(f"{config.data_dir} is not the data the run in {workdir} was reading (other shards or "
                           "splits): resuming would change its data order; give that data_dir, or use a new --workdir")
    if resuming and saved.get(PROCESSES, processes) != processes:  # a run from before the record: none to compare
        raise WorkdirError(f"the run in {workdir} was trained by {saved[PROCESSES]} process(es), each with its own "
                           f"place in the data, and resumes only with {saved[PROCESSES]}, not {processes}; or start a "
                           f"new --workdir from its weights with --config.init_from={workdir}")
    as_saved = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as train_config.json holds them
    return {key: (saved[key], value) for key, value in as_saved.items() if key in saved and saved[key] != value}


def data_fingerprint(meta: dict) -> str:
    """The identity of prepared data (its tokenizer, shards and splits), whichever directory holds it."""
    identity = json.dumps({key: meta.get(key) for key in ("tokenizer", "shards", "splits")}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def write_settings(workdir: Path, model_config: GPT2Config, config, meta: dict, processes: int) -> None:
    """config.json (the model, HF schema) and train_config.json (this run's settings, its data's identity and
    how many processes read it)."""
    model_config.to_json(workdir / MODEL_CONFIG)
    settings = {**config.to_dict(), DATA: data_fingerprint(meta), PROCESSES: processes}
    (workdir / TRAIN_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
