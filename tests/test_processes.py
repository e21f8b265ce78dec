"""Several processes: two train processes on this host (jax.distributed over gloo, started as Slurm starts
them) train as one process does; a SIGTERM to one of them stops both after the same step, saved; and
processes given other settings or data are refused before they train."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAKESPEARE, config_flags_of, step_of, tiny_run_config

from gpt2_jax.metrics import read_metrics

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start(config, workdir, log_dir, processes, code=None, differences=None):
    """`processes` train processes of one run, each with one CPU device; their output goes to log_dir/N.txt.
    `code`: run this Python instead of `-m gpt2_jax.train`, with the same arguments. `differences`: config
    keys that the last process is given other values of."""
    port, started = free_port(), []
    for index in range(processes):
        run_config = config.copy_and_resolve_references()
        run_config.distributed = processes > 1
        if index == processes - 1:
            run_config.update(differences or {})
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": "", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": str(processes),
               "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index)}
        with open(log_dir / f"{index}.txt", "w") as log:
            started.append(subprocess.Popen(
                [sys.executable, *(["-c", code] if code else ["-m", "gpt2_jax.train"]), f"--workdir={workdir}",
                 f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}", *config_flags_of(run_config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return started


def finish(started, log_dir, timeout=120):
    """Each process's exit code and output; a process still running after `timeout` seconds fails the test."""
    deadline = time.monotonic() + timeout
    try:
        for process in started:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in started:
            process.kill()
    results = [(process.returncode, (log_dir / f"{index}.txt").read_text()) for index, process in enumerate(started)]
    assert all(process.returncode >= 0 for process in started), results  # killed here: it was waiting on the others
    return results


def train_losses(workdir):
    return {row["step"]: row["train_loss"] for row in read_metrics(workdir) if "train_loss" in row}


def evaluations(workdir):
    return {row["step"]: (row["val_loss"], row["hellaswag_acc_norm"]) for row in read_metrics(workdir) if "val_loss" in row}


@pytest.fixture(scope="module")
def config(shakespeare_bytes, hellaswag_file):
    return tiny_run_config(shakespeare_bytes, max_steps=60, checkpoint_every=20, eval_every=25, hellaswag=str(hellaswag_file))


