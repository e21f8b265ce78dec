"""Training end to end: loss falls, outputs, exact resume (clean stop and SIGKILL), bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, config_flags_of, run_main, tiny_run_config, step_of

from gpt2_jax import GPT2
from gpt2_jax.config import GPT2Config
from gpt2_jax.errors import UserError
from gpt2_jax.metrics import MetricsWriter, read_metrics
from gpt2_jax.train import train

ROOT = Path(__file__).parent.parent


def losses(workdir):
    return {row["step"]: row["train_loss"] for row in read_metrics(workdir) if "train_loss" in row}


def test_a_tiny_run_learns_and_writes_its_workdir(shakespeare_bytes, tmp_path):
    logged = train(tiny_run_config(shakespeare_bytes, max_steps=60), tmp_path)
    train_rows = [row for row in logged if "train_loss" in row]
    assert len(train_rows) == 60 and train_rows[0]["train_loss"] > 5.0  # ln(257) = 5.55 at the start
    assert np.mean([r["train_loss"] for r in train_rows[-5:]]) < 0.65 * train_rows[0]["train_loss"]
    val = [row["val_loss"] for row in logged if "val_loss" in row]
    assert len(val) == 3 and val[-1] < val[0]
    assert read_metrics(tmp_path) == logged
    assert {"lr", "grad_norm", "param_norm", "tokens_per_sec"} <= set(train_rows[-1])
    assert GPT2Config.from_json(tmp_path / "config.json").vocab_size == 257
    assert json.loads((tmp_path / "train_config.json").read_text())["max_steps"] == 60
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["40", "50", "60"]
    assert any((tmp_path / "tensorboard").iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C raises again after train()


def test_the_split_qkv_and_bf16_residual_options_reach_the_model(shakespeare_bytes, tmp_path, monkeypatch, capsys):
    """Options set reach the model and the run's first line; those left to the platform (None) are its choice
    (accelerator.model_kernels: on a CPU, XLA's ops, the attention by chunks of queries)."""
    import gpt2_jax.train_config as train_config_module

    built = []
    monkeypatch.setattr(train_config_module, "GPT2", lambda *args, **kwargs: built.append(kwargs) or GPT2(*args, **kwargs))
    train(tiny_run_config(shakespeare_bytes, max_steps=2, warmup_steps=1, eval_every=0, split_qkv=True,
                          residual_dtype="bfloat16"), tmp_path / "a")
    assert built[0]["split_qkv"] is True and built[0]["residual_dtype"] == jnp.bfloat16
    assert built[0]["fused_norm"] is False and built[0]["attention_impl"] == "chunked"
    assert "| chunked attention | q, k, v as three matmuls\n" in capsys.readouterr().out
    train(tiny_run_config(shakespeare_bytes, max_steps=2, warmup_steps=1, eval_every=0), tmp_path / "b")
    assert (built[1]["split_qkv"], built[1]["fused_norm"]) == (False, False)
    assert "| chunked attention\n" in capsys.readouterr().out


def start_run(config, workdir, code=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = ["-c", code] if code else ["-m", "gpt2_jax.train"]
    return subprocess.Popen([sys.executable, *command, f"--workdir={workdir}",
                             f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}", *config_flags_of(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def run_until(process, predicate):
    """Read the run's output until `predicate(line)`; returns what was read."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if predicate(line):
            return lines
    raise AssertionError("".join(lines))


@pytest.fixture(scope="module")
def straight(shakespeare_bytes, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    config = tiny_run_config(shakespeare_bytes, max_steps=100, checkpoint_every=20, eval_every=50)
    process = start_run(config, workdir)
    output = process.communicate()[0]
    assert process.returncode == 0, output
    return config, losses(workdir)


def test_a_save_is_a_note_on_its_steps_row_or_a_short_line_of_its_own(shakespeare_bytes, tmp_path, capsys):
    train(tiny_run_config(shakespeare_bytes, max_steps=12, log_every=4, checkpoint_every=6, eval_every=0), tmp_path)
    lines = capsys.readouterr().out.splitlines()
    saves = [line for line in lines if "checkpoint" in line and not line.startswith("checkpoints in")]
    assert [line.split(" |")[0] for line in saves] == ["step  6/12", "step 12/12"], lines
    assert saves[0].endswith(" | saving checkpoint") and saves[0].count("|") == 2, saves  # not a logged step
    assert saves[1].startswith("step 12/12 | loss ") and saves[1].endswith(", ETA 0:00:00 | saving checkpoint")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["12", "6"]


def test_the_peak_device_memory_is_a_column_where_the_devices_count_it(shakespeare_bytes, tmp_path, monkeypatch,
                                                                        capsys):
    from gpt2_jax import device_memory

    monkeypatch.setattr(device_memory, "peak_gib", lambda: 24.25)  # a GPU's count; a CPU keeps none (test_metrics)
    train(tiny_run_config(shakespeare_bytes, max_steps=4, warmup_steps=1, log_every=2, eval_every=0), tmp_path)
    assert [row.get("peak_memory_gib") for row in read_metrics(tmp_path)] == [24.25, 24.25]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(rows) == 2 and all(" | peak GiB 24.2 | " in line for line in rows), rows


def test_sigterm_saves_and_the_resumed_run_matches_a_straight_one(straight, tmp_path):
    config, expected = straight
    process = start_run(config, tmp_path)
    run_until(process, lambda line: step_of(line) == 33)
    process.send_signal(signal.SIGTERM)
    output = process.communicate()[0]
    assert process.returncode == 128 + signal.SIGTERM, output  # saved, but not finished: `train && next` stops
    stopped_at = int(output.split("SIGTERM: saved step ")[1].split()[0])
    assert 33 <= stopped_at < 100 and (tmp_path / "checkpoints" / str(stopped_at)).is_dir()
    resumed = start_run(config, tmp_path)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0 and f"resuming from step {stopped_at}" in output, output
    assert losses(tmp_path) == expected  # bit for bit: same params, optimizer state and data order


def test_sigkill_loses_at_most_one_checkpoint_interval(straight, tmp_path):
    config, expected = straight
    process = start_run(config, tmp_path)
    run_until(process, lambda line: step_of(line) == 47)
    process.kill()
    process.wait()
    saved = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved in (20, 40, 60)
    resumed = start_run(config, tmp_path)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0 and f"resuming from step {saved}" in output, output
    assert losses(tmp_path) == expected


# A slow disk: the background write of step 40 takes ten minutes while training goes on.
SLOW_WRITE_OF_40 = """
import asyncio, sys
import orbax.checkpoint as ocp
write = ocp.JsonCheckpointHandler._save_fn
async def slow_write(self, item, directory):
    if "40.orbax-checkpoint-tmp" in str(directory):
        await asyncio.sleep(600)
    await write(self, item, directory)
ocp.JsonCheckpointHandler._save_fn = slow_write
from gpt2_jax.train import main
sys.argv[0] = "train"
main()
"""


def test_sigkill_during_a_checkpoint_write_loses_less_than_two_intervals(shakespeare_bytes, tmp_path):
    """README's promise: a SIGKILL loses at most 2 x checkpoint_every steps (saves are asynchronous: a kill while
    step N is being written falls back to step N - checkpoint_every)."""
    config = tiny_run_config(shakespeare_bytes, max_steps=60, checkpoint_every=20, eval_every=0)
    process = start_run(config, tmp_path, SLOW_WRITE_OF_40)
    run_until(process, lambda line: step_of(line) == 55)
    process.kill()
    process.wait()
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('{"step": 56, "train_lo')  # killed in the middle of writing a row
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20", "40.orbax-checkpoint-tmp"]
    assert 55 - 20 <= 2 * config.checkpoint_every
    resumed = start_run(config, tmp_path)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0 and "resuming from step 20" in output, output
    assert sorted(losses(tmp_path)) == list(range(1, 61))


def test_a_row_cut_short_in_metrics_jsonl_is_dropped_and_the_rest_kept_byte_for_byte(tmp_path):
    rows = "".join(json.dumps({"step": step, "train_loss": 1.0 / step}) + "\n" for step in range(1, 8))
    (tmp_path / "metrics.jsonl").write_text(rows + '{"step": 8, "train_l')
    assert [row["step"] for row in read_metrics(tmp_path)] == list(range(1, 8))
    MetricsWriter(tmp_path, resume_step=7).close()  # a start that logs nothing changes nothing
    assert (tmp_path / "metrics.jsonl").read_text() == rows + '{"step": 8, "train_l'
    writer = MetricsWriter(tmp_path, resume_step=6)
    writer.write(7, {"train_loss": 0.5})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == rows.replace('"train_loss": 0.14285714285714285', '"train_loss": 0.5')
    writer = MetricsWriter(tmp_path, resume_step=3)
    writer.begin()  # training begins at step 4: the rows after 3 go, whether or not a row gets logged
    writer.close()
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("line", ["5", '{"train_loss": 1.0}', '{"step": 3, "val_loss": "x"}', '{"step": 3, "val_loss": null}',
                                  '{"step": "3"}'])
def test_a_metrics_row_that_is_not_one_is_one_line(tmp_path, line):
    (tmp_path / "metrics.jsonl").write_text(line + "\n" + json.dumps({"step": 9, "train_loss": 1.0}) + "\n")
    with pytest.raises(UserError, match="metrics.jsonl:1: not a metrics row"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(UserError, match="cannot be read as a metrics file"):
        MetricsWriter(tmp_path, resume_step=0)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(shakespeare_bytes, tmp_path):
    train(tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=0), tmp_path)
    for file in (tmp_path / "checkpoints" / "20" / "params").rglob("*"):
        if file.is_file():
            file.write_bytes(b"\0" * 16)
    process = start_run(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=0), tmp_path)
    output = process.communicate()[0]
    assert process.returncode == 0, output
    assert "checkpoint step 20 is damaged" in output and "resuming from step 10" in output
    assert "params |" in output.splitlines()[0] and "chunked attention" in output.splitlines()[0]  # the banner first


def test_a_diverged_loss_stops_with_the_last_good_checkpoint(shakespeare_bytes, tmp_path):
    train(tiny_run_config(shakespeare_bytes, max_steps=10, eval_every=0), tmp_path)
    process = start_run(tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=0, learning_rate=1e38), tmp_path)
    output = process.communicate()[0]
    result = subprocess.CompletedProcess(process.args, process.returncode, "", output)
    assert_one_line_error(result, "at step 11: stopped; the last good checkpoint is step 10")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.train", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    (["--config.data_dir=/no/such/data"], "/no/such/data: no meta.json; prepare it first"),
    (["--config.n_layers=3"], "unknown config key 'n_layers'"),
    (["--config.max_steps=many"], "flag --config.max_steps=many"),
    (["--config.batch_size=12", "--config.tokens_per_step=384"], "batch_size=12 does not split over 8 devices"),
    (["--config.tokens_per_step=100"], "tokens_per_step=100 is not a multiple of batch_size * block_size"),
    (["--config=configs/no_such.py"], "cannot load --config"),
    (["--config.batch_size=0"], "batch_size=0 must be at least 1"),
    (["--config.block_size=0"], "block_size=0 must be at least 1"),
    (["--config.learning_rate=-0.001"], "learning_rate=-0.001 must be a positive number"),
    (["--config.seed=99999999999999999999"], "seed=99999999999999999999 must be in [0, 2**32)"),
    (["--config.max_steps=99999999999999999999"], "max_steps=99999999999999999999 must be below 2**31"),
    (["--config.learning_rate=nan"], "learning_rate=nan must be a positive number"),
    (["--config.attention_impl=cudnn"], "attention_impl='cudnn' needs an NVIDIA GPU, not cpu"),
    (["--config.residual_dtype=float16"], "residual_dtype='float16'; choose one of ('float32', 'bfloat16')"),
    (["--config.fused_norm=True"], "fused_norm=True needs an NVIDIA GPU (its Triton kernel), not cpu"),
    # Found by trying: each failed only at the first evaluation, after training, or with a traceback.
    (["--config.num_samples=-1"], "num_samples, sample_tokens, hellaswag_limit, cpu_devices and peak_flops must be >= 0"),
    (["--config.sample_tokens=-1"], "num_samples, sample_tokens, hellaswag_limit"),
    (["--config.num_samples=1", "--config.sample_prompt="], "sample_prompt is empty"),
    (["--config.data_dir=README.md"], "README.md/meta.json: cannot be read (Not a directory)"),
])
def test_bad_input_is_one_line(shakespeare_bytes, tmp_path, args, message):
    config = tiny_run_config(shakespeare_bytes)
    overridden = {a.split("=")[0] for a in args}
    flags = [f for f in config_flags_of(config) if f.split("=")[0] not in overridden]
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path}", *flags, *args), message)


def test_out_of_memory_is_one_line_and_a_new_workdir_is_left_as_it_was(shakespeare_bytes, tmp_path, monkeypatch):
    """A model too large for the device fails its first step: one line with what to change, and the workdir
    it made is gone (a config.json left there would refuse the smaller model the user tries next). On a CPU
    host the size of its state is refused before anything is allocated."""
    import gpt2_jax.train as train_module

    config = tiny_run_config(shakespeare_bytes, n_layer=1, n_head=1, n_embd=1_000_000)
    result = run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path / 'run'}", *config_flags_of(config))
    assert_one_line_error(result, "the train state and its gradients need ")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(train_module, "check_state_fits_host", lambda *args: None)  # as on a GPU: XLA's own answer
    with pytest.raises(UserError, match="out of memory on cpu \\(") as refused:
        train(config, tmp_path / "run")
    assert "lower batch_size (tokens_per_step stays, as more micro-batches), set remat=True" in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_a_train_state_larger_than_the_host_memory_is_refused_before_it_is_made(shakespeare_bytes, tmp_path,
                                                                               monkeypatch):
    """On CPU devices the kernel's out-of-memory killer, not XLA, answers a state too large: a SIGKILL mid-step."""
    import jax

    import gpt2_jax.device_errors as device_errors

    config = tiny_run_config(shakespeare_bytes)  # 8 CPU devices, each with its own copy of the state
    model = GPT2(GPT2Config(vocab_size=257, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    state_bytes = 3 * sum(leaf.nbytes for leaf in jax.tree.leaves(params))  # params and AdamW's two moments
    needed = (state_bytes + 8) * 8 * 4 // 3  # + the step count (int32, per moment), on 8 devices, + gradients
    monkeypatch.setattr(device_errors, "_available_host_bytes", lambda: needed - 1)
    with pytest.raises(UserError, match=f"the train state and its gradients need {needed / 2**30:.1f} GiB on this "
                                        "host, which has .* GiB available; train a smaller model here"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(device_errors, "_available_host_bytes", lambda: needed)
    assert train(tiny_run_config(shakespeare_bytes, max_steps=2, warmup_steps=1, eval_every=0), tmp_path / "run")


def test_out_of_memory_while_sampling_warns_and_trains_on_without_samples(shakespeare_bytes, tmp_path, monkeypatch,
                                                                          capsys):
    """Samples only show how training goes: once a run lost to them (maybe before its first checkpoint), with
    advice about batch_size, which is not what sized them."""
    import jax

    import gpt2_jax.train_eval as train_eval

    tries = []

    def out_of_memory(*args, **kwargs):
        tries.append(1)
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.")

    monkeypatch.setattr(train_eval, "generate", out_of_memory)
    config = tiny_run_config(shakespeare_bytes, max_steps=4, warmup_steps=1, eval_every=2, num_samples=2)
    logged = train(config, tmp_path)
    assert [row["step"] for row in logged if "val_loss" in row] == [2, 4] and len(tries) == 1
    assert ("warning: no samples from now on in this run: out of memory on cpu (RESOURCE_EXHAUSTED: Out of memory "
            "while trying to allocate 9.1GiB.); lower num_samples or sample_tokens\n") in capsys.readouterr().err


def test_distributed_without_a_cluster_is_one_line(shakespeare_bytes, tmp_path):
    flags = config_flags_of(tiny_run_config(shakespeare_bytes, distributed=True))
    result = run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path / 'run'}", *flags)
    assert_one_line_error(result, "distributed=True, but no cluster to join (coordinator_address should be defined")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("x = 1\n", "cannot load --config: the file defines no get_config()"),
    ("def get_config(:\n", "cannot load --config: SyntaxError: invalid syntax"),
    ("def get_config():\n    return 1 / 0\n", "cannot load --config: ZeroDivisionError: division by zero"),
    ("def get_config():\n    return {'max_steps': 1}\n", "get_config() returned a dict, not an ml_collections.ConfigDict"),
])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, text, message):
    (tmp_path / "config.py").write_text(text)
    assert_one_line_error(run_cli(f"--config={tmp_path / 'config.py'}", f"--workdir={tmp_path / 'run'}"), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("form", ["--config FILE", "-config=FILE"])
def test_a_config_that_is_not_python_says_so(tmp_path, form):
    """--config=train_config.json (a run's settings, JSON) was 'NameError: name 'true' is not defined' alone."""
    (tmp_path / "settings.json").write_text('{"remat": true}\n')
    flag = form.replace("FILE", str(tmp_path / "settings.json")).split()
    assert_one_line_error(run_cli(*flag, f"--workdir={tmp_path / 'run'}"),
                          f"NameError: name 'true' is not defined ({tmp_path / 'settings.json'} is not a .py file: "
                          "a config is Python, configs/NAME.py)")
    (tmp_path / "config.py").write_text("def get_config(size):\n    return 1 / 0\n")  # FILE.py:ARG is Python
    result = run_cli(f"--config={tmp_path / 'config.py'}:small", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, "ZeroDivisionError: division by zero")
    assert "not a .py file" not in result.stderr


@pytest.mark.parametrize("text, returned", [("def get_config():\n    pass\n", "None"),
                                            ("def get_config():\n    return {'seed': 1}\n", "a dict")])
def test_a_config_file_that_returns_no_config_dict_is_one_line_overridden_too(tmp_path, text, returned):
    """config_flags logged an absl WARNING for a None, then applied the --config.KEY overrides to what it got: a
    KeyError that named neither the file nor what was wrong."""
    (tmp_path / "config.py").write_text(text)
    result = run_cli(f"--config={tmp_path / 'config.py'}", "--config.max_steps=3", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, f"cannot load --config: get_config() returned {returned}, not an ml_collections."
                                  f"ConfigDict; make {tmp_path / 'config.py'} return train_config.default_config()")
    assert len(result.stderr.splitlines()) == 1, result.stderr  # no WARNING line before it
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("meta, message", [
    ({"complete": True}, "meta.json: no tokenizer, vocab_size, eot_token, shards, splits; prepare the data again"),
    ([1, 2], "meta.json: not a JSON object"),
])
def test_a_meta_json_without_its_keys_is_one_line(shakespeare_bytes, tmp_path, meta, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))
    flags = config_flags_of(tiny_run_config(tmp_path / "data"))
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path / 'run'}", *flags),
                          message)
    assert not (tmp_path / "run").exists()


