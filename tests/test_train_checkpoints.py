"""A workdir's checkpoints: damage is set aside and the step before restored, a changed setting is
refused with the workdir left byte for byte as it was, and a failed save stops the run naming the
last good step."""

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import (assert_one_line_error, config_flags_of, read_only, run_main, snapshot, step_of,
                      tiny_run_config, unprivileged)

from gpt2_jax import checkpoint_failures
from gpt2_jax.checkpoint import CheckpointError, load_params
from gpt2_jax.train import train

ROOT = Path(__file__).parent.parent

# `python -m gpt2_jax.train` with the background write of step 30 failing the way a full disk fails it
# (the checksum file is the last thing orbax writes before it renames the step into place).
FULL_DISK_AT_30 = """
import errno, os, sys
import orbax.checkpoint as ocp
write = ocp.JsonCheckpointHandler._save_fn
async def write_or_fail(self, item, directory):
    if "30.orbax-checkpoint-tmp" in str(directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    await write(self, item, directory)
ocp.JsonCheckpointHandler._save_fn = write_or_fail
from gpt2_jax.train import main
sys.argv[0] = "train"
main()
"""

# The same with step 30's directory refused, as a read-only checkpoints/ refuses it.
NO_DIRECTORY_AT_30 = """
import errno, os, sys
make_directory = os.mkdir
def make_or_refuse(path, *args, **kwargs):
    if "30.orbax-checkpoint-tmp" in str(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    make_directory(path, *args, **kwargs)
os.mkdir = make_or_refuse
from gpt2_jax.train import main
sys.argv[0] = "train"
main()
"""


@pytest.fixture(scope="module")
def trained(shakespeare_bytes, tmp_path_factory):
    """A finished 20-step run: checkpoints 10 and 20."""
    workdir = tmp_path_factory.mktemp("trained")
    train(tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=0), workdir)
    return workdir


def copy_of(workdir, tmp_path):
    return Path(shutil.copytree(workdir, tmp_path / "run"))


def run_train(config, workdir, code=None, timeout=None, prefix=()):
    command = ["-c", code] if code else ["-m", "gpt2_jax.train"]
    return subprocess.run([*prefix, sys.executable, *command, f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}",
                           f"--workdir={workdir}", *config_flags_of(config)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def truncate_params(step_dir):
    """Cut every params data file short: a step orbax cannot read."""
    for file in (step_dir / "params" / "ocdbt.process_0" / "d").iterdir():
        file.write_bytes(file.read_bytes()[:50])


def flip_a_bit(step_dir):
    """Rewrite the step's params with one bit of one weight flipped (an exponent bit: 0.02 becomes ~1e37),
    in a valid file: damage that storage did not catch, which orbax restores as it is."""
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(step_dir / "params")
        embedding = np.array(params["wte"]["embedding"])
        embedding.view(np.uint32)[3, 4] ^= 1 << 29
        params["wte"]["embedding"] = embedding
        shutil.rmtree(step_dir / "params")
        checkpointer.save(step_dir / "params", params)


def test_a_setting_that_changes_shapes_is_refused_and_nothing_is_touched(trained, shakespeare_bytes, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    padded = tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0, vocab_pad_multiple=64)
    assert_one_line_error(run_train(padded, workdir), "--config.vocab_pad_multiple=64 differs from the run in")
    assert snapshot(workdir) == before  # no checkpoint renamed *.unreadable, metrics and configs as they were
    # Without the setting in train_config.json to compare with (a record that lacks it), the checkpoint's shapes say it.
    settings = json.loads((workdir / "train_config.json").read_text())
    del settings["vocab_pad_multiple"]
    (workdir / "train_config.json").write_text(json.dumps(settings))
    before = snapshot(workdir)
    assert_one_line_error(run_train(padded, workdir), "checkpoint step 20 of")
    assert "holds wte.embedding as float32[257, 32], this run's model needs float32[320, 32]" in \
        run_train(padded, workdir).stderr
    assert snapshot(workdir) == before
    resumed = run_train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), workdir)
    assert resumed.returncode == 0 and "resuming from step 20" in resumed.stdout, resumed.stderr


