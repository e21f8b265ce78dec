"""An output directory (or file) written whole: into a temporary sibling first, then renamed into place.

So a reader never sees it half-written, no file of an earlier version is left in it, and a
directory of another kind (a training workdir, someone else's files) is never replaced
unless the user says so (`--overwrite`). What is written gets the umask's usual modes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from gpt2_jax import leftovers
from gpt2_jax.errors import UserError


class OutputError(UserError):
    """An output path that holds something else, or that cannot be written."""


def refuse_other_kind(out_dir: str | Path, same_kind: Callable[[Path], bool], kind: str, overwrite: bool) -> Path:
    """`out_dir` as an absolute path, if it is missing, empty, a `kind` directory, or `overwrite` is set, and if
    it can be put in place: made beside it, in its parent folder, then renamed (checked before any work)."""
    out_dir = Path(out_dir).absolute()
    if os.path.ismount(out_dir):
        raise _mount_point(out_dir)
    folder = next(path for path in out_dir.parents if path.exists())  # where it, and its parents, are made
    if not os.access(folder, os.W_OK):
        raise _unwritable_parent(out_dir, folder, "read-only")
    if out_dir.exists() and not overwrite:
        if not out_dir.is_dir():
            raise OutputError(f"{out_dir} is a file; choose another --out, or pass --overwrite to replace it")
        if any(out_dir.iterdir()) and not same_kind(out_dir):
            raise OutputError(f"{out_dir} is not empty and not just a {kind}; choose another --out, "
                              "or pass --overwrite to replace it")
    return out_dir


def refuse_overlap(out_dir: str | Path, source: str) -> None:
    """An output that would replace its own source (or a part of it: a workdir's checkpoints/) is refused,
    `--overwrite` or not. `source` may be a hub name (no local path: nothing to overlap)."""
    if not Path(source).exists():
        return
    out_dir, source_dir = Path(out_dir).resolve(), Path(source).resolve()
    if out_dir == source_dir or out_dir in source_dir.parents or (source_dir in out_dir.parents and out_dir.exists()):
        raise OutputError(f"--out {out_dir} is, holds or is a part of {source_dir}, the model it converts: writing "
                          "it would replace its own source; choose another --out")


def write_dir(out_dir: str | Path, write: Callable[[Path], None], same_kind: Callable[[Path], bool], kind: str,
              overwrite: bool = False) -> None:
    """Call `write(temporary_dir)`, then put that directory at `out_dir`.

    `out_dir` may be missing, empty, or a `kind` directory (`same_kind(out_dir)`), which is replaced;
    anything else is refused unless `overwrite`.
    """
    leftovers.tidy_dir(Path(out_dir).absolute())  # what writers killed mid-write left
    out_dir = refuse_other_kind(out_dir, same_kind, kind, overwrite)
    tag = leftovers.writer_tag()
    temporary, previous = (out_dir.with_name(f".{out_dir.name}.{what}-{tag}") for what in ("tmp", "old"))
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        leftovers.remove(temporary)
        temporary.mkdir()
        lock = leftovers.hold(temporary)
    except OSError as error:
        raise _unwritable_parent(out_dir, out_dir.parent, error.strerror or str(error)) from None
    try:
        write(temporary)
        _normal_modes(temporary)
        if out_dir.exists():
            out_dir.rename(previous)
        try:
            temporary.rename(out_dir)
        except OSError:
            if previous.exists():
                previous.rename(out_dir)  # put the old one back
            raise
        leftovers.remove(previous)
    except OSError as error:
        if error.errno == errno.EBUSY:  # a mount point os.path.ismount does not see: a bind mount
            raise _mount_point(out_dir) from None
        raise OutputError(f"cannot write {out_dir}: {error.strerror or error}") from None
    finally:
        leftovers.remove(temporary)
        os.close(lock)


def _mount_point(out_dir: Path) -> OutputError:
    return OutputError(f"--out {out_dir} is a mount point, which cannot be replaced (an output is written beside it, "
                       f"then renamed into place); give a new folder inside it: --out {out_dir}/NAME")


def _unwritable_parent(out_dir: Path, folder: Path, why: str) -> OutputError:
    return OutputError(f"cannot write {out_dir}: its parent folder {folder} cannot be written here ({why}), and the "
                       "output is made in there first, then renamed into place; choose an --out in a folder you can write")


def writes_in_place(path: Path) -> bool:
    """Whether write_file writes `path` in place: a link, or what is neither a file nor a directory."""
    return path.is_symlink() or path.exists() and not (path.is_file() or path.is_dir())


def refuse_unwritable(path: Path) -> None:
    """Before the work that makes it: an OutputError where `write_file(path, ...)` would fail for certain."""
    if path.is_dir():
        raise OutputError(f"{path} is a directory; move it away: a file is written there")
    if not os.access(path if writes_in_place(path) and path.exists() else path.parent, os.W_OK):
        raise OutputError(f"cannot write {path}: {path.parent} is read-only here (or missing); "
                          "work on a writable copy of it")


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(temporary_file)` beside `path`, then rename it to `path`: a reader sees the old file or the
    new one, whole, never a part. A symbolic link, a device or a pipe (/dev/null, /dev/stdout: links to /proc) is
    written through, as the shell's `>` would, not replaced. An OSError is an OutputError naming `path`."""
    in_place = writes_in_place(path)
    if not in_place:
        leftovers.tidy_file(path)  # what writers killed mid-write left
    temporary = path.with_name(f".{path.stem}.tmp-{leftovers.writer_tag()}{path.suffix}")  # savefig reads the suffix
    lock = None
    try:
        if in_place:
            write(path)
            return
        temporary.touch()
        lock = leftovers.hold(temporary)
        write(temporary)
        with open(temporary, "rb") as written:  # on disk before it is renamed into place: a power cut keeps one whole
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        leftovers.remove(temporary)
        if lock is not None:
            os.close(lock)


def _normal_modes(directory: Path) -> None:
    """Give `directory` and all in it the modes the umask gives new files (e.g. 0755 and 0644): writers may
    make files private (safetensors writes 0600), and what we export is meant to be read and shared."""
    umask = os.umask(0o022)
    os.umask(umask)  # only reading it
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o111
            path.chmod((0o777 if executable else 0o666) & ~umask)