@pytest.fixture(scope="module")
def one_process_run(config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_process")
    [(code, output)] = finish(start(config, folder / "run", folder, 1), folder)
    assert code == 0, output
    return folder / "run"


@pytest.fixture(scope="module")
def one_process(one_process_run):
    return train_losses(one_process_run)


def test_two_processes_train_as_one_does_through_a_sigterm_to_one_of_them(config, one_process, one_process_run, tmp_path):
    """The SIGTERM stops both after the same step, saved; rerun, they resume and end where one process ends."""
    started = start(config, tmp_path / "run", tmp_path, 2)
    deadline = time.monotonic() + 240
    while not any(step_of(line) == 15 for line in (tmp_path / "1.txt").read_text().splitlines()):
        assert time.monotonic() < deadline and started[1].poll() is None, (tmp_path / "1.txt").read_text()
        time.sleep(0.05)
    started[1].send_signal(signal.SIGTERM)  # the other process hears nothing
    results = finish(started, tmp_path)
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results  # neither waits forever
    assert "2 cpu devices of 2 processes, mesh" in results[0][1]
    saved = {int(output.split("SIGTERM: saved step ")[1].split()[0]) for _, output in results}
    assert len(saved) == 1, results  # the same step
    stopped_at = saved.pop()
    assert 15 <= stopped_at < 40 and (tmp_path / "run" / "checkpoints" / str(stopped_at)).is_dir()

    results = finish(start(config, tmp_path / "run", tmp_path, 2), tmp_path)
    assert [code for code, _ in results] == [0, 0] and f"resuming from step {stopped_at}" in results[0][1], results
    losses = train_losses(tmp_path / "run")  # process 0 writes them: the stopped run's rows, then the resumed run's
    assert losses.keys() == one_process.keys()  # each process read its half of the same windows, in the same order
    np.testing.assert_allclose(list(losses.values()), list(one_process.values()), rtol=1e-4)
    scores, one_process_scores = evaluations(tmp_path / "run"), evaluations(one_process_run)
    assert scores.keys() == one_process_scores.keys() == {25, 50, 60}  # HellaSwag too (it read a split array)
    np.testing.assert_allclose(list(scores.values()), list(one_process_scores.values()), rtol=1e-4)


# Process 1 alone gets a SIGTERM as each evaluation begins, then another.
SIGTERM_TO_PROCESS_1_AT_EVALUATIONS = """
import os, signal, sys
import jax
import gpt2_jax.train as train_module
evaluate = train_module.Run.evaluate
def sigterm_to_process_1(self, step):
    if jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(self, step)
train_module.Run.evaluate = sigterm_to_process_1
sys.argv[0] = "train"
train_module.main()
"""


def test_a_sigterm_to_one_process_during_an_evaluation_stops_both_within_it(config, tmp_path):
    """The evaluation's batches are agreed on too: both stop at the same batch, and save the step evaluated. The
    second SIGTERM is ignored (ending process 1 at once would leave process 0 waiting). Rerun, both evaluate that
    step first, and once it is evaluated neither does."""
    stopping = config.copy_and_resolve_references()
    stopping.eval_batches = 4
    results = finish(start(stopping, tmp_path / "run", tmp_path, 2, code=SIGTERM_TO_PROCESS_1_AT_EVALUATIONS), tmp_path)
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results
    for _, output in results:
        assert "SIGTERM: evaluation of step 25 stopped" in output and "SIGTERM: saved step 25 in" in output, output
    assert "val_loss" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "SIGTERM ignored: stopping with the other processes" in results[1][1]
    stopping.max_steps = 25  # rerun: step 25's evaluation first, which only process 0 (it writes the metrics) knows
    for said in ["evaluating step 25 first: metrics.jsonl holds no evaluation of it", "already at max_steps=25, nothing to do"]:
        results = finish(start(stopping, tmp_path / "run", tmp_path, 2), tmp_path)
        assert [code for code, _ in results] == [0, 0] and all(said in output for _, output in results), results
        assert list(evaluations(tmp_path / "run")) == [25]


def test_processes_given_other_settings_or_data_are_refused(config, tmp_path):
    from gpt2_jax.prepare import prepare

    other_data = tmp_path / "other_split"  # the same text, split 80/20
    prepare([SHAKESPEARE], other_data, tokenizer="byte", val_fraction=0.2)
    differences = {"learning_rate": 1e-3, "data_dir": str(other_data)}
    results = finish(start(config, tmp_path / "run", tmp_path, 2, differences=differences), tmp_path)
    for code, output in results:
        assert code == 2 and "train: error: process 1 of this run differs from process 0 in learning_rate (here " \
            "learning_rate=" in output and "every process takes the same command line" in output, results
    assert "learning_rate=0.001)" in results[1][1] and "learning_rate=0.001)" not in results[0][1]
    assert not (tmp_path / "run").exists()

    differences = {"data_dir": str(other_data)}  # the settings agree (data_dir may differ), the data do not
    results = finish(start(config, tmp_path / "run", tmp_path, 2, differences=differences), tmp_path)
    for code, output in results:
        assert code == 2 and "process 1 of this run differs from process 0 in its data (tokenizer, shards or " \
            "splits) (here data_dir=" in output, results
    assert f"data_dir={other_data})" in results[1][1]
    assert not (tmp_path / "run").exists()

    differences = {"data_dir": str(tmp_path / "nothing_here")}  # process 1 fails alone, before the comparison
    results = finish(start(config, tmp_path / "run", tmp_path, 2, differences=differences), tmp_path, timeout=60)
    assert [code for code, _ in results] == [2, 2], results  # at once: not JAX's 5-minute wait at shutdown
    assert "no meta.json" in results[1][1], results
    assert "another process of this run stopped before comparing its data" in results[0][1], results

    results = finish(start(config, tmp_path / "run", tmp_path, 2, code=ONE_MORE_SETTING_ON_PROCESS_1), tmp_path)
    for code, output in results:  # not a gather of arrays of two shapes, which gloo aborts on
        assert code == 2 and "process 1 of this run differs from process 0 in the settings' keys (another " \
            "gpt2_jax?)" in output, results
    compared = len(config) - 1  # all but data_dir
    assert f"(here {compared + 1} keys)" in results[1][1] and f"(here {compared} keys)" in results[0][1]


# Process 1 finds no checkpoint to resume from (as if it saw another checkpoints/ directory).
NO_CHECKPOINT_ON_PROCESS_1 = """
import os, sys
import gpt2_jax.train as train_module
restore = train_module.TrainCheckpoints.restore_train_state
def none_on_process_1(self, *args):
    restored = restore(self, *args)
    return None if os.environ["SLURM_PROCID"] == "1" else restored
train_module.TrainCheckpoints.restore_train_state = none_on_process_1
sys.argv[0] = "train"
train_module.main()
"""


def test_a_run_resumes_only_with_as_many_processes_and_all_from_one_step(config, one_process_run, tmp_path):
    """Each process keeps its own place in the data: a run resumes with the processes that trained it (before,
    every checkpoint of a one-process run looked damaged to two processes, and was set aside)."""
    shutil.copytree(one_process_run, tmp_path / "one")  # finished at step 60
    before = sorted(path.name for path in (tmp_path / "one" / "checkpoints").iterdir())
    longer = config.copy_and_resolve_references()
    longer.max_steps = 70
    results = finish(start(longer, tmp_path / "one", tmp_path, 2), tmp_path)
    for code, output in results:
        assert code == 2 and "was trained by 1 process(es), each with its own place in the data, and resumes only " \
            "with 1, not 2" in output, results
    assert sorted(path.name for path in (tmp_path / "one" / "checkpoints").iterdir()) == before

    shorter = config.copy_and_resolve_references()
    shorter.max_steps, shorter.eval_every = 10, 0
    assert [code for code, _ in finish(start(shorter, tmp_path / "two", tmp_path, 2), tmp_path)] == [0, 0]
    shorter.max_steps = 20
    results = finish(start(shorter, tmp_path / "two", tmp_path, 2, code=NO_CHECKPOINT_ON_PROCESS_1), tmp_path)
    for code, output in results:
        assert code == 2 and "process 1 of this run differs from process 0 in the step it starts from" in output, results
    assert "(here step 10)" in results[0][1] and "(here step 0)" in results[1][1]


DIFFERS = "the data iterator's position differs from the copy saved beside it"

# Process 0 is slow to set a damaged step aside (a busy filesystem): the others must wait for it.
SLOW_RENAME_ON_PROCESS_0 = """
import os, pathlib, sys, time
rename = pathlib.Path.rename
def slow_rename(self, target):
    time.sleep(1.0 if os.environ["SLURM_PROCID"] == "0" else 0.0)
    return rename(self, target)
pathlib.Path.rename = slow_rename
from gpt2_jax.train import main
sys.argv[0] = "train"
main()
"""


@pytest.mark.parametrize("damage, said", [
    (lambda text: text.replace("40", "41"), [DIFFERS, DIFFERS]),
    (lambda text: text[:-3], ["process 1 could not read it", "unreadable: JSONDecodeError"]),  # each says its own
], ids=["differing", "undecodable"])
def test_a_data_position_damaged_on_one_process_sets_the_step_aside_on_all(config, tmp_path, damage, said):
    """Each process reads its own position: one that finds its own differing from the copy, or cannot decode it,
    must not restore another step than the others (they would wait on each other, or part ways); nor list the
    step before process 0 has set it aside (it wrote it again where it stood, and orbax refused)."""
    short = config.copy_and_resolve_references()
    short.max_steps, short.eval_every = 40, 0
    assert [code for code, _ in finish(start(short, tmp_path / "run", tmp_path, 2), tmp_path)] == [0, 0]
    position = tmp_path / "run" / "checkpoints" / "40" / "data" / "process_1-of-2.json"
    assert json.loads(position.read_text()) == {"next_index": 40}
    position.write_text(damage(position.read_text()))
    short.max_steps = 50
    results = finish(start(short, tmp_path / "run", tmp_path, 2, code=SLOW_RENAME_ON_PROCESS_0), tmp_path)
    assert [code for code, _ in results] == [0, 0] and "resuming from step 20" in results[0][1], results
    for (_, output), reason in zip(results, said):
        assert f"checkpoint step 40 is damaged ({reason}" in output, output
    assert (tmp_path / "run" / "checkpoints" / "40.unreadable").is_dir()


# Process 1 runs a gpt2_jax with one more setting.
ONE_MORE_SETTING_ON_PROCESS_1 = """
import os, sys
import gpt2_jax.train_config as train_config
default_config = train_config.default_config
def one_more():
    c = default_config()
    if os.environ["SLURM_PROCID"] == "1":
        c.newer_setting = 1
    return c
train_config.default_config = one_more
import gpt2_jax.train as train_module
sys.argv[0] = "train"
train_module.main()
"""


class FakeSignals:
    signal, repeated = None, False


def test_processes_act_on_the_agreement_of_the_step_before(monkeypatch):
    """The agreement logic in one process, made to take the several-process path over the 8 fake devices."""
    import jax

    from gpt2_jax.agreed_stop import AgreedStop
    from gpt2_jax.sharding import make_mesh

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    signals = FakeSignals()
    stop = AgreedStop(signals, make_mesh())
    assert not stop.alone and stop.agree_now() is None and stop.poll() is None
    signals.signal = "SIGINT"
    assert stop.signal is None  # not its own signal: the agreed one
    assert stop.poll() is None  # reads the agreement started before the signal
    assert stop.poll() == "SIGINT" and stop.signal == "SIGINT"
    signals.signal = None
    assert stop.poll() == "SIGINT"  # once agreed, it stays

    signals.signal = "SIGTERM"
    assert AgreedStop(signals, make_mesh()).agree_now() == "SIGTERM"  # before the first step: at once
