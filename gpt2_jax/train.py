"""Train GPT-2: `python -m gpt2_jax.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]`.

DIR holds everything a run writes: config.json (the model, HF schema), train_config.json,
checkpoints/, metrics.jsonl and tensorboard/. Rerunning the same command resumes from the
newest readable checkpoint, on the same data order. SIGTERM or Ctrl-C saves and exits.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import flags, logging
from ml_collections import config_flags

from gpt2_jax import accelerator, data, shards, sharding, train_config
from gpt2_jax.checkpoint import TrainCheckpoints
from gpt2_jax.errors import UserError, exit_on_user_error
from gpt2_jax.evaluate import TrainingEvaluation
from gpt2_jax.metrics import MetricsWriter, ThroughputClock, peak_flops_per_device, train_flops_per_token
from gpt2_jax.model import GPT2
from gpt2_jax.optim import learning_rate_schedule, make_optimizer
from gpt2_jax.step import TrainState, init_train_state, train_step
from gpt2_jax.tokenizer import get_tokenizer
from gpt2_jax.workdir import WorkdirLock, check_settings, write_settings

config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the run's config")


COLUMNS = {"train_loss": ("loss", ".4f"), "lr": ("lr", ".2e"), "grad_norm": ("grad norm", ".3f"),
           "param_norm": ("param norm", ".1f"),
           "tokens_per_sec": ("tok/s", ",.0f"), "mfu": ("mfu", ".1%"), "val_loss": ("val loss", ".4f"),
           "val_bpb": ("val bpb", ".4f"),
           "hellaswag_acc": ("hellaswag acc", ".4f"), "hellaswag_acc_norm": ("acc_norm", ".4f")}


def format_row(step: int, row: dict) -> str:
    """`step    100 | loss 2.6533 | lr 9.90e-04 | ...` for the console."""
    cells = []
    for name, value in row.items():
        label, spec = COLUMNS.get(name, (name, ".4f"))
        cells.append(f"{label} {value:{spec}}")
    return f"step {step:6d} | " + " | ".join(cells)


class TrainingError(UserError):
    """A run that cannot go on: a diverged loss, or a workdir that holds another model."""


class StopRequest:
    """Remembers a SIGTERM (preemption) or Ctrl-C, so the loop can save before it exits."""

    def __init__(self):
        self.signal = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request)

    def request(self, signum, frame):
        self.signal = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once


def train(config, workdir: str | Path) -> list[dict]:
    """Train until config.max_steps (or a stop signal); returns the metrics logged by this call.

    One trainer at a time: the workdir is locked (workdir.py) from before anything in it is
    read or written until this returns.
    """
    lock = WorkdirLock(Path(workdir).absolute())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        if config.distributed:
            jax.distributed.initialize()
        mesh = sharding.make_mesh(config.fsdp)
        with jax.set_mesh(mesh):  # Pallas attention splits its kernel over it (attention.py)
            return _train(config, lock, mesh)
    finally:
        lock.release()
        for signum, handler in handlers.items():  # Ctrl-C raises KeyboardInterrupt again after a call from Python
            signal.signal(signum, handler)


def _train(config, lock: WorkdirLock, mesh) -> list[dict]:
    processes, process = jax.process_count(), jax.process_index()
    train_config.validate(config, jax.device_count(), processes, jax.default_backend())
    meta = shards.read_meta(config.data_dir)
    model_config = train_config.model_config(config, meta["vocab_size"], meta["eot_token"])
    workdir = lock.workdir
    if process == 0:
        lock.acquire()
    check_settings(workdir, model_config, config)

    attention = accelerator.attention_impl(config.attention_impl, config.dtype)
    model = GPT2(model_config, dtype=jnp.dtype(config.dtype), vocab_pad_multiple=config.vocab_pad_multiple,
                 attention_impl=attention, remat=config.remat)
    optimizer = make_optimizer(config)
    init = functools.partial(init_train_state, model, optimizer)
    abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    state_sharding = sharding.tree_shardings(mesh, abstract_state)
    windows_sharding = sharding.batch_sharding(mesh, leading_dims=1)  # [accumulation, batch, time]
    compiled_step = jax.jit(functools.partial(train_step, model, optimizer), donate_argnums=0,
                            in_shardings=(state_sharding, windows_sharding), out_shardings=(state_sharding, None))

    accumulation = train_config.accumulation_steps(config)
    local_batch = config.batch_size // processes
    data_iterator = data.train_iterator(config.data_dir, config.block_size, accumulation * local_batch,
                                        config.seed, process, processes)
    checkpoints = TrainCheckpoints(workdir, config.keep_checkpoints)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, state_sharding)
    restored = checkpoints.restore_train_state(target.params, target.opt_state, data_iterator)
    if restored:
        start, params, opt_state = restored
        state = TrainState(params, opt_state)
        print(f"resuming from step {start} in {workdir}"
              + (f": already at max_steps={config.max_steps}, nothing to do" if start >= config.max_steps else ""))
    else:
        start, state = 0, jax.jit(init, out_shardings=state_sharding)(jax.random.key(config.seed))
    if process == 0:  # only now: a refused or failed restore leaves the workdir's files as they were
        write_settings(workdir, model_config, config)

    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    print(f"{n_params / 1e6:.2f}M params | {config.tokens_per_step:,} tokens/step = {accumulation} x "
          f"{config.batch_size} x {config.block_size} | {jax.device_count()} {jax.devices()[0].platform} "
          f"devices, mesh {dict(mesh.shape)} | {meta['tokenizer']} tokens | {attention} attention")
    writer = MetricsWriter(workdir, start, enabled=process == 0)
    tokenizer = get_tokenizer(meta["tokenizer"])
    evaluation = TrainingEvaluation(config, model, mesh, tokenizer) if config.eval_every else None
    schedule = learning_rate_schedule(config)
    peak = peak_flops_per_device(config.peak_flops)
    flops_per_step = train_flops_per_token(model_config) * config.tokens_per_step
    stop, logged, last_good = StopRequest(), [], start if restored else None
    clock = ThroughputClock()

    def next_windows():
        windows = next(data_iterator).reshape(accumulation, local_batch, config.block_size + 1)
        return jax.make_array_from_process_local_data(windows_sharding, windows)

    def pull(step: int, metrics) -> dict:
        """One step's metrics on the host; a non-finite loss stops the run before anything is saved."""
        metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
        if not all(math.isfinite(value) for value in metrics.values()):
            checkpoints.wait()
            saved = f"the last good checkpoint is step {last_good}" if last_good else "no checkpoint was saved"
            raise TrainingError(f"{', '.join(f'{k} {v}' for k, v in metrics.items())} at step {step}: stopped; "
                                f"{saved}. Lower learning_rate and rerun to resume")
        return metrics

    def log(step: int, metrics: dict, finished=None, **row) -> None:
        """Print a row and append it to metrics.jsonl / TensorBoard; `finished` (step, outputs) is the
        newest dispatched step, which the throughput clock waits for."""
        if metrics:
            row = {"train_loss": metrics["loss"], "lr": float(schedule(step - 1)), "grad_norm": metrics["grad_norm"],
                   "param_norm": metrics["param_norm"]}
            rate = clock.steps_per_second(*finished)
            if rate:
                row["tokens_per_sec"] = rate * config.tokens_per_step
                if peak:
                    row["mfu"] = rate * flops_per_step / (peak * jax.device_count())
        print(format_row(step, row))
        writer.write(step, row)
        logged.append({"step": step, **row})

    to_log = None  # (step, metrics on the device), pulled once the next step is queued
    try:
        for step in range(start + 1, config.max_steps + 1):
            state, metrics = compiled_step(state, next_windows())
            checkpoints.check()  # a background save that failed stops the run now
            if to_log:
                log(to_log[0], pull(*to_log), finished=(step, metrics))
                to_log = None
            if step == start + 1:  # the first step compiles: throughput is measured from its end
                clock.start(step, metrics)
            save = step % config.checkpoint_every == 0 or step == config.max_steps or stop.signal
            run_eval = evaluation and (step % config.eval_every == 0 or step == config.max_steps)
            if step % config.log_every == 0 or step == config.max_steps:
                to_log = (step, metrics)
            if save or run_eval:  # never save or evaluate a state whose loss is not finite
                host_metrics = pull(step, metrics)
                if to_log:
                    log(step, host_metrics, finished=(step, metrics))
                    to_log = None
            if save:
                checkpoints.save(step, state.params, state.opt_state, data_iterator, force=True)
                last_good = step
            if run_eval:
                # Every device finishes the step before the evaluation's programs start: CPU devices share
                # one thread pool, and programs with collectives that overlap on it can deadlock.
                jax.block_until_ready(state)
                row, samples = evaluation(state.params)
                log(step, {}, **row)
                for sample in samples if process == 0 else ():
                    print(f"> {sample}")
                clock.start(step, state)  # evaluation is not training throughput
            if stop.signal:
                print(f"{stop.signal}: saved step {step} in {workdir}; rerun the same command to resume")
                break
    finally:  # pending checkpoint writes finish, even on an error
        checkpoints.close()
        writer.close()
    return logged


