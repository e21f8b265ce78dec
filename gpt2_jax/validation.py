"""Validation loss and bits per byte of a model over windows (data.py), on the devices of a mesh.

val_loss = nats / target tokens; val_bpb = nats of the targets that are text / (ln 2 x their UTF-8
bytes), each token's bytes from its tokenizer (`Tokenizer.token_bytes`; `<|endoftext|>` has none).
The sums run on the devices in fp32 (counts in int32), batch after batch; before a count could pass int32's
range they are added to the host's (float64, Python ints) and start again, and the totals are divided once.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gpt2_jax import sharding, step
from gpt2_jax.data import TextWindows, WindowSource, eval_batches
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import Tokenizer


class LossEvaluator:
    """Next-token loss and bits per byte of a model over windows, batched and split over the mesh's devices."""

    def __init__(self, model: GPT2, mesh: jax.sharding.Mesh, batch_size: int, tokenizer: Tokenizer):
        self.batch_size = -(-batch_size // mesh.size) * mesh.size  # padded rows hold no target
        self.windows_sharding = sharding.batch_sharding(mesh)
        token_bytes = tokenizer.token_bytes()
        self.token_bytes = jax.device_put(token_bytes, NamedSharding(mesh, P()))
        self.most_bytes_per_token = max(1, int(token_bytes.max()))
        # The sums start where each batch leaves them, replicated on the mesh: one compile, not two.
        self.zeros = jax.device_put((np.float32(0), np.int32(0), np.float32(0), np.int32(0)), NamedSharding(mesh, P()))
        self.accumulate = functools.partial(_compiled_accumulate, model)  # one compile per shape, not per model

    def evaluate(self, params, source: WindowSource | TextWindows, max_windows: int = 0, progress=None) -> dict:
        """{"loss": nats per target token, "bpb": bits per byte of the targets' text, "tokens", "bytes"}
        over the first `max_windows` windows of `source` (0: all of them); `progress(batches, total=n)`, if
        given, wraps the batches (a tqdm)."""
        process, processes = jax.process_index(), jax.process_count()
        batches = eval_batches(source, self.batch_size // processes, max_windows, process, processes)
        if progress is not None:
            batches = progress(batches, total=-(-min(len(source), max_windows or len(source)) // self.batch_size))
        totals, on_host = self.zeros, (0.0, 0, 0.0, 0)  # the sums on the devices, and those added up so far
        for i, windows_BxL in enumerate(batches, 1):
            windows = jax.make_array_from_process_local_data(self.windows_sharding, windows_BxL)
            totals = self.accumulate(totals, params, self.token_bytes, windows)
            if i % self.batches_per_sum(windows_BxL.shape[1]) == 0:  # else the next could pass int32's range
                totals, on_host = self.zeros, _add(on_host, totals)
        nats, tokens, text_nats, n_bytes = _add(on_host, totals)
        return {"loss": nats / tokens, "bpb": text_nats / n_bytes / math.log(2), "tokens": tokens, "bytes": n_bytes}

    def batches_per_sum(self, window_length: int) -> int:
        """How many batches of windows this long the devices' int32 counts hold for sure (bytes count the most)."""
        return max(1, COUNT_LIMIT // (self.batch_size * (window_length - 1) * self.most_bytes_per_token))


COUNT_LIMIT = 2**31 - 1  # int32's


def _add(on_host: tuple, totals) -> tuple:
    """The host's sums plus the devices' (waited for: every device done, as _accumulate_losses says why), in float64 and Python ints."""
    return tuple(sum_ + np.asarray(total).item() for sum_, total in zip(on_host, jax.block_until_ready(totals)))


def _accumulate_losses(model: GPT2, totals, params, token_bytes_V, windows_BxL):
    """totals + this batch's sums (step.eval_step). Each batch depends on the one before: on a CPU host,
    independent programs with collectives can run out of order on different devices and deadlock."""
    batch = step.eval_step(model, params, token_bytes_V, windows_BxL)
    return tuple(total + value for total, value in zip(totals, batch))


_compiled_accumulate = jax.jit(_accumulate_losses, static_argnums=0)  # equal models (same shapes) share it
