"""Evaluation: validation loss over prepared shards (and HellaSwag, hellaswag.py).

Each evaluation is compiled for its own shapes, once, beside the train step, and reads the
params where they are (sharded over the mesh in training, on one device otherwise).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from gpt2_jax import sharding, step
from gpt2_jax.data import WindowSource, eval_batches
from gpt2_jax.model import GPT2


class LossEvaluator:
    """Mean next-token loss of a model over windows, batched and split over the mesh's devices."""

    def __init__(self, model: GPT2, mesh: jax.sharding.Mesh, batch_size: int):
        if batch_size % mesh.size:
            batch_size += mesh.size - batch_size % mesh.size  # padded rows carry weight 0
        self.mesh, self.batch_size = mesh, batch_size
        self.windows_sharding = sharding.batch_sharding(mesh)
        self.loss_sums = jax.jit(functools.partial(step.eval_step, model))

    def mean_loss(self, params, source: WindowSource, max_batches: int = 0, progress=None) -> float:
        """Loss per token over the first `max_batches` batches of `source` (0: every window)."""
        process, processes = jax.process_index(), jax.process_count()
        batches = eval_batches(source, self.batch_size // processes, max_batches, process, processes)
        loss_sum, tokens = 0.0, 0.0
        for windows_BxL, weights_B in batches if progress is None else progress(batches):
            windows = jax.make_array_from_process_local_data(self.windows_sharding, windows_BxL)
            weights = jax.make_array_from_process_local_data(self.windows_sharding, weights_B)
            batch_loss, batch_tokens = self.loss_sums(params, windows, weights)
            loss_sum, tokens = loss_sum + batch_loss, tokens + batch_tokens  # summed on device: no sync per batch
        return float(np.asarray(loss_sum) / np.asarray(tokens))
