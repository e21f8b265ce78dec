"""The workdir: one trainer at a time (the lock, released however its holder ends), and a workdir that
cannot be written is one line."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, config_flags_of, read_only, snapshot, tiny_run_config, step_of

from gpt2_jax.metrics import read_metrics
from gpt2_jax.workdir_lock import WorkdirError, WorkdirLock

ROOT = Path(__file__).parent.parent
AS_WRITTEN = {"data_order": 2}  # what a run writes beside its settings (but for the data's fingerprint, processes)


def write_run_settings(workdir, config, edits):
    """train_config.json as a run writes it, but for `edits`."""
    (workdir / "train_config.json").write_text(json.dumps({**config.to_dict(), **AS_WRITTEN, **edits}))


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    first = WorkdirLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(WorkdirError, match=f"in use by another trainer \\(pid {os.getpid()} on "
                                           f"{socket.gethostname()}\\)"):
        WorkdirLock(tmp_path / "run").acquire()
    first.release()
    second = WorkdirLock(tmp_path / "run")
    second.acquire()
    second.release()


def test_a_start_that_wrote_nothing_takes_away_only_what_it_made(tmp_path):
    """A refused start into a directory of the user's leaves it as it was: no train.lock, no checkpoints/."""
    (tmp_path / ".notes").write_text("mine")  # hidden: else no workdir
    for made in ([], ["checkpoints"]):
        lock = WorkdirLock(tmp_path)
        lock.acquire()
        for name in made:
            (tmp_path / name).mkdir()
        lock.release()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".notes"]
    lock = WorkdirLock(tmp_path)  # a start that wrote something leaves the lock file, and all else, in place
    lock.acquire()
    (tmp_path / "config.json").write_text("{}")
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes", "config.json", "train.lock"]
    lock = WorkdirLock(tmp_path)  # and the next start, finding them, takes none of them away
    lock.acquire()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes", "config.json", "train.lock"]


def test_a_lock_file_removed_while_another_trainer_opens_it_is_not_held(tmp_path, monkeypatch):
    """A refused start removes the lock file it made, while a second trainer has it open but not locked: the
    second must lock the file now at that path, or a third would lock a new one beside it."""
    import fcntl

    import gpt2_jax.workdir_lock as workdir_lock

    refused = WorkdirLock(tmp_path)
    refused.acquire()
    flock = fcntl.flock
    monkeypatch.setattr(workdir_lock.fcntl, "flock", lambda file, how: refused.release() or flock(file, how))
    second = WorkdirLock(tmp_path)
    second.acquire()  # its first file is gone by the time it locks it
    monkeypatch.setattr(workdir_lock.fcntl, "flock", flock)
    with pytest.raises(WorkdirError, match="in use by another trainer"):
        WorkdirLock(tmp_path).acquire()
    second.release()


def test_a_workdir_gone_before_the_release_is_no_error(tmp_path):
    lock = WorkdirLock(tmp_path / "run")
    lock.acquire()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run").rename(tmp_path / "moved")
    lock.release()
    assert lock.file is None and sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["config.json", "train.lock"]


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(WorkdirError, match="run is a file, not a workdir"):
        WorkdirLock(tmp_path / "run").acquire()
    assert (tmp_path / "run").read_text() == "notes"


