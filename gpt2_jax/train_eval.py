"""What a training run evaluates every eval_every steps: val loss and bits per byte, HellaSwag if
configured, and a few samples; evaluator.py's Evaluator on the training mesh, params sharded there."""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gpt2_jax import hellaswag
from gpt2_jax.config import ConfigError
from gpt2_jax.data import WindowSource
from gpt2_jax.device_errors import DeviceError, out_of_memory_as_user_error
from gpt2_jax.evaluator import Evaluator
from gpt2_jax.model import GPT2
from gpt2_jax.sampling import MAX_NEW_TOKENS, generate
from gpt2_jax.tokenizer import Tokenizer


class TrainingEvaluation:
    """What the train loop runs every eval_every steps: val loss, HellaSwag if configured, samples."""

    def __init__(self, config, model: GPT2, mesh: jax.sharding.Mesh, tokenizer: Tokenizer):
        """ConfigError if the sample prompt cannot be sampled: refused before the first step, not at the first
        evaluation."""
        self.config, self.model, self.tokenizer = config, model, tokenizer
        try:
            prompt_ids = tokenizer.encode(config.sample_prompt) if config.num_samples else []
        except UnicodeEncodeError as error:  # bytes that are not UTF-8 arrive as lone surrogates
            raise ConfigError(f"sample_prompt is not valid UTF-8 (at character {error.start})") from None
        if len(prompt_ids) > config.block_size:
            raise ConfigError(f"sample_prompt is {len(prompt_ids)} tokens, longer than the context (block_size="
                              f"{config.block_size}); shorten it, or set num_samples=0")
        if config.num_samples and config.sample_tokens > MAX_NEW_TOKENS:
            raise ConfigError(f"sample_tokens={config.sample_tokens} must be at most {MAX_NEW_TOKENS:,}")
        examples = hellaswag.load_examples(config.hellaswag, config.hellaswag_limit) if config.hellaswag else ()
        self.evaluator = Evaluator(model, mesh, tokenizer, config.batch_size,
                                  WindowSource(config.data_dir, "val", config.block_size),
                                  config.eval_batches * config.batch_size, examples)
        self.prompt = None
        if config.num_samples:
            prompt = np.tile(prompt_ids, (config.num_samples, 1))
            self.prompt = jax.device_put(prompt, NamedSharding(mesh, P()))

    def due(self, step: int) -> bool:
        """Whether the run evaluates `step`: every eval_every steps, and the last."""
        return step % self.config.eval_every == 0 or step == self.config.max_steps

    def __call__(self, params, stop=None) -> tuple[dict, list[str]]:
        """({"val_loss", "val_bpb", "hellaswag_acc", "hellaswag_acc_norm"}, sample texts); val_bpb is over
        val_loss's windows, the bytes of their target tokens. `stop()`: see Evaluator."""
        # Every device finishes the step before the evaluation's programs start: CPU devices share one
        # thread pool, and programs with collectives that overlap on it can deadlock.
        jax.block_until_ready(params)
        results = self.evaluator(params, stop=stop)
        row = {"val_loss": results["val_loss"]["loss"], "val_bpb": results["val_loss"]["bpb"]}
        if "hellaswag" in results:
            row.update(hellaswag_acc=results["hellaswag"]["acc"], hellaswag_acc_norm=results["hellaswag"]["acc_norm"])
        return row, self.samples(params) if self.prompt is not None else []

    def samples(self, params) -> list[str]:
        """num_samples texts after sample_prompt. Out of memory, none, now and for the rest of the run (samples
        only show how training goes: losing the run to them, maybe before its first checkpoint, would be worse);
        in a run of several processes, which must all sample or none, the run stops in one line."""
        try:
            with out_of_memory_as_user_error("lower num_samples or sample_tokens"):
                tokens = generate(self.model, params, self.prompt, self.config.sample_tokens, top_k=50,
                                  rng=jax.random.key(self.config.seed))
                tokens = np.asarray(jax.block_until_ready(tokens))  # every device done (why: __call__)
        except DeviceError as error:
            if jax.process_count() > 1:  # one process alone out of sampling would leave the others waiting in it
                raise
            print(f"warning: no samples from now on in this run: {error}", file=sys.stderr)
            self.prompt = None
            return []
        return [self.tokenizer.decode(row_tokens) for row_tokens in tokens.tolist()]