def test_a_resume_refuses_other_data_or_another_seed_and_names_other_changes(trained, shakespeare_bytes, tmp_path):
    """The data order of a resumed run is the killed run's: its data (by content, wherever it lies) and seed."""
    workdir = copy_of(trained, tmp_path)
    other = Path(shutil.copytree(shakespeare_bytes, tmp_path / "other"))
    meta = json.loads((other / "meta.json").read_text())
    meta["splits"]["train"][0]["stop"] -= 1000  # the same text split elsewhere: other windows in another order
    (other / "meta.json").write_text(json.dumps(meta))
    before = snapshot(workdir)
    assert_one_line_error(run_train(tiny_run_config(other, max_steps=30, eval_every=0), workdir),
                          "is not the data the run in")
    assert_one_line_error(run_train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0, seed=7), workdir),
                          "--config.seed=7 differs from the run in")
    doubled = tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0, tokens_per_step=2 * 8 * 32)
    assert_one_line_error(run_train(doubled, workdir), "--config.tokens_per_step=512 differs from the run in")
    done = run_train(tiny_run_config(shakespeare_bytes, max_steps=15, eval_every=0), workdir)  # past it: nothing to do
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stderr
    assert snapshot(workdir) == before  # refused or idle: not even train_config.json was rewritten
    moved = Path(shutil.copytree(shakespeare_bytes, tmp_path / "moved"))  # the same data elsewhere resumes
    resumed = run_train(tiny_run_config(moved, max_steps=30, eval_every=0, learning_rate=1e-3), workdir)
    assert resumed.returncode == 0 and "resuming from step 20" in resumed.stdout, resumed.stderr
    changed = next(line for line in resumed.stdout.splitlines() if line.startswith("settings changed since this run"))
    assert f"data_dir {shakespeare_bytes} -> {moved}" in changed and "learning_rate 0.003 -> 0.001" in changed
    assert "max_steps 20 -> 30" in changed and "; the next step's learning rate is " in changed
    # Step 21's rate: it was the old schedule's floor (past its 20 steps), now the new cosine's (5 warmup, 30 steps).
    was, now = 0.003 * 0.1, 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * (21 - 5) / (30 - 5)))
    assert changed.endswith(f"; the next step's learning rate is {now:.3g}, up from {was:.3g}"), changed


def test_a_flipped_bit_fails_its_checksum_and_the_step_before_is_restored(trained, shakespeare_bytes, tmp_path,
                                                                           capsys):
    workdir = copy_of(trained, tmp_path)
    flip_a_bit(workdir / "checkpoints" / "20")
    damaged, step_10 = snapshot(workdir / "checkpoints" / "20"), snapshot(workdir / "checkpoints" / "10")
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), workdir)
    output = capsys.readouterr()
    assert "checkpoint step 20 is damaged (checksum mismatch in params " in output.err
    assert ", set aside as 20.unreadable; restoring the one before" in output.err
    assert "resuming from step 10" in output.out
    assert snapshot(workdir / "checkpoints" / "20.unreadable") == damaged  # kept for a person to look at
    assert snapshot(workdir / "checkpoints" / "10") == step_10


def test_a_step_that_lost_its_checksums_is_damaged_where_the_one_before_has_them(trained, shakespeare_bytes,
                                                                                 tmp_path, capsys):
    """Steps saved before checksums existed have none, and restore unchecked; a step that lost them (its folder
    gone in a copy) restored a flipped bit unchecked, silently."""
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "20" / "checksum")
    flip_a_bit(workdir / "checkpoints" / "20")
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), workdir)
    output = capsys.readouterr()
    assert "checkpoint step 20 is damaged (its checksums are missing (a step before it has them))" in output.err
    assert "resuming from step 10" in output.out
    oldest = copy_of(trained, tmp_path / "oldest")  # the first step without them: as a run saved before checksums
    shutil.rmtree(oldest / "checkpoints" / "20")
    shutil.rmtree(oldest / "checkpoints" / "10" / "checksum")
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), oldest)
    assert "resuming from step 10" in capsys.readouterr().out


def test_a_changed_data_position_fails_its_copy_and_the_step_before_is_restored(trained, shakespeare_bytes,
                                                                             tmp_path, capsys):
    """The iterator's position is a small JSON of its own: a flipped digit leaves it valid JSON, and the run
    would have read other windows from there on, silently."""
    workdir = copy_of(trained, tmp_path)
    position = workdir / "checkpoints" / "20" / "data" / "process_0-of-1.json"
    assert json.loads(position.read_text()) == {"next_index": 20}  # one batch of windows per step
    position.write_text(position.read_text().replace("20", "21"))  # "0" -> "1": one flipped bit
    logged = train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), workdir)
    output = capsys.readouterr()
    assert "checkpoint step 20 is damaged (the data iterator's position differs from the copy saved beside it), " \
           "set aside as 20.unreadable; restoring the one before" in output.err
    assert "resuming from step 10" in output.out and logged[0]["step"] == 11
    older = Path(shutil.copytree(trained, tmp_path / "older"))  # a step saved before the copy existed: no check
    checksum = older / "checkpoints" / "20" / "checksum" / "metadata"
    checksum.write_text(json.dumps({key: value for key, value in json.loads(checksum.read_text()).items()
                                    if key != "data"}))
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), older)
    output = capsys.readouterr()
    assert "resuming from step 20" in output.out and "damaged" not in output.err


