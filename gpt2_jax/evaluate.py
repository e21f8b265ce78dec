"""Evaluation: validation loss over prepared shards and HellaSwag, in training and from the CLI.

    python -m gpt2_jax.evaluate --model gpt2 --model runs/gpt2_124m --tasks val_loss,hellaswag \
        --data-dir data/fineweb_edu_10b --hellaswag official [--limit N] [--out eval.json]

Each --model is a hub name, an HF directory, a params directory or a training workdir. Each
evaluation is compiled for its own shapes, once, beside the train step (never recompiling it),
and reads the params where they are: sharded over the training mesh, or replicated here.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from gpt2_jax import hellaswag, shards, sharding, step
from gpt2_jax.data import WindowSource, eval_batches
from gpt2_jax.errors import UserError, exit_on_user_error
from gpt2_jax.loading import load_model
from gpt2_jax.model import GPT2
from gpt2_jax.sampling import generate
from gpt2_jax.tokenizer import Tokenizer

TASKS = ("val_loss", "hellaswag")


class LossEvaluator:
    """Mean next-token loss of a model over windows, batched and split over the mesh's devices."""

    def __init__(self, model: GPT2, mesh: jax.sharding.Mesh, batch_size: int):
        self.batch_size = -(-batch_size // mesh.size) * mesh.size  # padded rows carry weight 0
        self.windows_sharding = sharding.batch_sharding(mesh)
        self.accumulate = jax.jit(functools.partial(_accumulate_losses, model))

    def mean_loss(self, params, source: WindowSource, max_windows: int = 0, progress=None) -> float:
        """Loss per token over the first `max_windows` windows of `source` (0: all of them)."""
        process, processes = jax.process_index(), jax.process_count()
        batches = eval_batches(source, self.batch_size // processes, max_windows, process, processes)
        totals = (np.float32(0), np.float32(0))  # (loss sum, token count), kept on the devices
        for windows_BxL, weights_B in batches if progress is None else progress(batches):
            windows = jax.make_array_from_process_local_data(self.windows_sharding, windows_BxL)
            weights = jax.make_array_from_process_local_data(self.windows_sharding, weights_B)
            totals = self.accumulate(totals, params, windows, weights)
        loss_sum, tokens = jax.block_until_ready(totals)  # every device done (see train.py)
        return float(np.asarray(loss_sum) / np.asarray(tokens))


def _accumulate_losses(model: GPT2, totals, params, windows_BxL, weights_B):
    """totals + this batch's (loss sum, token count). Each batch depends on the one before: on a CPU
    host, independent programs with collectives can run out of order on different devices and deadlock."""
    batch_loss, batch_tokens = step.eval_step(model, params, windows_BxL, weights_B)
    return totals[0] + batch_loss, totals[1] + batch_tokens


class TrainingEvaluation:
    """What the train loop runs every eval_every steps: val loss, HellaSwag if configured, samples."""

    def __init__(self, config, model: GPT2, mesh: jax.sharding.Mesh, tokenizer: Tokenizer):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.loss = LossEvaluator(model, mesh, config.batch_size)
        self.val = WindowSource(config.data_dir, "val", config.block_size)
        self.examples = hellaswag.load_examples(config.hellaswag, config.hellaswag_limit) if config.hellaswag else []
        self.scorer = hellaswag.HellaSwagScorer(model, mesh, config.batch_size) if self.examples else None
        self.prompt = None
        if config.num_samples:
            prompt = np.tile(tokenizer.encode(config.sample_prompt), (config.num_samples, 1))
            self.prompt = jax.device_put(prompt, NamedSharding(mesh, P()))

    def __call__(self, params) -> tuple[dict, list[str]]:
        """({"val_loss", "hellaswag_acc", "hellaswag_acc_norm"}, sample texts)."""
        row = {"val_loss": self.loss.mean_loss(params, self.val, self.config.eval_batches * self.config.batch_size)}
        if self.scorer:
            scores = self.scorer.score(params, self.examples, self.tokenizer)
            row.update(hellaswag_acc=scores["acc"], hellaswag_acc_norm=scores["acc_norm"])
        samples = []
        if self.config.num_samples:
            tokens = generate(self.model.config, params, self.prompt, self.config.sample_tokens, top_k=50,
                              rng=jax.random.key(self.config.seed), model=self.model)
            tokens = np.asarray(jax.block_until_ready(tokens))  # every device done (see train.py)
            samples = [self.tokenizer.decode(row_tokens) for row_tokens in tokens.tolist()]
        return row, samples


def load_replicated(reference: str):
    """(loaded model, GPT2, mesh over all local devices, params replicated on it) for a model reference."""
    loaded = load_model(reference)
    mesh = sharding.make_mesh(1)
    return loaded, GPT2(loaded.config), mesh, jax.device_put(loaded.params, NamedSharding(mesh, P()))


def evaluate_model(reference: str, tasks: list[str], data_dir: str | None, hellaswag_path: str | None,
                   limit: int = 0, batch_size: int = 8) -> dict:
    """{task: {"loss"} or {"acc", "acc_norm", "n"}} for one model reference, on all local devices."""
    loaded, model, mesh, params = load_replicated(reference)
    results = {}
    if "val_loss" in tasks:
        meta = shards.read_meta(data_dir)
        if meta["tokenizer"] != loaded.tokenizer.name:
            raise UserError(f"{reference} uses {loaded.tokenizer.name} tokens but {data_dir} holds "
                            f"{meta['tokenizer']} tokens: val_loss needs the same tokenizer")
        source = WindowSource(data_dir, "val", loaded.config.n_positions)
        progress = functools.partial(tqdm, desc=f"val_loss {reference}", unit="batch", leave=False)
        loss = LossEvaluator(model, mesh, batch_size).mean_loss(params, source, limit, progress)
        results["val_loss"] = {"loss": loss}
    if "hellaswag" in tasks:
        examples = hellaswag.load_examples(hellaswag_path, limit)
        progress = functools.partial(tqdm, desc=f"hellaswag {reference}", unit="batch", leave=False)
        scorer = hellaswag.HellaSwagScorer(model, mesh, batch_size)
        scores = scorer.score(params, examples, loaded.tokenizer, progress)
        results["hellaswag"] = {key: scores[key] for key in ("acc", "acc_norm", "n")}
    return results


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="repeat to compare several models")
    parser.add_argument("--tasks", default="val_loss,hellaswag", help=f"comma-separated, from {TASKS}")
    parser.add_argument("--data-dir", help="prepared data whose val split val_loss reads")
    parser.add_argument("--hellaswag", default="official", help="hellaswag_val.jsonl, or `official` to download it")
    parser.add_argument("--limit", type=int, default=0, help="val windows / HellaSwag examples per task (0: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if set(tasks) - set(TASKS) or ("val_loss" in tasks and not args.data_dir):
        raise UserError(f"--tasks takes {','.join(TASKS)}; val_loss needs --data-dir")
    if args.batch_size < 1 or args.limit < 0:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1 and --limit {args.limit} >= 0 (0: all)")
    if args.out and (Path(args.out).is_dir() or not os.access(Path(args.out).absolute().parent, os.W_OK)):
        raise UserError(f"--out {args.out}: a directory, or in a directory that is missing or read-only; "
                        "give a file to write (checked before evaluating)")
    results = {model: evaluate_model(model, tasks, args.data_dir, args.hellaswag, args.limit, args.batch_size)
               for model in args.model}
    headers = {"val_loss": "val loss", "hellaswag": "hellaswag acc | acc_norm | n"}
    print("| model | " + " | ".join(headers[t] for t in tasks) + " |")
    print("| --- |" + " ---: |" * sum(1 if t == "val_loss" else 3 for t in tasks))
    for model, result in results.items():
        cells = [f"{result['val_loss']['loss']:.4f}" if t == "val_loss" else
                 "{acc:.4f} | {acc_norm:.4f} | {n}".format(**result["hellaswag"]) for t in tasks]
        print(f"| {model} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
