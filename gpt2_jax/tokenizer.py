"""Tokenizers behind one small interface: GPT-2 BPE (tiktoken) and raw UTF-8 bytes."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import numpy as np

from gpt2_jax.errors import UserError

TOKENIZERS = ("gpt2", "byte")
# tiktoken's GPT-2 BPE files are the ones Hugging Face ships, under its names.
GPT2_FILES = {
    "merges.txt": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "vocab.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
BYTE_EOT = 256  # bytes are 0..255; end-of-text is the one id past them
VOCAB_SIZES = {"gpt2": 50257, "byte": BYTE_EOT + 1}


class TokenizerError(UserError):
    """An unknown tokenizer, or GPT-2 BPE files that cannot be found."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    eot_token: int
    encode: Callable[[str], list[int]]  # plain text; `<|endoftext|>` is not parsed
    encode_array: Callable[[str], np.ndarray]  # the same ids as a numpy array, no Python list made (prepare's)
    decode: Callable[[Sequence[int]], str]
    decode_bytes: Callable[[Sequence[int]], bytes]  # lossless: every id but end-of-text is a byte string

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: how many UTF-8 bytes of text each id stands for; end-of-text is none."""
        lengths = np.asarray([len(self.decode_bytes([i])) for i in range(self.vocab_size)], np.int32)
        lengths[self.eot_token] = 0
        return lengths


def get_tokenizer(name: str, hf_dir: str | Path | None = None) -> Tokenizer:
    """`gpt2` (tiktoken, or `vocab.json` + `merges.txt` in `hf_dir`) or `byte`."""
    if name == "byte":
        return Tokenizer(
            "byte", VOCAB_SIZES["byte"], BYTE_EOT,
            encode=lambda text: list(text.encode("utf-8")),
            encode_array=lambda text: np.frombuffer(text.encode("utf-8"), np.uint8),
            decode=lambda ids: _bytes_of(ids).decode("utf-8", errors="replace"),
            decode_bytes=_bytes_of,
        )
    if name == "gpt2":
        encoding = _gpt2_encoding(hf_dir)
        return Tokenizer("gpt2", encoding.n_vocab, encoding.eot_token, encoding.encode_ordinary,
                         functools.partial(_gpt2_array, encoding), encoding.decode, encoding.decode_bytes)
    raise TokenizerError(f"unknown tokenizer {name!r}; choose one of {TOKENIZERS}")


def _gpt2_array(encoding, text: str) -> np.ndarray:
    """encode_ordinary's ids as uint32, without its list of Python ints: 2 GB less for a 300 MB document."""
    try:
        return encoding.encode_to_numpy(text, disallowed_special=())  # nothing special: encode_ordinary's ids
    except UnicodeEncodeError:  # lone surrogates (JSON allows them): encode_ordinary replaces them, and so here
        return np.asarray(encoding.encode_ordinary(text), np.uint32)


def _bytes_of(ids: Sequence[int]) -> bytes:
    ids = np.asarray(ids, np.int64)
    return ids[ids < BYTE_EOT].astype(np.uint8).tobytes()


def tokenizer_for_vocab(vocab_size: int, hf_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer a model with this vocabulary was trained with: 50257 is GPT-2 BPE, 257 bytes."""
    for name, size in VOCAB_SIZES.items():
        if vocab_size == size:
            return get_tokenizer(name, hf_dir)
    raise TokenizerError(
        f"vocab_size={vocab_size} matches no known tokenizer ({', '.join(f'{n}: {s}' for n, s in VOCAB_SIZES.items())})"
    )


def write_gpt2_files(out_dir: str | Path) -> None:
    """vocab.json, merges.txt and tokenizer_config.json for transformers' GPT2Tokenizer, from tiktoken's files."""
    from tiktoken.load import read_file_cached

    out_dir = Path(out_dir)
    try:
        files = {name: read_file_cached(url) for name, url in GPT2_FILES.items()}
    except OSError:  # requests' network errors are OSErrors
        raise TokenizerError("GPT-2 BPE files unavailable offline: set TIKTOKEN_CACHE_DIR to a tiktoken cache "
                             "(e.g. ../shared/data/tiktoken) or pass --tokenizer-dir") from None
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "add_prefix_space": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _gpt2_encoding(hf_dir):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext import openai_public

    local = [Path(hf_dir) / "merges.txt", Path(hf_dir) / "vocab.json"] if hf_dir else []
    if local and all(f.exists() for f in local):  # the same two files as tiktoken's, HF names
        # "" turns tiktoken's cache off, which would copy the two files in, keyed by their path (into
        # ../shared/data/tiktoken, say) and read those copies back after the files changed. For the whole process
        # while it lasts: no other thread reads a tokenizer meanwhile.
        try:
            with mock.patch.dict(os.environ, TIKTOKEN_CACHE_DIR=""):
                ranks = data_gym_to_mergeable_bpe_ranks(str(local[0]), str(local[1]))
        except Exception as error:  # tiktoken assumes well-formed files: any of several types
            why = f"{type(error).__name__}: {' '.join(str(error).split())[:100]}"
            raise TokenizerError(f"{hf_dir}: vocab.json + merges.txt are not GPT-2's BPE files ({why})") from None
        return tiktoken.Encoding(
            name="gpt2",
            pat_str=openai_public.r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={openai_public.ENDOFTEXT: len(ranks)},
        )
    try:
        return tiktoken.get_encoding("gpt2")
    except OSError:  # requests' network errors are OSErrors
        # Only a model's directory can hold the files instead (prepare and a run's data have none).
        instead = f", or put GPT-2's vocab.json + merges.txt in {hf_dir}" if hf_dir else ""
        raise TokenizerError(f"GPT-2 BPE files unavailable offline: set TIKTOKEN_CACHE_DIR to a tiktoken cache "
                             f"(e.g. ../shared/data/tiktoken){instead}") from None
