"""Outputs written whole: what a writer killed mid-write left is tidied by the next writer of the same output."""

import socket
import subprocess
import sys

import pytest

from gpt2_jax import outdir


@pytest.fixture
def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def write_marker(text):
    return lambda folder: (folder / "marker.txt").write_text(text)


def is_ours(folder):
    return (folder / "marker.txt").exists()


def test_a_killed_writers_temporaries_go_with_the_next_write(tmp_path, dead_pid):
    host = socket.gethostname()
    out = tmp_path / "out"
    outdir.write_dir(out, write_marker("first"), is_ours, "marker dir")
    killed = [tmp_path / f".out.tmp-{host}-{dead_pid}", tmp_path / f".out.old-{host}-{dead_pid}"]
    for folder in killed:
        folder.mkdir()
        (folder / "marker.txt").write_text("half")
    kept = [tmp_path / f".out.tmp-{host}-1",  # pid 1 lives: another writer, still writing
            tmp_path / f".out.tmp-another-host-{dead_pid}"]  # a shared disk: not this host's process to judge
    for folder in kept:
        folder.mkdir()
    outdir.write_dir(out, write_marker("second"), is_ours, "marker dir")
    assert (out / "marker.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out"] + [p.name for p in kept])


def test_a_previous_version_moved_aside_by_a_killed_writer_is_put_back(tmp_path, dead_pid):
    """Killed between its two renames: the output is missing and its last whole version sits aside."""
    aside = tmp_path / f".out.old-{socket.gethostname()}-{dead_pid}"
    aside.mkdir()
    (aside / "marker.txt").write_text("whole")

    def fails(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(outdir.OutputError, match="No space left on device"):
        outdir.write_dir(tmp_path / "out", fails, is_ours, "marker dir")
    assert (tmp_path / "out" / "marker.txt").read_text() == "whole" and not aside.exists()


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path, dead_pid):
    host = socket.gethostname()
    left = tmp_path / f".metrics-{host}-{dead_pid}.jsonl"
    left.write_text("half")
    other = tmp_path / f".metrics-{host}-1.jsonl"  # a live process's
    other.write_text("writing")
    outdir.write_file(tmp_path / "metrics.jsonl", lambda path: path.write_text("whole\n"))
    assert (tmp_path / "metrics.jsonl").read_text() == "whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metrics.jsonl", other.name])