def test_a_checkpoints_path_that_is_a_file_is_refused_before_the_run_starts(tmp_path):
    """Found by trying: the run trained to its first save, then waited minutes on orbax before failing."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("notes")
    with pytest.raises(WorkdirError, match="run/checkpoints is a file, where the run keeps its checkpoints"):
        WorkdirLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / "checkpoints").read_text() == "notes"


def test_a_lock_left_by_a_killed_process_is_not_in_the_way(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gpt2_jax.workdir_lock import WorkdirLock; "
                               "lock = WorkdirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(WorkdirError, match=f"pid {holder.pid} on"):
        WorkdirLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / "train.lock").read_text()  # the file stays; its lock went with it
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    lock.release()


def train_cli(config, workdir):
    return [sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}",
            f"--workdir={workdir}", *config_flags_of(config)]


def test_a_second_trainer_on_the_same_workdir_exits_and_changes_nothing(shakespeare_bytes, tmp_path):
    config = tiny_run_config(shakespeare_bytes, max_steps=60, eval_every=0)
    first = subprocess.Popen(train_cli(config, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = ""
    for line in first.stdout:
        output += line
        if step_of(line) == 15:
            break
    second = subprocess.run(train_cli(config, tmp_path), capture_output=True, text=True, cwd=ROOT)
    output += first.communicate()[0]
    assert first.returncode == 0, output
    assert_one_line_error(second, f"{tmp_path} is in use by another trainer (pid {first.pid} on {socket.gethostname()})")
    assert [row["step"] for row in read_metrics(tmp_path)] == list(range(1, 61))  # no duplicate rows


def test_a_read_only_workdir_is_one_line(shakespeare_bytes, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".notes").write_text("mine")  # a hidden file does not make it another program's directory
    before = snapshot(workdir)
    writable_again = read_only(workdir)
    try:
        result = subprocess.run(train_cli(tiny_run_config(shakespeare_bytes), workdir), capture_output=True,
                                text=True, cwd=ROOT)
    finally:
        writable_again()
    assert_one_line_error(result, f"{workdir}: cannot write there")
    assert snapshot(workdir) == before


def test_a_directory_of_other_files_is_no_workdir(shakespeare_bytes, tmp_path):
    """was: the run's checkpoints and metrics written among them (into the prepared data, say)"""
    before = snapshot(shakespeare_bytes)
    result = subprocess.run(train_cli(tiny_run_config(shakespeare_bytes), shakespeare_bytes), capture_output=True,
                            text=True, cwd=ROOT)
    assert_one_line_error(result, f"{shakespeare_bytes} holds other files (meta.json, shard_000000.npy) and no "
                                  "training run; give a new or empty --workdir")
    assert snapshot(shakespeare_bytes) == before and not (shakespeare_bytes / "train.lock").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "\"settings\"", "null"])
def test_a_train_config_json_that_is_not_an_object_is_one_line(tmp_path, text):
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings

    (tmp_path / "train_config.json").write_text(text)  # valid JSON: it was an AttributeError's traceback
    with pytest.raises(WorkdirError, match="train_config.json: unreadable \\(a JSON .*, not the run's settings\\)"):
        check_settings(tmp_path, None, default_config(), {}, 1)


@pytest.mark.parametrize("edit, message", [
    ({"max_steps": "x", "learning_rate": None}, "values a run never writes: learning_rate None, max_steps 'x'"),
    ({"seed": "zero"}, "values a run never writes: seed 'zero'"),  # was: 'rerun with --config.seed=zero'
])
def test_a_train_config_json_with_values_of_other_types_is_one_line(tmp_path, edit, message):
    """A hand-edited train_config.json: a value of another type was a TypeError's traceback from the resume's
    description of what changed (or, for seed, advice to pass it on the command line)."""
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings

    config = default_config()
    write_run_settings(tmp_path, config, edit)
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(WorkdirError, match=re.escape(f"train_config.json: unreadable ({message})")):
        check_settings(tmp_path, None, config, {}, 1)
    write_run_settings(tmp_path, config, {"learning_rate": 1, "gone_key": 3})
    assert check_settings(tmp_path, None, config, {}, 1) == {"learning_rate": (1, 0.0006)}  # an int for a float
    config.learning_rate = 1  # a config file's int for a float: the saved float is still of its type
    write_run_settings(tmp_path, config, {"learning_rate": 0.0006})
    assert check_settings(tmp_path, None, config, {}, 1) == {"learning_rate": (0.0006, 1)}


def test_a_run_whose_config_set_none_for_an_empty_text_resumes(tmp_path):
    """Configs could set hellaswag = None (no HellaSwag) before types were checked, and the run wrote null: a
    resume, its config now saying '', read that as a value a run never writes."""
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings

    config = default_config()
    write_run_settings(tmp_path, config, {"hellaswag": None})
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    assert check_settings(tmp_path, None, config, {}, 1) == {}


