"""The input pipeline: windows of block_size + 1 tokens from the shards.

Training reads the windows shuffled by grain (a new permutation each epoch, fixed by the
seed), each process its own slice, in batches; the grain iterator's state is saved with every
checkpoint (checkpoint.py), so a resumed run continues the same order. Evaluation reads every
window of a split once, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np

from gpt2_jax import shards
from gpt2_jax.shards import DataError


class WindowSource:
    """Random access to the non-overlapping windows of block_size + 1 tokens of one split.

    Window i of a segment starts at i * block_size, so consecutive windows share one token
    (the last target of one is the first input of the next): every token is a target once.
    Windows never cross a segment's end. Returns int32 [block_size + 1].
    """

    def __init__(self, data_dir: str | Path, split: str, block_size: int):
        self.meta, opened = shards.open_split(data_dir, split)
        self.block_size = block_size
        self.segments = [(tokens, s) for tokens, s in opened if s.stop - s.start > block_size]
        counts = [(s.stop - s.start - 1) // block_size for _, s in self.segments]
        self.first_window = np.cumsum([0, *counts])
        if len(self) == 0:
            raise DataError(f"{data_dir}: the {split} split has no window of block_size + 1 = {block_size + 1} tokens")

    def __len__(self) -> int:
        return int(self.first_window[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self.first_window, index, side="right")) - 1
        tokens, segment = self.segments[k]
        start = segment.start + (index - int(self.first_window[k])) * self.block_size
        window = np.asarray(tokens[start : start + self.block_size + 1], dtype=np.int32)
        if window.max() >= self.meta["vocab_size"]:
            raise DataError(f"{segment.file}: corrupt shard (token {window.max()} near offset {start} is "
                            f"outside the vocabulary of {self.meta['vocab_size']})")
        return window


def train_iterator(data_dir: str | Path, block_size: int, batch_per_process: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of shuffled [batch_per_process, block_size + 1] int32 batches."""
    dataset = (
        grain.MapDataset.source(WindowSource(data_dir, "train", block_size))
        .shuffle(seed=seed)
        .repeat()  # each epoch reshuffled, deterministically
        [process_index::process_count]
        .batch(batch_per_process, drop_remainder=True)
    )
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def eval_batches(source: WindowSource, batch_per_process: int, max_windows: int = 0,
                 process_index: int = 0, process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(windows [B, block_size + 1], weights [B]) over the first `max_windows` windows (0: all), in order.

    The last batch is padded with weight-0 rows, so every batch has one shape (one compile)
    and the weighted mean is exact. Every process yields the same number of batches.
    """
    n_windows = min(len(source), max_windows) if max_windows else len(source)
    global_batch = batch_per_process * process_count
    padding = np.zeros(source.block_size + 1, np.int32)
    for b in range(-(-n_windows // global_batch)):
        first = b * global_batch + process_index * batch_per_process
        indices = range(first, min(first + batch_per_process, n_windows))
        windows = [source[i] for i in indices] + [padding] * (batch_per_process - len(indices))
        weights = np.asarray([1.0] * len(indices) + [0.0] * (batch_per_process - len(indices)), np.float32)
        yield np.stack(windows), weights