def test_a_corrupt_shard_is_one_line(shakespeare_bytes, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in shakespeare_bytes.iterdir():
        (data / f.name).write_bytes(f.read_bytes()[: 4000 if f.suffix == ".npy" else None])
    flags = config_flags_of(tiny_run_config(data))
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path / 'run'}", *flags),
                          "corrupt shard")


def test_an_empty_workdir_flag_is_refused_not_the_current_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / 'configs/shakespeare_byte.py'}",
                             "--workdir="], capture_output=True, text=True, cwd=tmp_path)
    assert_one_line_error(result, "usage: python -m gpt2_jax.train")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_leaves_the_workdir_free_for_the_corrected_command(shakespeare_bytes, tmp_path):
    too_long = config_flags_of(tiny_run_config(shakespeare_bytes, block_size=200_000, batch_size=8,
                                               tokens_per_step=8 * 200_000))
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path}", *too_long),
                          "no window of block_size + 1 = 200001 tokens")
    assert list(tmp_path.iterdir()) == []  # an existing directory is left as it was: no lock file, no checkpoints/
    new_workdir = tmp_path / "new" / "run"  # one the refused start made: not left behind, lock file and all
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={new_workdir}", *too_long),
                          "no window of block_size + 1 = 200001 tokens")
    assert not new_workdir.exists() and list(tmp_path.iterdir()) == []  # nor the folder it made for it
    assert train(tiny_run_config(shakespeare_bytes, max_steps=2, warmup_steps=1, eval_every=0), tmp_path)  # not refused


