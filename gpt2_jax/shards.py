"""Token shards on disk: numbered `.npy` files of uint16 token ids, described by `meta.json`.

    DIR/meta.json          tokenizer, vocabulary, shard sizes, and the train/val split
    DIR/shard_000000.npy   documents' tokens, `<|endoftext|>` between documents

The split is a list of token ranges (segments) per split name, so the validation tokens
can be the tail of the last shard without copying anything. Every file is written to a
temporary name and renamed, so a killed preparation never leaves a half-written shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from gpt2_jax.errors import UserError

META = "meta.json"
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids and the 257 byte ids both fit
COMPLETE_KEYS = ("tokenizer", "vocab_size", "eot_token", "shards", "splits")  # what readers of meta.json use
PREPARE_AGAIN = "; prepare the data again with python -m gpt2_jax.prepare"


class DataError(UserError):
    """A data directory that is missing, unfinished or damaged."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """Tokens [start, stop) of one shard."""

    file: str
    start: int
    stop: int


def shard_name(index: int) -> str:
    return f"shard_{index:06d}.npy"


def atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a temporary file, then rename it to `path`. A write that fails (a full disk) removes
    the temporary file and is one line naming `path`: the rerun resumes after the last complete shard."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}; make room, then rerun the same prepare "
                        "command: it resumes after its last complete shard") from None
    finally:  # a failed write's part, or a stop's (Ctrl-C, SIGTERM): none is left beside the shards
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def write_shard(data_dir: Path, index: int, chunks: list[np.ndarray]) -> dict:
    """Save `chunks`' tokens one after another as one shard (np.save's file, never joined); its meta.json entry."""
    header = {"descr": np.dtype(TOKEN_DTYPE).str, "fortran_order": False, "shape": (sum(c.size for c in chunks),)}
    def write(file):
        np.lib.format.write_array_header_1_0(file, header)
        file.writelines(np.ascontiguousarray(chunk, TOKEN_DTYPE).data for chunk in chunks)
    atomic_write(data_dir / shard_name(index), write)
    return {"file": shard_name(index), "tokens": int(header["shape"][0])}


def write_meta(data_dir: Path, meta: dict) -> None:
    atomic_write(data_dir / META, lambda file: file.write(json.dumps(meta, indent=2).encode() + b"\n"))


def read_meta(data_dir: str | Path, complete: bool = True) -> dict:
    """meta.json of a data directory; `complete` refuses one whose preparation did not finish."""
    path = Path(data_dir) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{data_dir}: no {META}; prepare it first with python -m gpt2_jax.prepare") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:  # a data_dir that is a file, a meta.json that cannot be read
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a JSON object")
    if complete and not meta.get("complete"):
        raise DataError(f"{data_dir}: preparation did not finish; rerun the same prepare command to resume it")
    missing = [key for key in (COMPLETE_KEYS if complete else ()) if key not in meta]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)}{PREPARE_AGAIN}")
    if complete:
        check_meta(path, meta)
    return meta


def check_meta(path: Path, meta: dict) -> None:
    """Refuse a meta.json that contradicts itself (a hand edit, or files of two preparations mixed): an
    eot_token outside the vocabulary, a split segment of a shard it does not list or past that shard's end."""
    vocab_size, eot = meta["vocab_size"], meta["eot_token"]
    if not (_is_count(vocab_size) and _is_count(eot) and eot < vocab_size):
        raise DataError(f"{path}: vocab_size={vocab_size!r}, eot_token={eot!r}: need ints with "
                        f"0 <= eot_token < vocab_size{PREPARE_AGAIN}")
    try:
        sizes = {shard["file"]: shard["tokens"] for shard in meta["shards"]}
        segments = {f"splits.{name}[{i}]": Segment(**entry)
                    for name, entries in meta["splits"].items() for i, entry in enumerate(entries)}
    except (TypeError, KeyError, AttributeError):  # not lists of {file, tokens} and of {file, start, stop}
        raise DataError(f"{path}: shards or splits are not as prepare writes them{PREPARE_AGAIN}") from None
    for where, segment in segments.items():
        file, start, stop = segment.file, segment.start, segment.stop
        if not isinstance(file, str) or file not in sizes:
            raise DataError(f"{path}: {where} reads {file!r}, which is not in shards{PREPARE_AGAIN}")
        if not (_is_count(start) and _is_count(stop) and _is_count(sizes[file]) and start <= stop <= sizes[file]):
            raise DataError(f"{path}: {where} is tokens [{start!r}, {stop!r}) of {file}, which holds {sizes[file]!r}: "
                            f"need 0 <= start <= stop <= its tokens{PREPARE_AGAIN}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def open_split(data_dir: str | Path, split: str) -> tuple[dict, list[tuple[np.ndarray, Segment]]]:
    """(meta, [(memory-mapped shard, segment)]) for `split`, each shard checked against meta.json."""
    data_dir, meta = Path(data_dir), read_meta(data_dir)
    if split not in meta["splits"]:
        raise DataError(f"{data_dir}: no split {split!r} (has {sorted(meta['splits'])})")
    sizes = {shard["file"]: shard["tokens"] for shard in meta["shards"]}
    opened = []
    for entry in meta["splits"][split]:
        segment = Segment(**entry)
        path = data_dir / segment.file
        try:
            tokens = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(f"{path}: shard listed in {META} is missing") from None
        except (PermissionError, IsADirectoryError) as error:  # the machine's answer, not damage
            raise DataError(f"{path}: cannot read the shard ({error.strerror})") from None
        except (ValueError, OSError, EOFError) as error:  # EOFError: an empty file
            raise DataError(f"{path}: corrupt shard ({error})") from None
        if tokens.dtype != TOKEN_DTYPE or tokens.shape != (sizes[segment.file],):
            raise DataError(f"{path}: corrupt shard ({tokens.dtype}{list(tokens.shape)}, "
                            f"{META} says uint16[{sizes[segment.file]}])")
        opened.append((tokens, segment))
    return meta, opened
