"""Outputs written whole: what a writer killed mid-write left is tidied by the next writer of the same output,
and nothing a live writer holds is touched (leftovers.py: its lock, whatever host or PID namespace it runs in)."""

import os
import time
from pathlib import Path

import pytest

from gpt2_jax import leftovers, outdir


def write_marker(text):
    return lambda folder: (folder / "marker.txt").write_text(text)


def is_ours(folder):
    return (folder / "marker.txt").exists()


def left(path, text="half", age_s=3600, held=False, directory=True):
    """A writer's temporary (or a previous version it moved aside): `age_s` old, its lock held or not."""
    if directory:
        path.mkdir()
        (path / "marker.txt").write_text(text)
    else:
        path.write_text(text)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return leftovers.hold(path) if held else None  # a descriptor of another open file: as another process's lock


def test_dead_writers_temporaries_go_with_the_next_write_and_live_ones_stay(tmp_path):
    out = tmp_path / "out"
    outdir.write_dir(out, write_marker("first"), is_ours, "marker dir")
    left(tmp_path / ".out.tmp-otherhost-123")  # a killed writer's, any host
    left(tmp_path / ".out.old-deadhost-7")  # the one before, left aside after its writer's second rename
    kept = [".out.tmp-host-1", ".out.old-host-1", ".out.tmp-host-2"]
    lock = left(tmp_path / kept[0], held=True)  # a writer still writing (and what it moved aside)
    left(tmp_path / kept[1])
    left(tmp_path / kept[2], age_s=0)  # just made: its writer may not hold the lock yet
    outdir.write_dir(out, write_marker("second"), is_ours, "marker dir")
    os.close(lock)
    assert (out / "marker.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out"] + kept)


def test_a_previous_version_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    """Killed between its two renames: the output is missing, its last whole version sits aside."""
    left(tmp_path / ".out.tmp-host-5")
    left(tmp_path / ".out.old-host-5", text="whole")

    def fails(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(outdir.OutputError, match="No space left on device"):
        outdir.write_dir(tmp_path / "out", fails, is_ours, "marker dir")
    assert (tmp_path / "out" / "marker.txt").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_live_writer_between_its_renames_keeps_what_it_moved_aside(tmp_path):
    lock = left(tmp_path / ".out.tmp-host-6", held=True)
    left(tmp_path / ".out.old-host-6", text="whole")
    outdir.write_dir(tmp_path / "out", write_marker("new"), is_ours, "marker dir")
    os.close(lock)
    assert (tmp_path / "out" / "marker.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old-host-6", ".out.tmp-host-6", "out"]


def test_dead_writers_temporary_files_go_with_the_next_write(tmp_path):
    left(tmp_path / ".metrics.tmp-host-9.jsonl", directory=False)
    lock = left(tmp_path / ".metrics.tmp-host-10.jsonl", directory=False, held=True)
    left(tmp_path / ".metrics-mine.jsonl", directory=False)  # not a temporary's name: someone's file
    outdir.write_file(tmp_path / "metrics.jsonl", lambda path: path.write_text("whole\n"))
    os.close(lock)
    assert (tmp_path / "metrics.jsonl").read_text() == "whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metrics-mine.jsonl", ".metrics.tmp-host-10.jsonl",
                                                          "metrics.jsonl"]


def test_a_writers_temporary_is_locked_while_it_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(leftovers, "GRACE_S", 0)  # the lock alone says it is alive
    seen = []
    outdir.write_file(tmp_path / "a.json",
                      lambda path: seen.append(leftovers._abandoned(path)) or path.write_text("{}"))
    outdir.write_dir(tmp_path / "d", lambda folder: seen.append(leftovers._abandoned(folder)), lambda _: True, "dir")
    assert seen == [False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "d"]


def test_what_a_sigkilled_writer_left_goes_with_the_next_write(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from gpt2_jax import outdir
def write(folder):
    (folder / "marker.txt").write_text("half")
    time.sleep(60)
outdir.write_dir(Path({str(tmp_path / 'out')!r}), write, lambda _: True, "dir")
"""], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/marker.txt")) and time.time() < deadline:
        time.sleep(0.1)
    monkeypatch.setattr(leftovers, "GRACE_S", 0)
    outdir.write_dir(tmp_path / "out", write_marker("mine"), is_ours, "marker dir")  # the writer lives: left alone
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    outdir.write_dir(tmp_path / "out", write_marker("again"), is_ours, "marker dir")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_link_is_written_through_and_a_device_is_written_to_not_replaced(tmp_path):
    """A symbolic link was replaced by a file (its target left as it was), and a device (evaluate --out /dev/null,
    as root) by a regular file: the system's /dev/null gone."""
    target, link = tmp_path / "results.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    outdir.write_file(link, lambda path: path.write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"  # a device's kind of file that any user can make; read as it is written
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    outdir.write_file(fifo, lambda path: path.write_text("streamed"))
    assert os.read(reader, 100) == b"streamed" and not fifo.is_file()
    os.close(reader)
    outdir.write_file(Path(os.devnull), lambda path: path.write_text("nothing"))
    assert Path(os.devnull).is_char_device()
    log = tmp_path / "log.txt"  # --out /dev/stdout with stdout sent to a file: that file written, not replaced
    log.write_text("")
    with open(log, "a") as stdout:
        inode = log.stat().st_ino
        outdir.write_file(Path(f"/proc/self/fd/{stdout.fileno()}"), lambda path: path.write_text("through"))
    assert log.read_text() == "through" and log.stat().st_ino == inode
