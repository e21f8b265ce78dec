"""Time to quality: `python -m gpt2_jax.train` against transformers' PyTorch GPT-2, same recipe.

First (untimed) writes what both runs start from: the initial weights that gpt2_jax's run
will draw from its seed (as an HF directory, for the PyTorch run) and every train window in
the order gpt2_jax's grain pipeline will read them, plus the validation windows. Then runs,
one after the other, two whole processes:
    python -m gpt2_jax.train --config=CONFIG --workdir=<temporary>
    python scripts/torch_reference_train.py --config CONFIG --init ... --train-windows ...
and timestamps every `val loss` line each prints from the moment its process starts. Both
compute the same function on the same data, so their losses agree closely and the
difference is speed. The target is the validation loss the PyTorch run ends with.

    python scripts/bench_time_to_quality.py --config configs/shakespeare_byte.py
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import data, shards, to_hf, train_config
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.model import GPT2
from gpt2_jax.train_flags import parse_flags

ROOT = Path(__file__).resolve().parent.parent


def write_shared_inputs(config, out_dir: Path) -> list[str]:
    """The initial weights and the windows both runs use; returns the reference script's arguments."""
    meta = shards.read_meta(config.data_dir)
    model_config = train_config.model_config(config, meta["vocab_size"], meta["eot_token"])
    model = GPT2(model_config, vocab_pad_multiple=config.vocab_pad_multiple)
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, 1), jnp.int32))["params"]  # as train.py draws them
    to_hf(model_config, params, out_dir / "init")
    batch = train_config.accumulation_steps(config) * config.batch_size
    iterator = data.train_iterator(config.data_dir, config.block_size, batch, config.seed)
    np.save(out_dir / "train.npy", np.stack([next(iterator) for _ in range(config.max_steps)]))
    val = data.WindowSource(config.data_dir, "val", config.block_size)
    windows = np.stack([val[i] for i in range(min(len(val), config.eval_batches * config.batch_size or len(val)))])
    np.savez(out_dir / "val.npz", windows=windows, weights=np.ones(len(windows), np.float32))
    return ["--init", str(out_dir / "init"), "--train-windows", str(out_dir / "train.npy"),
            "--val-windows", str(out_dir / "val.npz")]


def timed_run(command: list[str]):
    """{step: (seconds since the process started, val loss)} and the process's total seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    evaluations, output = {}, []
    for line in process.stdout:
        output.append(line)
        if "| val loss " in line:
            step = int(line.split("|")[0].split()[1].split("/")[0])  # `step 250/2000 |` or `step    250 |`
            evaluations[step] = (time.perf_counter() - start, float(line.split("val loss ")[1].split()[0]))
    if process.wait():
        sys.exit("".join(output[-20:]))
    return evaluations, time.perf_counter() - start


@exit_on_user_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shakespeare_byte.py")
    args = parser.parse_args()
    config, _ = parse_flags(["bench", f"--config={args.config}", "--workdir=unused"])
    with tempfile.TemporaryDirectory() as scratch:
        reference_args = write_shared_inputs(config, Path(scratch))
        ours, ours_total = timed_run([sys.executable, "-m", "gpt2_jax.train", f"--config={args.config}",
                                      f"--workdir={Path(scratch) / 'run'}"])
        theirs, theirs_total = timed_run([sys.executable, "scripts/torch_reference_train.py", "--config", args.config,
                                          *reference_args])
    target = theirs[max(theirs)][1]
    print(f"# {args.config}: {config.max_steps} steps, evaluations every {config.eval_every}; "
          f"{platform.machine()}, {os.cpu_count()} cores; target: val loss {target:.4f} (PyTorch's last)")
    print("| step | gpt2_jax val loss | at (s) | transformers val loss | at (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for step in sorted(theirs):
        print(f"| {step} | {ours[step][1]:.4f} | {ours[step][0]:.1f} | {theirs[step][1]:.4f} | {theirs[step][0]:.1f} |")
    print(f"| whole process | | {ours_total:.1f} | | {theirs_total:.1f} |")
    ours_time, theirs_time = (next((run[s][0] for s in sorted(run) if run[s][1] <= target), None)
                              for run in (ours, theirs))
    if ours_time is None:
        print(f"gpt2_jax never reached {target:.4f}")
    else:
        print(f"time to val loss {target:.4f}: gpt2_jax {ours_time:.1f} s, transformers {theirs_time:.1f} s: "
              f"{theirs_time / ours_time:.2f}x faster (whole process {theirs_total / ours_total:.2f}x)")


if __name__ == "__main__":
    main()
