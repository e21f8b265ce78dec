"""The train CLI on random GPT-2 BPE tokens for a few steps, as a user runs it: what its metrics.jsonl logged.

Shared by bench_train.py (--cli-steps: the number users see, against the bench's) and bench_variants.py
(--memory-configs: each config's peak device memory with its own batch, remat and FSDP settings). Starts no
JAX in this process: the run is a process of its own.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gpt2_jax import shards  # noqa: E402
from gpt2_jax.prepare import split_segments  # noqa: E402


def train_cli_run(n_steps: int, overrides=(), config: str = "configs/gpt2_124m.py", timeout: float | None = None):
    """`python -m gpt2_jax.train --config=CONFIG` for n_steps on random tokens, with --config.KEY=VALUE `overrides`
    (a batch_size among them, or the config's own): ({"tokens_per_sec", "mfu": medians of the logged rows,
    "peak_memory_gib": the most logged, None on a CPU}, its console's first and last lines), or (None, the end of
    its output) if it failed or ran past `timeout` seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        data_dir, workdir = Path(scratch) / "data", Path(scratch) / "run"
        data_dir.mkdir()
        total = (n_steps + 2) * 2**19 + 10_000_000
        entry = shards.write_shard(data_dir, 0, [np.random.default_rng(0).integers(0, 50256, total)])
        shards.write_meta(data_dir, {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256, "complete": True,
                                     "shards": [entry], "splits": {k: [vars(s) for s in v] for k, v in
                                                                   split_segments([entry], 2**20).items()}})
        command = [sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / config}", f"--workdir={workdir}",
                   f"--config.data_dir={data_dir}", f"--config.max_steps={n_steps}",
                   f"--config.warmup_steps={min(2, n_steps - 1)}", "--config.log_every=5", "--config.eval_every=0",
                   "--config.checkpoint_every=1000000", "--config.hellaswag=", *overrides]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        if result.returncode:
            return None, (result.stdout + result.stderr)[-3000:]
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    timed = [row for row in rows if "tokens_per_sec" in row]
    memory = [row["peak_memory_gib"] for row in rows if "peak_memory_gib" in row]
    logged = {"tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in timed) if timed else None,
              "mfu": statistics.median(r.get("mfu", 0) for r in timed) if timed else None,
              "peak_memory_gib": max(memory) if memory else None}
    return logged, result.stdout.splitlines()[:1] + result.stdout.splitlines()[-3:]
