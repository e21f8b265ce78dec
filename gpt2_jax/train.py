"""Train GPT-2: `python -m gpt2_jax.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]`.

DIR holds everything a run writes: config.json (the model, HF schema), train_config.json,
checkpoints/, metrics.jsonl, tensorboard/ and loss.png. Rerunning the same command resumes from
the newest readable checkpoint, on the same data order. SIGTERM, Ctrl-C or SIGHUP saves and exits
with 128 + the signal's number (143, 130, 129): a stopped run is not a finished one. With several processes
(distributed=True), a signal to any one of them stops all of them after the same step (agreed_stop.py).
`--config.init_from=REF` fine-tunes a pretrained model instead of starting from GPT-2's init.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from pathlib import Path

import jax
from absl import logging

from gpt2_jax import accelerator, console, data, device_memory, flops, metrics, pretrained, shards, sharding
from gpt2_jax import standard_output, train_config
from gpt2_jax.agreed_stop import AgreedStop
from gpt2_jax.device_errors import (TRAINING_MEMORY_ADVICE, check_state_fits_host, initialize_distributed,
                                    out_of_memory_as_user_error)
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.evaluator import EvaluationStopped
from gpt2_jax.interrupt import StopSignals, Stopped
from gpt2_jax.optim import learning_rate_schedule, make_optimizer
from gpt2_jax.same_run import check_same_data, check_same_settings, check_same_start, process_0s
from gpt2_jax.step import TrainState, init_train_state, train_step
from gpt2_jax.throughput import ThroughputClock
from gpt2_jax.tokenizer import get_tokenizer
from gpt2_jax.train_checkpoints import TrainCheckpoints
from gpt2_jax.train_eval import TrainingEvaluation
from gpt2_jax.train_flags import parse_flags
from gpt2_jax.workdir import check_settings, describe_changes, write_settings
from gpt2_jax.workdir_lock import WorkdirLock


def train(config, workdir: str | Path) -> list[dict]:
    """Train until config.max_steps; returns the metrics rows logged by this call. A stop signal (SIGTERM,
    Ctrl-C) saves, then raises `Stopped` (a KeyboardInterrupt) holding those rows.

    One trainer at a time: the workdir is locked (workdir_lock.py) from before anything in it is read
    or written until this returns. cpu_devices and distributed take effect here, before JAX computes.
    """
    accelerator.split_cpu(config.cpu_devices)
    if config.distributed:
        initialize_distributed()
    lock = WorkdirLock(Path(workdir).absolute())
    try:
        mesh = sharding.make_mesh(config.fsdp)
        # SIGTERM (a preemption) or Ctrl-C: during setup, the run stops before its first step, having written
        # nothing (XLA is never interrupted mid-compile); later, it saves, then stops. Handlers given back after.
        # Several processes ignore a second signal: one that stopped at once would leave the others waiting.
        signals = StopSignals(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, repeats_ignored=jax.process_count() > 1)
        with jax.set_mesh(mesh), signals, out_of_memory_as_user_error(TRAINING_MEMORY_ADVICE):  # mesh: Pallas attention
            run = Run(config, lock, mesh, AgreedStop(signals, mesh))  # several processes stop together
            rows = run.loop()
    finally:
        lock.release()
    if run.stopped_by:  # after the save and the lock's release: the run did not finish, say so
        raise Stopped(signal.Signals[run.stopped_by], rows)
    return rows  # a signal after the last step (during the final save or plot) changes nothing


class Run:
    """One call's training: built once (model, compiled step, data, state), then `loop()`."""

    def __init__(self, config, lock: WorkdirLock, mesh, stop: AgreedStop):
        c, self.config, self.process, self.stop = config, config, jax.process_index(), stop
        check_same_settings(c)  # several processes: the same settings, then the same data, on each
        train_config.validate(c, jax.device_count(), jax.process_count(), jax.default_backend())
        meta, self.workdir = shards.read_meta(c.data_dir), lock.workdir
        check_same_data(c, meta)
        if self.process == 0:
            lock.acquire()
        model_config = (pretrained.model_config(c, meta, self.workdir) if c.init_from  # a resume reads config.json
                        else train_config.model_config(c, meta["vocab_size"], meta["eot_token"]))
        changed = check_settings(self.workdir, model_config, c, meta, jax.process_count(), process_0s)

        model, kernels = train_config.make_model(c, model_config)
        optimizer = make_optimizer(c)
        init = functools.partial(init_train_state, model, optimizer)
        abstract = jax.eval_shape(init, jax.random.key(c.seed))
        state_sharding = sharding.tree_shardings(mesh, abstract)
        check_state_fits_host(abstract, state_sharding)  # CPU devices: before the host's OOM killer can end the run
        self.windows_sharding = sharding.batch_sharding(mesh, leading_dims=1)  # [accumulation, batch, time]
        self.step_fn = jax.jit(functools.partial(train_step, model, optimizer), donate_argnums=0,
                               in_shardings=(state_sharding, self.windows_sharding), out_shardings=(state_sharding, None))
        self.accumulation = train_config.accumulation_steps(c)
        self.local_batch = c.batch_size // jax.process_count()
        self.data = data.train_iterator(c.data_dir, c.block_size, self.accumulation * self.local_batch, c.seed,
                                        self.process, jax.process_count())
        self.evaluation = TrainingEvaluation(c, model, mesh, get_tokenizer(meta["tokenizer"])) if c.eval_every else None
        print(console.banner(sum(x.size for x in jax.tree.leaves(abstract.params)), c, self.accumulation, mesh,
                             meta["tokenizer"], kernels))  # before a restore's words
        self.checkpoints = TrainCheckpoints(self.workdir, c.keep_checkpoints)
        target = sharding.with_shardings(abstract, state_sharding)
        restored = self.checkpoints.restore_train_state(target.params, target.opt_state, self.data)
        check_same_start(restored[0] if restored else 0)
        if restored:
            self.start, params, opt_state = restored
            self.state, origin = TrainState(params, opt_state), f"resuming from step {self.start}"
        elif c.init_from:  # fine-tuning: the pretrained params, a fresh optimizer
            params = pretrained.initial_params(c.init_from, model_config, abstract.params)
            self.start, origin = 0, f"fine-tuning {c.init_from}"
            self.state = jax.jit(lambda p: TrainState(p, optimizer.init(p)), out_shardings=state_sharding)(params)
        else:
            self.start, origin = 0, "training from scratch"
            self.state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(c.seed))
        self.model_config, self.meta = model_config, meta  # written to the workdir once the first step has run (loop)
        self.writer = metrics.MetricsWriter(self.workdir, self.start, enabled=self.process == 0)
        # The step resumed from is one the run evaluates, with no row of it (a stop cut it short): that one first.
        self.evaluate_first = bool(restored and self.evaluation and self.evaluation.due(self.start)) and \
            process_0s(self.start not in self.writer.evaluated)
        done = f": already at max_steps={c.max_steps}" + ", nothing to do" * (not self.evaluate_first)
        print(f"{origin} in {self.workdir}{done if self.start >= c.max_steps else ''}")
        if restored and changed and self.start < c.max_steps:  # init_from is read only at a first start
            print(describe_changes(c, changed, self.start))

        self.schedule = learning_rate_schedule(c)
        self.peak = flops.peak_flops_per_device(c.peak_flops)
        self.flops_per_step = flops.train_flops_per_token(model_config) * c.tokens_per_step
        self.clock, self.logged, self.stopped_by = ThroughputClock(), [], None  # stopped_by: a signal's name
        self.last_good, self.began = (self.start if restored else None), time.perf_counter()

    def loop(self) -> list[dict]:
        """Dispatch each step; log the one before (the device never waits on Python); save; evaluate."""
        c, pending, step = self.config, None, self.start
        try:
            if self.stop.agree_now():
                print(f"{self.stop.signal} before the first step: stopped, nothing trained")
                self.stopped_by = self.stop.signal
                return self.logged
            if self.evaluate_first:
                print(f"evaluating step {self.start} first: metrics.jsonl holds no evaluation of it")
                self.evaluate(self.start)
            for step in range(self.start + 1, c.max_steps + 1) if not self.stopped_by else ():
                self.state, step_metrics = self.step_fn(self.state, self.next_windows())
                self.stop.poll()
                self.checkpoints.check()  # a background save that failed stops the run now
                if pending:
                    self.log_train(*pending, newest=(step, step_metrics))
                if step == self.start + 1:  # the first step compiles: throughput is measured from its end
                    jax.block_until_ready(step_metrics)
                    # Only now: a start that trains nothing (refused, failed, stopped, out of memory) changes nothing.
                    if self.process == 0:
                        write_settings(self.workdir, self.model_config, c, self.meta, jax.process_count())
                        self.writer.begin()
                    self.clock.start(step, step_metrics)
                last = step == c.max_steps
                pending = (step, step_metrics) if step % c.log_every == 0 or last else None
                save = step % c.checkpoint_every == 0 or last or self.stop.signal
                evaluate = self.evaluation and self.evaluation.due(step)
                if save or evaluate:  # never save or evaluate a state whose loss is not finite
                    self.log_train(step, step_metrics, newest=(step, step_metrics), log=bool(pending),
                                   saving=bool(save))
                    pending = None
                if save:
                    self.save(step)
                if evaluate:
                    self.evaluate(step)
                if self.stop.signal and not last:
                    if not save:  # it came during the evaluation, after the save was decided (its loss checked then)
                        self.save(step)
                    self.checkpoints.wait()  # on disk, whole, before it is said to be (the finally would wait too)
                    print(f"{self.stop.signal}: saved step {step} in {self.workdir}; rerun the same command to resume")
                    self.stopped_by = self.stop.signal
                    break
        finally:  # pending checkpoint writes finish, even on an error
            self.checkpoints.close()
            self.writer.close()
        ran = step > self.start or (self.evaluate_first and not self.stopped_by)
        if self.process == 0 and (ran or self.start >= c.max_steps):
            console.close(self.workdir, self.start + 1, step, c.max_steps, time.perf_counter() - self.began,
                          stopped=self.stopped_by is not None, ran=ran)
        return self.logged

    def next_windows(self):
        windows = next(self.data).reshape(self.accumulation, self.local_batch, self.config.block_size + 1)
        return jax.make_array_from_process_local_data(self.windows_sharding, windows)

    def log_train(self, step: int, step_metrics, newest, log: bool = True, saving: bool = False) -> None:
        """Pull a step's metrics (DivergedError if not finite); if `log`, log them with the throughput since
        the last row, measured to the newest dispatched step (the clock waits for it), and whether it is `saving`."""
        values = {name: float(value) for name, value in jax.device_get(step_metrics).items()}
        try:
            metrics.check_finite(step, values, self.last_good)
        except metrics.DivergedError:
            self.checkpoints.wait()  # the last good checkpoint is whole before the run stops
            raise
        if not log:
            return
        row = {"train_loss": values["loss"], "lr": float(self.schedule(step - 1)), "grad_norm": values["grad_norm"],
               "param_norm": values["param_norm"]}
        rate = self.clock.steps_per_second(*newest)
        if rate:
            row["tokens_per_sec"] = rate * self.config.tokens_per_step
            if self.peak:
                row["mfu"] = rate * self.flops_per_step / (self.peak * jax.device_count())
        if (memory := device_memory.peak_gib()) is not None:  # None on CPUs
            row["peak_memory_gib"] = memory
        eta = (self.config.max_steps - step) / rate if rate else None
        self.write(step, row, eta, note=console.SAVING * saving)

    def write(self, step: int, row: dict, eta: float | None = None, note: str = "") -> None:
        print(console.format_row(step, self.config.max_steps, row, time.perf_counter() - self.began, eta, note))
        self.writer.write(step, row)
        self.logged.append({"step": step, **row})

    def save(self, step: int) -> None:
        self.checkpoints.save(step, self.state.params, self.state.opt_state, self.data, force=True)
        self.last_good = step
        last_row = self.logged[-1] if self.logged else {}
        if not (last_row.get("step") == step and "train_loss" in last_row):  # else that row said so
            print(console.format_row(step, self.config.max_steps, {}, time.perf_counter() - self.began, None,
                                     console.SAVING))

    def evaluate(self, step: int) -> None:
        try:  # stop between batches (a preemption's grace is short); several processes agree batch by batch
            row, samples = self.evaluation(self.state.params, stop=lambda: self.stop.poll() is not None)
        except EvaluationStopped:  # a rerun evaluates this step first
            no_save_follows = step in (self.start, self.config.max_steps)  # else the loop saves, and says so
            print(f"{self.stop.signal}: evaluation of step {step} stopped" + "; rerun to evaluate it" * no_save_follows)
            self.stopped_by = self.stop.signal
            return
        self.write(step, row)
        for sample in samples if self.process == 0 else ():
            print(f"> {sample}")
        self.clock.start(step, self.state)  # evaluation is not training throughput


@exit_on_user_error
def main(argv=None):
    config, workdir = parse_flags(sys.argv if argv is None else argv, help_text=__doc__)
    standard_output.make_optional()  # the run's record is its workdir: a console it cannot write is no reason to stop
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    accelerator.set_xla_flags()  # before JAX starts its backends
    train(config, workdir)


if __name__ == "__main__":
    main()
