"""Evaluator: val loss and bits per byte, and HellaSwag, of one model's params on a mesh.

One evaluator, three callers: the training run's evaluations (train_eval.py, on the training
mesh, its params sharded there), `python -m gpt2_jax.evaluate` and report.py (params replicated
on every device). Each task compiles once per shape, beside the train step (never recompiling it):
val loss once, HellaSwag once per padded shape (a handful).
"""

from __future__ import annotations

import functools

import jax
from tqdm import tqdm

from gpt2_jax import hellaswag
from gpt2_jax.data import TextWindows, WindowSource
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import Tokenizer
from gpt2_jax.validation import LossEvaluator


class Evaluator:
    """val loss and bits per byte over `val`'s first `val_windows` windows (0: all), and HellaSwag over
    `examples`, of one model on a mesh: built once (each task compiled once for its shapes), called with params."""

    def __init__(self, model: GPT2, mesh: jax.sharding.Mesh, tokenizer: Tokenizer, batch_size: int,
                 val: WindowSource | TextWindows | None = None, val_windows: int = 0,
                 examples: list[hellaswag.Example] = ()):
        self.tokenizer, self.val, self.val_windows, self.examples = tokenizer, val, val_windows, examples
        # A batch never holds more than there is to score: `--batch-size 100000000` is the whole set at once.
        if val is not None:
            windows = min(len(val), val_windows or len(val))
            self.loss = LossEvaluator(model, mesh, max(1, min(batch_size, windows)), tokenizer)
        else:
            self.loss = None
        self.scorer = hellaswag.HellaSwagScorer(model, mesh, min(batch_size, len(examples))) if examples else None

    def __call__(self, params, progress: str = "", stop=None) -> dict:
        """{"val_loss": {"loss", "bpb", "tokens", "bytes"}, "hellaswag": {"acc", "acc_norm", "n"}}, of the tasks
        it was given; `progress`, if given, labels a progress bar for each. `stop()`, if given, is asked before
        each batch: True raises EvaluationStopped (a stop signal that should not wait for the whole evaluation)."""
        def bar(task):
            shown = functools.partial(tqdm, desc=f"{task} {progress}", unit="batch", leave=False) if progress else None
            if stop is None:
                return shown
            return lambda batches, **options: _until(stop, shown(batches, **options) if shown else batches)

        results = {}
        if self.loss:
            results["val_loss"] = self.loss.evaluate(params, self.val, self.val_windows, bar("val_loss"))
        if self.scorer:
            scores = self.scorer.score(params, self.examples, self.tokenizer, bar("hellaswag"))
            results["hellaswag"] = {key: scores[key] for key in ("acc", "acc_norm", "n")}
        return results


class EvaluationStopped(Exception):
    """An evaluation given up between batches because its `stop()` said so."""


def _until(stop, batches):
    for batch in batches:
        if stop():
            raise EvaluationStopped
        yield batch