def parse_flags(argv: list[str]):
    """(config, workdir) from the command line, every mistake a UserError naming the flag."""
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        sys.exit(0)
    known = train_config.default_config().keys()
    for arg in argv[1:]:
        key = arg.removeprefix("--config.").split("=")[0]
        if arg.startswith("--config.") and key not in known:
            raise UserError(f"unknown config key {key!r} in {arg}; the keys are in gpt2_jax/train_config.py")
    try:
        rest = flags.FLAGS(argv)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if config is not None:
            config.keys()  # config_flags defers a load failure to the first use
    except flags.Error as error:
        raise UserError(str(error)) from None
    except OSError as error:  # config_flags reports a config file it cannot load this way
        raise UserError(f"cannot load --config: {str(error).splitlines()[-1].strip()}") from None
    except Exception as error:  # a config file is Python: whatever it raises is the user's to fix, in one line
        if isinstance(error, AttributeError) and "get_config" in str(error):
            raise UserError("cannot load --config: the file defines no get_config()") from None
        raise UserError(f"cannot load --config: {type(error).__name__}: {error}") from None
    if len(rest) > 1 or config is None or workdir is None:
        raise UserError("usage: python -m gpt2_jax.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE]")
    return config, workdir


@exit_on_user_error
def main(argv=None):
    config, workdir = parse_flags(sys.argv if argv is None else argv)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    accelerator.set_xla_flags()  # before JAX starts its backends
    if config.cpu_devices:  # must precede any JAX computation
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)
    train(config, workdir)


if __name__ == "__main__":
    main()
