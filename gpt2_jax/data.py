"""The input pipeline: windows of block_size + 1 tokens, from the shards or from the validation text.

Training reads the windows shuffled by grain, a new permutation each epoch (grain seeds epoch e with seed + e, so
the seed is hashed first: else seed s + 1 read seed s's epochs, one later), each process its own slice, in
batches; the grain iterator's state is saved with every checkpoint (train_checkpoints.py), so a resumed run
continues the same order. Evaluation reads every window of a split once, in order.

Models of different tokenizers are compared on the validation *text*, the same bytes for
every model (`read_documents`, `TextWindows`):
- The text is the val split's tokens (its first `max_tokens`, or all) decoded to bytes
  (both tokenizers are lossless), cut at each `<|endoftext|>` into documents, each decoded as
  UTF-8; only a character cut in two where the split (or `max_tokens`) begins or ends is
  left out. The first document is whatever precedes the split's first `<|endoftext|>`.
- Each model encodes every document with its own tokenizer and reads one stream:
  `<|endoftext|>`, document 1, `<|endoftext|>`, document 2, ... (GPT-2's separator, as in the
  shards; the first document is read after it too). Context runs on across documents, as in
  training: a window may hold the end of one and the start of the next.
- Windows are the model's full context: n_positions + 1 tokens, window i starting at token
  i * n_positions, so every token after the leading `<|endoftext|>` is a target exactly
  once; the last window is padded (-1: no target). The first tokens of each window are
  predicted from a shorter context than the last ones, for every model alike.
- val_loss is the mean over all targets (`<|endoftext|>` included, as in training); val_bpb
  is the nats of the targets that are text over (ln 2 x their UTF-8 bytes): `<|endoftext|>`
  is no text and counts in neither, and every byte of the text is in exactly one target.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np

from gpt2_jax import shards
from gpt2_jax.shards import DataError
from gpt2_jax.tokenizer import Tokenizer, get_tokenizer

ORDER_VERSION = 2  # the order train_iterator reads windows in, recorded by a run (workdir.py): 2, the seed hashed


class WindowSource:
    """Random access to the non-overlapping windows of block_size + 1 tokens of one split.

    Window i of a segment starts at i * block_size, so consecutive windows share one token
    (the last target of one is the first input of the next): every token is a target once.
    Windows never cross a segment's end. Returns int32 [block_size + 1].
    """

    def __init__(self, data_dir: str | Path, split: str, block_size: int):
        self.meta, opened = shards.open_split(data_dir, split)
        self.data_dir = Path(data_dir)
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
        check_vocabulary(window, self.meta["vocab_size"], self.data_dir / segment.file, start)
        return window


def train_iterator(data_dir: str | Path, block_size: int, batch_per_process: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of shuffled [batch_per_process, block_size + 1] int32 batches."""
    dataset = (
        grain.MapDataset.source(WindowSource(data_dir, "train", block_size))
        .shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))  # the docstring says why
        .repeat()  # each epoch reshuffled, deterministically
        [process_index::process_count]
        .batch(batch_per_process, drop_remainder=True)
    )
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def read_split(data_dir: str | Path, split: str, max_tokens: int = 0) -> tuple[dict, np.ndarray]:
    """(meta, the split's first `max_tokens` tokens (0: all) in one array), reading no further, each id checked."""
    meta, opened = shards.open_split(data_dir, split)
    total = sum(segment.stop - segment.start for _, segment in opened)
    if not total:
        raise DataError(f"{data_dir}: the {split} split has no tokens; prepare the data into a new --out "
                        f"with {'a --val-fraction that gives it some' if split == 'val' else 'more text'}")
    pieces, left = [], max_tokens or total
    for tokens, segment in opened:
        pieces.append(np.asarray(tokens[segment.start : min(segment.stop, segment.start + left)]))
        check_vocabulary(pieces[-1], meta["vocab_size"], Path(data_dir) / segment.file, segment.start)
        left -= pieces[-1].size
    return meta, np.concatenate(pieces)


def check_vocabulary(tokens: np.ndarray, vocab_size: int, path: Path, offset: int) -> None:
    """Refuse ids >= vocab_size (what a damaged shard holds) in `tokens`, read from shard `path` at `offset`."""
    if tokens.size and tokens.max() >= vocab_size:
        first = int(np.argmax(tokens >= vocab_size))
        raise DataError(f"{path}: corrupt shard (token {tokens[first]} at offset {offset + first} is outside "
                        f"the vocabulary of {vocab_size})")


def read_documents(data_dir: str | Path, max_tokens: int = 0, tokenizer: Tokenizer | None = None) -> list[str]:
    """The text of the val split's first `max_tokens` tokens (0: all), as documents (module docstring);
    decoded by `tokenizer` if it is the data's (a model directory's own GPT-2 files: no tiktoken cache)."""
    meta, tokens = read_split(data_dir, "val", max_tokens)
    pieces = np.split(tokens, np.flatnonzero(tokens == meta["eot_token"]))  # each after the first: eot + document
    if tokenizer is None or tokenizer.name != meta["tokenizer"]:
        tokenizer = get_tokenizer(meta["tokenizer"])
    decode = tokenizer.decode_bytes
    return [decode(piece[i > 0 :].tolist()).decode("utf-8", errors="ignore") for i, piece in enumerate(pieces)]


class TextWindows:
    """A tokenizer's windows over documents (module docstring): int32 [block_size + 1], -1 past the end."""

    def __init__(self, documents: list[str], tokenizer: Tokenizer, block_size: int):
        parts = [np.asarray([tokenizer.eot_token, *tokenizer.encode(text)], np.int32) for text in documents]
        self.stream = np.concatenate(parts or [np.zeros(0, np.int32)])
        self.block_size = block_size
        if len(self.stream) < 2:
            raise DataError("no validation text to score")

    def __len__(self) -> int:
        return -(-(len(self.stream) - 1) // self.block_size)

    def __getitem__(self, index: int) -> np.ndarray:
        window = self.stream[index * self.block_size : (index + 1) * self.block_size + 1]
        return np.pad(window, (0, self.block_size + 1 - len(window)), constant_values=-1)


def eval_batches(source: WindowSource | TextWindows, batch_per_process: int, max_windows: int = 0,
                 process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
    """Windows [B, block_size + 1] over the first `max_windows` windows (0: all), in order.

    The last batch is padded with rows of -1 (no target), so every batch has one shape (one
    compile). Every process yields the same number of batches.
    """
    n_windows = min(len(source), max_windows) if max_windows else len(source)
    global_batch = batch_per_process * process_count
    padding = np.full(source.block_size + 1, -1, np.int32)
    for b in range(-(-n_windows // global_batch)):
        first = b * global_batch + process_index * batch_per_process
        indices = range(first, min(first + batch_per_process, n_windows))
        yield np.stack([source[i] for i in indices] + [padding] * (batch_per_process - len(indices)))