@pytest.mark.parametrize("saved", [False, True, None])
def test_a_run_saved_with_a_kernel_setting_of_any_kind_resumes(tmp_path, saved):
    """split_qkv and fused_norm were bools (runs before 2026-11-27 wrote false); None now leaves them to the
    platform: each of the three is a value a run writes, a text is not."""
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings, describe_changes

    config = default_config()
    write_run_settings(tmp_path, config, {"fused_norm": saved})
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    changed = check_settings(tmp_path, None, config, {}, 1)
    assert changed == ({} if saved is None else {"fused_norm": (saved, None)})
    if changed:  # what the resume prints
        assert describe_changes(config, changed, 10) == (f"settings changed since this run's last start: fused_norm "
                                                         f"{saved} -> None (the platform's choice)")
    write_run_settings(tmp_path, config, {"split_qkv": "yes"})
    with pytest.raises(WorkdirError, match=re.escape("unreadable (values a run never writes: split_qkv 'yes')")):
        check_settings(tmp_path, None, config, {}, 1)


def test_a_run_that_read_another_data_order_is_refused_not_resumed_on_another(tmp_path):
    """The shuffle's seed became a hash of the run's (data.py): a run started before, resumed after, would read the
    rest of its epoch in another permutation, repeating some windows and skipping others (241 of 1,000 repeated in
    a reviewer's repro). Those runs recorded no data order; a new run's record is data.ORDER_VERSION."""
    from gpt2_jax.data import ORDER_VERSION
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings

    config = default_config()
    assert AS_WRITTEN == {"data_order": ORDER_VERSION}
    (tmp_path / "train_config.json").write_text(json.dumps(config.to_dict()))
    assert check_settings(tmp_path, None, config, {}, 1) == {}  # nothing saved to resume: nothing to keep
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(WorkdirError, match=re.escape(
            f"reads its windows in an order this gpt2_jax no longer makes (data order 1, now {ORDER_VERSION})")):
        check_settings(tmp_path, None, config, {}, 1)
    write_run_settings(tmp_path, config, {})
    assert check_settings(tmp_path, None, config, {}, 1) == {}


def test_a_run_that_lost_its_settings_is_refused_where_they_are_written(tmp_path):
    """Without train_config.json every resume check was skipped: another seed resumed the run silently (step 31's
    loss 3.2532 against 3.2394 in the prober's run). Only process 0 writes it: every process acts on its view."""
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import check_settings

    assert check_settings(tmp_path, None, default_config(), {}, 1) == {}  # a new run: nothing to check
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    with pytest.raises(WorkdirError, match=re.escape(f"{tmp_path} holds checkpoints but no train_config.json")):
        check_settings(tmp_path, None, default_config(), {}, 1)
    assert check_settings(tmp_path, None, default_config(), {}, 1, lambda lost: False) == {}  # process 0 has it


def test_a_kill_while_the_settings_are_rewritten_leaves_the_ones_before(tmp_path, monkeypatch):
    """Each start rewrote config.json and train_config.json in place: a kill mid-write left half a file, and the
    run could not resume until it was mended by hand."""
    from gpt2_jax import GPT2Config
    from gpt2_jax.train_config import default_config
    from gpt2_jax.workdir import write_settings

    config, model_config = default_config(), GPT2Config(n_layer=2, n_head=2, n_embd=8)
    write_settings(tmp_path, model_config, config, {}, 1)
    before = {name: (tmp_path / name).read_text() for name in ("config.json", "train_config.json")}
    real_write_text = Path.write_text
    for killed_at in (1, 2):  # config.json's write, then train_config.json's
        calls = []

        def killed_halfway(path, text, *args, **kwargs):
            calls.append(path)
            if len(calls) < killed_at:
                return real_write_text(path, text, *args, **kwargs)
            real_write_text(path, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt  # as the kill would, between the halves

        monkeypatch.setattr(Path, "write_text", killed_halfway)
        config.learning_rate = 1e-3
        with pytest.raises(KeyboardInterrupt):
            write_settings(tmp_path, dataclasses.replace(model_config, n_layer=3), config, {}, 1)
        monkeypatch.setattr(Path, "write_text", real_write_text)
        killed = ("config.json", "train_config.json")[killed_at - 1]
        assert (tmp_path / killed).read_text() == before[killed]  # the one before, whole; the other whole too
        assert all(json.loads((tmp_path / name).read_text()) for name in before)