def test_when_every_step_is_damaged_the_run_refuses_to_start_over(trained, shakespeare_bytes, tmp_path):
    workdir = copy_of(trained, tmp_path)
    for step in ("10", "20"):
        truncate_params(workdir / "checkpoints" / step)
    config = tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0)
    result = run_train(config, workdir)
    assert_one_line_error(result, "no readable checkpoint (set aside as damaged: 10.unreadable, 20.unreadable)")
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 2 and damaged[0].endswith("set aside as 20.unreadable; restoring the one before") and \
        damaged[1].endswith("set aside as 10.unreadable; no step is left before it"), damaged
    before = snapshot(workdir)
    again = run_train(config, workdir)  # never a fresh run from step 0 over the set-aside steps
    assert_one_line_error(again, "to start again from step 0, move them out of")
    assert snapshot(workdir) == before
    reader = subprocess.run([sys.executable, "-m", "gpt2_jax.sample", "--model", str(workdir)], capture_output=True,
                            text=True)
    assert_one_line_error(reader, "no readable checkpoint (damaged: 10.unreadable, 20.unreadable)")


LOAD_SIX_TIMES = """
import sys
from gpt2_jax.loading import load_model
for _ in range(6):
    load_model(sys.argv[1])
"""


def test_readers_fall_back_in_one_line_and_never_move_a_step(trained, tmp_path):
    """sample, evaluate and convert --to-hf read the step before a damaged one, with one line on stderr
    (orbax's abandoned reads printed hundreds of "Event loop is closed" tracebacks, some of the time)."""
    workdir = copy_of(trained, tmp_path)
    truncate_params(workdir / "checkpoints" / "20")
    before = snapshot(workdir)
    loads = subprocess.run([sys.executable, "-c", LOAD_SIX_TIMES, str(workdir)], capture_output=True, text=True)
    assert loads.returncode == 0, loads.stderr
    lines = loads.stderr.splitlines()
    assert len(lines) == 6 and all(line.startswith("checkpoint step 20 is damaged (unreadable") and
                                   line.endswith("; restoring the one before") for line in lines), loads.stderr
    export = subprocess.run([sys.executable, "-m", "gpt2_jax.convert", "--to-hf", str(workdir), "--out",
                             str(tmp_path / "hf")], capture_output=True, text=True)
    messages = [line for line in export.stderr.splitlines() if line.strip() and not line.startswith("convert:")]
    assert export.returncode == 0 and len(messages) == 1 and "is damaged" in messages[0], export.stderr
    assert snapshot(workdir) == before
    truncate_params(workdir / "checkpoints" / "10")  # now every step: the reader names them, moving nothing
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.sample", "--model", str(workdir)], capture_output=True,
                            text=True)
    assert_one_line_error(result, f"{workdir}: no readable checkpoint (damaged: step 20, step 10)")
    assert result.stderr.count("is damaged (unreadable: ") == 2 and workdir.joinpath("checkpoints", "10").is_dir()


def test_a_failed_save_stops_the_run_and_keeps_the_last_good_checkpoint(trained, shakespeare_bytes, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir / "checkpoints")
    config = tiny_run_config(shakespeare_bytes, max_steps=40, eval_every=0)
    result = run_train(config, workdir, FULL_DISK_AT_30)
    assert_one_line_error(result, f"saving checkpoint step 30 in {workdir / 'checkpoints'} failed (No space left "
                                  "on device); the last good checkpoint is step 20")
    assert {name: data for name, data in snapshot(workdir / "checkpoints").items()
            if not name.startswith("30")} == before  # steps 10 and 20 byte for byte
    steps = [step_of(line) for line in result.stdout.splitlines() if step_of(line)]
    assert 30 <= steps[-1] < 40  # stopped at once, not at the next save
    resumed = run_train(config, workdir)
    assert resumed.returncode == 0 and "resuming from step 20" in resumed.stdout, resumed.stderr