def test_a_stop_signal_during_setup_stops_before_the_first_step(shakespeare_bytes, tmp_path, monkeypatch, capsys):
    import gpt2_jax.train as train_module

    schedule = train_module.learning_rate_schedule

    def press_ctrl_c_during_setup(config):  # XLA is compiling around here: the signal must not interrupt it
        os.kill(os.getpid(), signal.SIGINT)
        return schedule(config)

    monkeypatch.setattr(train_module, "learning_rate_schedule", press_ctrl_c_during_setup)
    with pytest.raises(train_module.Stopped) as stopped:  # a KeyboardInterrupt, as Ctrl-C in a notebook should be
        train(tiny_run_config(shakespeare_bytes), tmp_path / "new")
    assert stopped.value.signum == signal.SIGINT and stopped.value.rows == []
    assert "SIGINT before the first step: stopped, nothing trained" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()  # the workdir it made, with its lock and empty checkpoints/, is gone
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_signal_during_an_evaluation_saves_the_step_it_evaluated(shakespeare_bytes, tmp_path, monkeypatch,
                                                                       capsys):
    """The step's save was decided before its evaluation began: a signal that comes during the evaluation
    (HellaSwag can take minutes, a preemption's grace is seconds) stops it at its next batch and saves the
    step before stopping, as the console says."""
    import gpt2_jax.train as train_module

    evaluate = train_module.Run.evaluate

    def sigterm_while_evaluating(self, step):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, step)

    monkeypatch.setattr(train_module.Run, "evaluate", sigterm_while_evaluating)
    events, save, wait = [], train_module.TrainCheckpoints.save, train_module.TrainCheckpoints.wait
    monkeypatch.setattr(train_module.TrainCheckpoints, "save", lambda self, step, *a, **k: (
        save(self, step, *a, **k), events.append(f"save {step} begun")))
    monkeypatch.setattr(train_module.TrainCheckpoints, "wait", lambda self: (wait(self), events.append("waited")))
    monkeypatch.setattr(train_module, "print", lambda text, **k: (print(text, **k), events.append(text)), raising=False)
    config = tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=5, checkpoint_every=1000)
    with pytest.raises(train_module.Stopped) as stopped:
        train(config, tmp_path)
    said = next(i for i, event in enumerate(events) if event.startswith("SIGTERM: saved step 5"))
    assert "waited" in events[events.index("save 5 begun"):said]  # the save whole before the console says so
    assert stopped.value.signum == signal.SIGTERM and [row["step"] for row in stopped.value.rows][-1] == 5
    assert not any("val_loss" in row for row in stopped.value.rows)  # stopped before its first batch, not after all
    output = capsys.readouterr().out
    assert "SIGTERM: evaluation of step 5 stopped" in output and f"SIGTERM: saved step 5 in {tmp_path}" in output
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["5"]
    monkeypatch.setattr(train_module.Run, "evaluate", evaluate)
    rows = train(config, tmp_path)  # step 5's evaluation first: it was never written, and a rerun resumed after it
    assert "resuming from step 5" in capsys.readouterr().out and [row["step"] for row in rows[:2]] == [5, 6]
    assert "val_loss" in rows[0] and [row["step"] for row in read_metrics(tmp_path) if "val_loss" in row] == \
        [5, 10, 15, 20]


