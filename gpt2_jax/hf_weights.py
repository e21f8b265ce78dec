"""A Hugging Face checkpoint's tensors, read one at a time: `model.safetensors`, `pytorch_model.bin`, or either
split into files by `save_pretrained` (`model.safetensors.index.json` beside `model-00001-of-00002.safetensors`...).

Knows file formats only; what the tensors mean is `convert.py`, where the directory comes from `loading.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from gpt2_jax.hf_files import WEIGHT_FILES, CheckpointFileError, first_line
from gpt2_jax.torch_bin import load_bin

SHARD_INDEXES = tuple(f"{name}.index.json" for name in WEIGHT_FILES)  # a checkpoint split into files


class Tensors:
    """A checkpoint's (name, array) pairs, each read as it is reached, and how many there are (a progress bar's
    total; for a checkpoint in files, its index's count)."""

    def __init__(self, count: int, pairs: Callable[[], Iterator[tuple[str, np.ndarray]]]):
        self.count, self.pairs = count, pairs

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return self.pairs()


def read_tensors(model_dir: Path) -> Tensors:
    """The directory's weights, found as transformers finds them: model.safetensors, its index, pytorch_model.bin,
    its index."""
    for name in (WEIGHT_FILES[0], SHARD_INDEXES[0], WEIGHT_FILES[1], SHARD_INDEXES[1]):
        if (model_dir / name).exists():
            return read_shards(model_dir / name) if name in SHARD_INDEXES else read_file(model_dir / name)
    raise CheckpointFileError(f"{model_dir}: no {' or '.join(WEIGHT_FILES)} (nor an index of such files)")


def read_file(path: Path) -> Tensors:
    """A .safetensors file's tensors, read one at a time (never the whole file beside what the caller builds from
    them; a damaged file is refused here or at the tensor it cannot read), or a .bin's (torch_bin.py: tensors
    only, no code run)."""
    if path.suffix == ".bin":
        state_dict = load_bin(path)
        return Tensors(len(state_dict), lambda: iter(state_dict.items()))
    from safetensors import SafetensorError, safe_open

    def unreadable(read, *args, **kwargs):
        try:
            return read(*args, **kwargs)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointFileError(f"{path}: unreadable safetensors file ({first_line(error)})") from None

    try:  # opened here first: safetensors says "No such file or directory" of a file it may not read
        open(path, "rb").close()
    except OSError as error:
        raise CheckpointFileError(f"{path}: cannot read it ({error.strerror or error})") from None
    # pread: each tensor read into its array; a memory map would keep the whole file resident beside them
    tensors = unreadable(safe_open, path, "np", "cpu", backend="pread")
    names = list(tensors.keys())
    return Tensors(len(names), lambda: ((name, unreadable(tensors.get_tensor, name)) for name in names))


def read_shards(index: Path) -> Tensors:
    """Every tensor of each file an index's `weight_map` ({tensor name: file}) names, as transformers loads them
    (one the map leaves out too), a file at a time (a .bin's tensors are in memory once it is opened)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [index.parent / file for file in dict.fromkeys(weight_map.values())]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointFileError(f"{index}: not a checkpoint's index ({first_line(error)})") from None

    def pairs() -> Iterator[tuple[str, np.ndarray]]:
        for file in files:
            yield from read_file(file)

    return Tensors(len(weight_map), pairs)
