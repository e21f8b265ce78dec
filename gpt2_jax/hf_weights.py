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
    """A checkpoint's (name, array) pairs, each read as it is reached, and their count (a progress bar's total)."""

    def __init__(self, names: list[str], read: Callable[[str], np.ndarray]):
        self.names, self.read = names, read

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return ((name, self.read(name)) for name in self.names)


def read_tensors(model_dir: Path) -> Tensors:
    """The directory's weights: one file (model.safetensors first, as transformers takes it), else the files an
    index names."""
    for name in WEIGHT_FILES:
        if (model_dir / name).exists():
            return read_file(model_dir / name)
    for index in SHARD_INDEXES:
        if (model_dir / index).exists():
            return read_shards(model_dir / index)
    raise CheckpointFileError(f"{model_dir}: no {' or '.join(WEIGHT_FILES)} (nor an index of such files)")


def read_file(path: Path) -> Tensors:
    """A .safetensors file's tensors, read one at a time (never the whole file beside what the caller builds from
    them; a damaged file is refused here or at the tensor it cannot read), or a .bin's (torch_bin.py: tensors
    only, no code run)."""
    if path.suffix == ".bin":
        state_dict = load_bin(path)
        return Tensors(list(state_dict), state_dict.__getitem__)
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
    return Tensors(list(tensors.keys()), lambda name: unreadable(tensors.get_tensor, name))


def read_shards(index: Path) -> Tensors:
    """The tensors of the files an index's `weight_map` ({tensor name: file name}) names, a file at a time (a
    .bin's tensors are all in memory once it is opened: one such file is, not all)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = {str(name): index.parent / Path(file).name for name, file in weight_map.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointFileError(f"{index}: not a checkpoint's index ({first_line(error)})") from None
    opened: dict[Path, Tensors] = {}

    def read(name: str) -> np.ndarray:
        if files[name] not in opened:
            opened.clear()  # the file before is done with: the names are in file order
            opened[files[name]] = read_file(files[name])
        if name not in opened[files[name]].names:
            raise CheckpointFileError(f"{files[name]}: no tensor {name}, which {index.name} places there")
        return opened[files[name]].read(name)

    return Tensors(sorted(files, key=lambda name: (str(files[name]), name)), read)