def test_a_stop_signal_during_the_last_evaluation_is_a_stop_and_the_rerun_evaluates(shakespeare_bytes, tmp_path,
                                                                                   monkeypatch, capsys):
    """The run had finished training, so it exited 0 without the last step's evaluation, and its rerun, "already
    at max_steps, nothing to do", never made it: the run's final val loss was lost for good."""
    import gpt2_jax.train as train_module

    evaluate = train_module.Run.evaluate

    def sigterm_while_evaluating(self, step):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, step)

    monkeypatch.setattr(train_module.Run, "evaluate", sigterm_while_evaluating)
    config = tiny_run_config(shakespeare_bytes, max_steps=6, eval_every=1000)
    with pytest.raises(train_module.Stopped) as stopped:
        train(config, tmp_path)
    assert stopped.value.signum == signal.SIGTERM and not any("val_loss" in row for row in stopped.value.rows)
    output = capsys.readouterr().out
    assert "SIGTERM: evaluation of step 6 stopped; rerun to evaluate it" in output and "stopped: steps 1-6 of 6" in output
    monkeypatch.setattr(train_module.Run, "evaluate", evaluate)
    rows = train(config, tmp_path)
    assert [(row["step"], "val_loss" in row) for row in rows] == [(6, True)]
    output = capsys.readouterr().out
    assert "resuming from step 6 in" in output and "already at max_steps=6\n" in output and "nothing to do" not in output
    assert "evaluating step 6 first: metrics.jsonl holds no evaluation of it" in output
    assert "done: step 6's evaluation in " in output and " at step 6, best " in output  # the closing lines
    rows = train(config, tmp_path)  # evaluated: now there is nothing to do
    assert rows == [] and "already at max_steps=6, nothing to do" in capsys.readouterr().out


