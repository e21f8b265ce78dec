"""Several processes: two train processes on this host (jax.distributed over gloo, started as Slurm starts
them) train as one process does, and a SIGTERM to one of them stops both after the same step, saved."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import config_flags_of, step_of, tiny_run_config

from gpt2_jax.metrics import read_metrics

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start(config, workdir, log_dir, processes):
    """`processes` train processes of one run, each with one CPU device; their output goes to log_dir/N.txt."""
    port, started = free_port(), []
    run_config = config.copy_and_resolve_references()
    run_config.distributed = processes > 1
    for index in range(processes):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": "", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": str(processes),
               "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index)}
        with open(log_dir / f"{index}.txt", "w") as log:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "gpt2_jax.train", f"--workdir={workdir}",
                 f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}", *config_flags_of(run_config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return started


def finish(started, log_dir, timeout=120):
    """Each process's exit code and output."""
    try:
        for process in started:
            process.wait(timeout=timeout)
    finally:
        for process in started:
            process.kill()
    return [(process.returncode, (log_dir / f"{index}.txt").read_text()) for index, process in enumerate(started)]


def train_losses(workdir):
    return {row["step"]: row["train_loss"] for row in read_metrics(workdir) if "train_loss" in row}


@pytest.fixture(scope="module")
def config(shakespeare_bytes):
    return tiny_run_config(shakespeare_bytes, max_steps=60, checkpoint_every=20, eval_every=25)


@pytest.fixture(scope="module")
def one_process(config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_process")
    [(code, output)] = finish(start(config, folder / "run", folder, 1), folder)
    assert code == 0, output
    return train_losses(folder / "run")


def test_two_processes_train_as_one_does(config, one_process, tmp_path):
    results = finish(start(config, tmp_path / "run", tmp_path, 2), tmp_path)
    assert [code for code, _ in results] == [0, 0], results
    assert "2 cpu devices" in results[0][1]
    losses = train_losses(tmp_path / "run")  # process 0 writes the metrics: the global batch's loss
    assert losses.keys() == one_process.keys()  # each process read its half of the same windows
    np.testing.assert_allclose(list(losses.values()), list(one_process.values()), rtol=1e-4)


def test_a_sigterm_to_one_process_stops_both_after_the_same_step_and_they_resume(config, one_process, tmp_path):
    started = start(config, tmp_path / "run", tmp_path, 2)
    deadline = time.monotonic() + 240
    while not any(step_of(line) == 15 for line in (tmp_path / "1.txt").read_text().splitlines()):
        assert time.monotonic() < deadline and started[1].poll() is None, (tmp_path / "1.txt").read_text()
        time.sleep(0.05)
    started[1].send_signal(signal.SIGTERM)  # the other process hears nothing
    results = finish(started, tmp_path)
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results  # neither waits forever
    saved = {int(output.split("SIGTERM: saved step ")[1].split()[0]) for _, output in results}
    assert len(saved) == 1, results  # the same step
    stopped_at = saved.pop()
    assert 15 <= stopped_at < 60 and (tmp_path / "run" / "checkpoints" / str(stopped_at)).is_dir()

    results = finish(start(config, tmp_path / "run", tmp_path, 2), tmp_path)
    assert [code for code, _ in results] == [0, 0] and f"resuming from step {stopped_at}" in results[0][1], results
    losses = train_losses(tmp_path / "run")  # the stopped run's rows, then the resumed run's
    assert losses.keys() == one_process.keys()
    np.testing.assert_allclose(list(losses.values()), list(one_process.values()), rtol=1e-4)