def test_a_step_whose_directory_cannot_be_made_stops_the_run_at_once(trained, shakespeare_bytes, tmp_path):
    """orbax makes a step's directories in the background by default, and a failure there left the save waiting
    forever, deaf to Ctrl-C and SIGTERM: here they are made before save() returns, and the run stops."""
    workdir = copy_of(trained, tmp_path)
    try:
        result = run_train(tiny_run_config(shakespeare_bytes, max_steps=40, eval_every=0), workdir, NO_DIRECTORY_AT_30,
                           timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the run waited for a step whose directory could not be made")
    assert_one_line_error(result, f"saving checkpoint step 30 in {workdir / 'checkpoints'} failed (Permission "
                                  "denied); the last good checkpoint is step 20")


def test_a_step_saved_whose_older_one_cannot_be_removed_is_not_called_failed(trained, shakespeare_bytes, tmp_path):
    """was: "saving checkpoint step 30 failed ...; the last good checkpoint is step 20" of a step 30 in place"""
    workdir = copy_of(trained, tmp_path)
    for folder in [workdir / "checkpoints" / "10", *(workdir / "checkpoints" / "10").rglob("*")]:
        folder.chmod(0o555) if folder.is_dir() else None  # step 10's files cannot be removed
    config = tiny_run_config(shakespeare_bytes, max_steps=40, eval_every=0, keep_checkpoints=2)
    try:
        result = run_train(config, workdir, prefix=unprivileged())
    finally:
        for folder in (workdir / "checkpoints").rglob("*"):
            folder.chmod(0o755) if folder.is_dir() else None
    assert_one_line_error(result, f"checkpoint step 30 is saved in {workdir / 'checkpoints'}, but what follows a "
                                  "save failed (Permission denied: removing older steps?); rerun: the run resumes "
                                  "from step 30")
    resumed = run_train(config, workdir)
    assert resumed.returncode == 0 and "resuming from step 30" in resumed.stdout, resumed.stderr


def test_a_read_only_checkpoints_folder_is_refused_before_the_first_step(trained, shakespeare_bytes, tmp_path):
    workdir = copy_of(trained, tmp_path)
    writable = read_only(workdir / "checkpoints")
    try:
        result = run_train(tiny_run_config(shakespeare_bytes, max_steps=40, eval_every=0), workdir)
    finally:
        writable()
    assert_one_line_error(result, f"{workdir / 'checkpoints'} is read-only here: no checkpoint could be saved (or "
                                  "old ones removed); make it writable")
    assert "step 21" not in result.stdout


@pytest.mark.parametrize("reader, error, reason", [
    ("restore", MemoryError("RESOURCE_EXHAUSTED: Out of memory allocating 1.5GB"), "MemoryError"),
    ("restore", OSError(errno.EMFILE, "Too many open files"), "Too many open files"),
    ("restore", ValueError("UNAVAILABLE: Error reading gs://bucket/run/checkpoints/20 [os_error_code=110]"),
     "Connection timed out"),
    ("item_metadata", OSError(errno.ESTALE, "Stale file handle"), "Stale file handle"),
])
def test_a_restore_the_machine_could_not_do_sets_nothing_aside(trained, tmp_path, monkeypatch, reader, error, reason):
    """Out of memory, file handles or time, a network filesystem gone: the files are fine, and were renamed
    .unreadable (all but MemoryError and no permission) with the run going back a step."""
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, reader, fail)
    with pytest.raises(CheckpointError, match=f"cannot restore step 20 of .*checkpoints: .*{reason}.*; its files "
                                              "are left as they are"):
        load_params(workdir)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("key, value, message", [
    ("n_layer", 1, "h_1.attn.c_attn.bias: (96,) saved, config.json gives none"),  # silently skipped a layer
    ("n_embd", 16, "h_0.attn.c_attn.bias: (96,) saved, config.json gives (48,)"),  # a flax traceback
])
def test_a_config_json_that_does_not_fit_the_saved_params_is_refused(trained, tmp_path, key, value, message):
    workdir = copy_of(trained, tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    (workdir / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError, match=re.escape(f"{workdir}: its params do not fit its config.json (")):
        load_params(workdir)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_params(workdir)


@pytest.mark.parametrize("mine, kinds, raised", [
    (None, [0, 0], None),
    (None, [0, 1], ("process 1 could not read it", False)),
    ("damage", [1, 2], ("process 1 could not read it", True)),  # the machine's failure wins: nothing set aside
    ("machine", [2, 1], ("mine", True)),
    ("damage", [1, 1], ("mine", False)),
])
def test_every_process_acts_on_what_any_could_not_read(monkeypatch, mine, kinds, raised):
    """Process 0 of two, given what each could not read: a damaged step is set aside on all, or the run stops on
    all (a process that acted alone restored another step than the others)."""
    import jax
    from jax.experimental import multihost_utils

    from gpt2_jax.checkpoint_failures import Unreadable, agree

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    def allgather(kind):  # this process's kind, as process 0's in `kinds`
        assert int(kind) == kinds[0]
        return np.array(kinds)

    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    failure = mine and Unreadable("mine", machine=mine == "machine")
    if raised is None:
        agree(failure)
        return
    with pytest.raises(Unreadable) as seen:
        agree(failure)
    assert (str(seen.value), seen.value.machine) == raised


def test_of_a_step_s_failed_reads_the_machine_s_counts_first():
    """A damaged item read before one the machine could not read: the step is left as it is and the run stops."""
    from gpt2_jax.checkpoint_failures import Failed, failure_of

    damaged, denied = ValueError("undecodable"), PermissionError(errno.EACCES, "Permission denied")
    assert failure_of([{"a": 1}, Failed(damaged), Failed(denied)]) is denied
    assert failure_of([Failed(damaged), {"a": 1}]) is damaged and failure_of([{"a": 1}]) is None


@pytest.mark.parametrize("removed", [True, False], ids=["removed", "being-removed"])
def test_a_reader_whose_step_a_trainer_replaces_reads_the_new_one(trained, tmp_path, monkeypatch, capsys, removed):
    """`sample` beside a live run that keeps one checkpoint: the trainer removed the step being read (saving the
    next), and the reader called it damaged, with none before it to read (1 time in 6). Orbax removes a step's
    files before its folder: the step can still be listed, with a newer one beside it."""
    from gpt2_jax.train_checkpoints import TrainCheckpoints

    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "10")  # keep_checkpoints=1
    restore, checkpoints = TrainCheckpoints._restore, workdir / "checkpoints"

    def trainer_replaces_20_by_30(self, step, *args):
        if step == 20:  # as the reader reads: step 30 saved, 20 removed
            shutil.copytree(checkpoints / "20", checkpoints / "30")
            shutil.rmtree(checkpoints / "20" / ("" if removed else "params"))
            raise checkpoint_failures.Unreadable("unreadable: ValueError: Found incomplete checkpoint")
        return restore(self, step, *args)

    monkeypatch.setattr(TrainCheckpoints, "_restore", trainer_replaces_20_by_30)
    _, params = load_params(workdir)
    assert params and "damaged" not in capsys.readouterr().err and "30" in [p.name for p in checkpoints.iterdir()]