def test_a_second_ctrl_c_during_setup_exits_130_at_once(shakespeare_bytes, tmp_path):
    """The second Ctrl-C raises KeyboardInterrupt at once, maybe while XLA compiles on its threads: the
    interpreter's teardown then segfaulted (rc -11, 4 tries in 4); the CLI now leaves without it."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # the quickstart's one device
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}",
         f"--workdir={tmp_path / 'run'}", f"--config.data_dir={shakespeare_bytes}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    while "params |" not in (line := process.stdout.readline()):  # the run's banner: compiling comes next
        assert line, process.communicate()[1]
    time.sleep(0.5)  # into the compilation
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    # 130, or killed by the SIGINT itself (a shell says 130 for both) when it comes as the interpreter ends
    assert process.returncode in (130, -signal.SIGINT) and stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert not (tmp_path / "run").exists()  # a start that trained nothing leaves nothing


def test_a_second_ctrl_c_whose_keyboard_interrupt_was_lost_is_raised_after_the_step():
    """Raised inside a callback of jaxlib's (a compile's), Python prints a KeyboardInterrupt and goes on: the run
    then trained on, saved and said it stopped for the first Ctrl-C, leaving a workdir (seen under load)."""
    from gpt2_jax.agreed_stop import AgreedStop
    from gpt2_jax.interrupt import StopSignals
    from gpt2_jax.sharding import make_mesh

    with StopSignals(signal.SIGINT) as signals:
        stop = AgreedStop(signals, make_mesh())
        signal.raise_signal(signal.SIGINT)  # the first: a flag, looked at after each step
        assert stop.poll() == "SIGINT"
        try:
            signal.raise_signal(signal.SIGINT)  # the second: KeyboardInterrupt at once...
        except KeyboardInterrupt:
            pass  # ...lost
        with pytest.raises(KeyboardInterrupt):
            stop.poll()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_signal_after_the_last_step_changes_nothing(shakespeare_bytes, tmp_path, monkeypatch, capsys):
    """The run is finished: no Stopped (the CLI exits 0, a scheduler does not rerun it), no "rerun" advice. And
    a rerun of a finished run (one killed after its last save, before drawing its curves) draws them."""
    import gpt2_jax.train as train_module

    close = train_module.console.close

    def sigterm_while_closing(*args, **kwargs):  # after the last step and its save, before train() returns
        os.kill(os.getpid(), signal.SIGTERM)
        return close(*args, **kwargs)

    monkeypatch.setattr(train_module.console, "close", sigterm_while_closing)
    config = tiny_run_config(shakespeare_bytes, max_steps=6, eval_every=0)
    rows = train(config, tmp_path)
    assert rows[-1]["step"] == 6 and "rerun the same command" not in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(train_module.console, "close", close)
    (tmp_path / "loss.png").unlink()  # as if killed before drawing: the rerun has nothing to train, and draws
    assert train(config, tmp_path) == [] and (tmp_path / "loss.png").stat().st_size > 0
    output = capsys.readouterr().out
    assert "already at max_steps=6, nothing to do" in output and "done:" not in output


def test_a_workdir_of_another_model_is_refused(shakespeare_bytes, tmp_path):
    c = tiny_run_config(shakespeare_bytes)  # the config.json a run of this config writes
    GPT2Config(vocab_size=257, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
               bos_token_id=256, eos_token_id=256).to_json(tmp_path / "config.json")
    flags = config_flags_of(tiny_run_config(shakespeare_bytes, n_embd=64))
    assert_one_line_error(run_cli("--config=configs/shakespeare_byte.py", f"--workdir={tmp_path}", *flags),
                          "holds a run of another model")


def test_a_workdir_samples_and_exports_to_transformers(shakespeare_bytes, tmp_path):
    import torch
    import transformers

    from gpt2_jax.loading import load_model
    from gpt2_jax.model import GPT2

    train(tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=0, vocab_pad_multiple=64), tmp_path / "run")
    sample = subprocess.run([sys.executable, "-m", "gpt2_jax.sample", "--model", str(tmp_path / "run"), "--prompt",
                             "ROMEO:", "--max-new-tokens", "40", "--greedy"], capture_output=True, text=True)
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:") and sample.stderr == "", sample.stderr
    export = subprocess.run([sys.executable, "-m", "gpt2_jax.convert", "--to-hf", str(tmp_path / "run"), "--out",
                             str(tmp_path / "hf")], capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    loaded = load_model(str(tmp_path / "run"))  # the padded embedding (320 rows) is cut to 257
    ids = np.random.RandomState(0).randint(0, 257, (2, 32))
    ours = np.asarray(GPT2(loaded.config).apply({"params": loaded.params}, ids))
    with torch.no_grad():
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_quickstart_config_finishes_beside_a_busy_process(shakespeare_bytes, tmp_path):
    """The quickstart's own settings (one CPU device) with a CPU hog on the machine, evaluations included.

    Two CPU devices in one process aborted here (an XLA:CPU all-reduce that waited 40 s) on
    every such run; one device has no collectives to wait for.
    """
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # no fake devices
        result = subprocess.run(
            [sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}",
             f"--workdir={tmp_path}", f"--config.data_dir={shakespeare_bytes}", "--config.max_steps=300",
             "--config.warmup_steps=30", "--config.eval_every=100"],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 cpu devices" in result.stdout and "step 300/300 | val loss" in result.stdout
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [100, 200, 300]


@pytest.mark.parametrize("ignored", [False, True], ids=["hangup", "nohup"])
def test_a_hangup_saves_and_stops_unless_it_is_ignored(shakespeare_bytes, tmp_path, monkeypatch, ignored):
    """An ssh session that drops sends SIGHUP: the run saves and stops, as for SIGTERM (it ended unsaved). Under
    `nohup` (SIGHUP ignored), and for any signal its starter ignored, the run keeps it ignored and goes on."""
    import gpt2_jax.train as train_module

    write = train_module.Run.write

    def hangup_at_step_3(self, step, row, *args, **kwargs):
        write(self, step, row, *args, **kwargs)
        if step == 3:
            os.kill(os.getpid(), signal.SIGHUP)

    def unheard(signum, frame):  # a handler of the test's own: a hangup that the run did not take is seen here
        pass

    monkeypatch.setattr(train_module.Run, "write", hangup_at_step_3)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else unheard)
    try:
        config = tiny_run_config(shakespeare_bytes, max_steps=6, eval_every=0)
        if ignored:
            assert train(config, tmp_path)[-1]["step"] == 6
        else:
            with pytest.raises(train_module.Stopped) as stopped:
                train(config, tmp_path)
            saved = [int(path.name) for path in (tmp_path / "checkpoints").iterdir()]
            assert stopped.value.signum == signal.SIGHUP and len(saved) == 1 and 3 <= saved[0] < 6, saved
        assert signal.getsignal(signal.SIGHUP) is (signal.SIG_IGN if ignored else unheard)
    finally:
        signal.signal(signal.SIGHUP, previous)


def config_file(path: Path, config) -> Path:
    """`config` as a --config file: a CLI run in this process takes no --config.KEY flags (absl defines them from
    the command line the process started with)."""
    path.write_text("from gpt2_jax.train_config import default_config\n\n\ndef get_config():\n"
                    f"    c = default_config()\n    c.update({config.to_dict()!r})\n    return c\n")
    return path


class FullDisk:
    """A standard output on a full disk (`> train.log`)."""

    def write(self, text):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass


def test_a_run_whose_console_cannot_be_written_goes_on_without_it(shakespeare_bytes, tmp_path, capsys):
    """Its record is the workdir: it trained to the end (before, a traceback at the next row, steps unsaved)."""
    import contextlib

    from gpt2_jax.train import main

    config = config_file(tmp_path / "tiny.py", tiny_run_config(shakespeare_bytes, max_steps=6, eval_every=0))
    with contextlib.redirect_stdout(FullDisk()):
        main(["train", f"--config={config}", f"--workdir={tmp_path / 'run'}"])
    assert read_metrics(tmp_path / "run")[-1]["step"] == 6 and (tmp_path / "run" / "checkpoints" / "6").is_dir()
    assert capsys.readouterr().err.count("cannot write to standard output (No space left on device); going on") == 1


def test_run_files_it_cannot_write_are_one_line_or_a_warning(shakespeare_bytes, tmp_path):
    """tensorboard/ that is a file: one line before it trains on; loss.png that is a folder: the run is saved and
    its metrics written, so a warning (both were tracebacks)."""
    from gpt2_jax.train import main

    config = config_file(tmp_path / "tiny.py", tiny_run_config(shakespeare_bytes, max_steps=6, eval_every=0))
    flags = [f"--config={config}"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tensorboard").write_text("not a folder")
    assert_one_line_error(run_main(main, "train", f"--workdir={tmp_path / 'a'}", *flags),
                          f"cannot write {tmp_path / 'a' / 'tensorboard'}: ")
    (tmp_path / "b" / "loss.png").mkdir(parents=True)
    result = run_main(main, "train", f"--workdir={tmp_path / 'b'}", *flags)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"warning: cannot write {tmp_path / 'b' / 'loss.png'}: Is a directory" in result.stderr
