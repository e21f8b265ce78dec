"""Documents into token shards, in worker processes: what `python -m gpt2_jax.prepare` runs.

Each document is tokenized by a worker (one tokenizer per process), `<|endoftext|>` goes between
documents, and a shard is written, with meta.json's progress, whenever `shard_tokens` have
gathered: an interrupted preparation resumes after its last complete shard.
"""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2_jax import shards
from gpt2_jax.corpus import count_documents, iter_documents
from gpt2_jax.tokenizer import get_tokenizer

_worker_tokenizer = None


def _start_worker(tokenizer_name: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = get_tokenizer(tokenizer_name)


def _encode(text: str) -> np.ndarray:
    return np.asarray(_worker_tokenizer.encode(text), dtype=shards.TOKEN_DTYPE)


def tokenize_into_shards(meta: dict, out_dir: Path, workers: int, eot: int) -> None:
    """Append shards to `meta` from document `meta["documents"]` on, saving progress per shard."""
    documents = itertools.islice(iter_documents(meta["inputs"], meta["text_field"]), meta["documents"], None)
    pool = multiprocessing.Pool(workers, _start_worker, (meta["tokenizer"],)) if workers > 1 else None
    if pool is None:
        _start_worker(meta["tokenizer"])
    pending, pending_tokens, count = [], 0, meta["documents"]
    try:
        with tqdm(desc="tokenize", unit="doc", initial=count, total=count_documents(meta["inputs"])) as progress:
            for tokens in (pool.imap(_encode, documents, chunksize=16) if pool else map(_encode, documents)):
                if count:  # <|endoftext|> between documents
                    tokens = np.concatenate([np.asarray([eot], shards.TOKEN_DTYPE), tokens])
                pending.append(tokens)
                pending_tokens, count = pending_tokens + tokens.size, count + 1
                progress.update()
                if pending_tokens >= meta["shard_tokens"]:
                    _flush(meta, out_dir, pending, count)
                    pending, pending_tokens = [], 0
    finally:  # on an error too: a pool left to the garbage collector fails loudly at exit
        if pool:
            pool.terminate()
            pool.join()
    if not meta["shards"] and not pending_tokens:
        raise shards.DataError(f"no text found in {', '.join(meta['inputs'])}")
    if pending:
        _flush(meta, out_dir, pending, count)


def _flush(meta: dict, out_dir: Path, pending: list[np.ndarray], documents: int) -> None:
    meta["shards"].append(shards.write_shard(out_dir, len(meta["shards"]), np.concatenate(pending)))
    meta["documents"] = documents
    shards.write_meta(out_dir, meta)