def test_a_workdir_with_no_checkpoint_says_so(trained, tmp_path):
    """Sampled as soon as its run starts (train.lock only), or with checkpoints/ removed: it said "not a model
    directory" or "no model.safetensors", as if it were a Hugging Face directory."""
    from gpt2_jax import sample

    started = tmp_path / "started"
    started.mkdir()
    (started / "train.lock").touch()
    removed = copy_of(trained, tmp_path)
    shutil.rmtree(removed / "checkpoints")
    for workdir in (started, removed):
        assert_one_line_error(run_main(sample.main, "--model", str(workdir)),
                              f"{workdir}: a training workdir with no checkpoint in it (none saved yet")


def test_a_step_left_unfinished_by_a_killed_save_is_removed_by_the_next_trainer(trained, shakespeare_bytes, tmp_path):
    """A stop saves an off-cadence step; killed during that save, the step's temporary folder (up to the whole
    state's size) was never written again, so never removed. Readers leave it; the next trainer removes it."""
    from gpt2_jax.loading import load_model

    workdir = copy_of(trained, tmp_path)
    unfinished = workdir / "checkpoints" / "17.orbax-checkpoint-tmp"
    shutil.copytree(workdir / "checkpoints" / "10", unfinished)
    assert load_model(str(workdir)).params and unfinished.is_dir()  # a reader moves nothing
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), workdir)
    assert sorted(path.name for path in (workdir / "checkpoints").iterdir()) == ["10", "20", "30"]


def test_a_long_reason_is_cut_at_a_word_and_says_so():
    message = "Requested byte range [0, 17073) is out of bounds for " * 8  # tensorstore's are long
    reason = checkpoint_failures.failure_reason(ValueError(message))
    kept = reason.removeprefix("ValueError: ").removesuffix(" [...]")
    assert reason.endswith(" [...]") and len(reason) <= len("ValueError: ") + 200, reason
    assert len(kept) > 150 and (message.strip() + " ").startswith(kept + " "), reason  # whole words, in order
