"""Hugging Face model directories on disk: their file names, and writing them (reading their weights is
hf_weights.py; loading.py finds them).

Knows file names and formats (`model.safetensors`, `pytorch_model.bin`, tokenizer files),
nothing about what the tensors mean: that is `convert.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from gpt2_jax import outdir
from gpt2_jax.errors import UserError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
GENERATION_CONFIG = "generation_config.json"
HF_DIR_KIND = "Hugging Face model directory"


class CheckpointFileError(UserError):
    """A model directory that is missing, incomplete or unreadable."""


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def is_hf_export(path: Path) -> bool:
    """A directory that holds an HF model and nothing else: what write_hf_dir writes (and may replace)."""
    names = {p.name for p in path.iterdir()}
    return "config.json" in names and names <= {"config.json", *WEIGHT_FILES, GENERATION_CONFIG, *TOKENIZER_FILES}


def check_tokenizer_dir(tokenizer_dir: Path, vocab_size: int) -> None:
    """Refuse a directory to copy tokenizer files from that has neither GPT-2's two files nor a tokenizer.json,
    or whose ids reach past the model's rows (transformers would fail on the first such token)."""
    if not tokenizer_dir.is_dir():
        what = "not a directory" if tokenizer_dir.exists() else "no such directory"
        raise CheckpointFileError(f"{tokenizer_dir}: {what} to copy tokenizer files from")
    vocab_json, merges, tokenizer_json = (tokenizer_dir / name for name in TOKENIZER_FILES[:3])
    if not (vocab_json.is_file() and merges.is_file() or tokenizer_json.is_file()):
        raise CheckpointFileError(f"{tokenizer_dir}: no vocab.json and merges.txt, nor tokenizer.json")
    source = vocab_json if vocab_json.is_file() else tokenizer_json
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        vocab = data if source == vocab_json else {**data["model"]["vocab"], **{
            token["content"]: token["id"] for token in data.get("added_tokens", [])}}
        top_id = max(vocab.values())
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointFileError(f"{source}: not a tokenizer's vocabulary ({first_line(error)})") from None
    if not isinstance(top_id, int):
        raise CheckpointFileError(f"{source}: not a tokenizer's vocabulary (its ids are not integers)")
    if top_id >= vocab_size:
        raise CheckpointFileError(f"{source}: its ids reach {top_id:,} and the model has {vocab_size:,} rows: "
                                  "not this model's tokenizer")


def write_hf_dir(out_dir: Path, config_dict: dict, state_dict: dict[str, np.ndarray], tokenizer_dir: Path | None = None,
                 overwrite: bool = False) -> None:
    """config.json, model.safetensors, generation_config.json and, if found, tokenizer files, as a new directory.

    An existing `out_dir` is replaced whole if it is empty or an HF model directory, else refused unless
    `overwrite` (outdir.py): no file of an earlier export (a tokenizer of another vocabulary) survives.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    if tokenizer_dir:
        check_tokenizer_dir(tokenizer_dir, config_dict["vocab_size"])

    def write(directory: Path) -> None:
        (directory / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
        try:
            save_file(state_dict, directory / WEIGHT_FILES[0], metadata={"format": "pt"})
        except SafetensorError as error:  # its own error for a failed write (a full disk): outdir's one line
            code = re.search(r"os error (\d+)", str(error))
            raise OSError(os.strerror(int(code.group(1))) if code else first_line(error)) from None
        generation = {key: config_dict[key] for key in ("bos_token_id", "eos_token_id")}
        (directory / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
        for name in TOKENIZER_FILES if tokenizer_dir else ():
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, directory / name)

    outdir.write_dir(out_dir, write, is_hf_export, HF_DIR_KIND, overwrite)
