"""build-nanogpt's `fineweb.py` tokenize-and-shard loop, kept faithful, reading local inputs: the peer that
scripts/bench_prepare.py measures `python -m gpt2_jax.prepare` against.

    python scripts/peer_fineweb_prepare.py --input docs.jsonl --out DIR --workers 2

What is build-nanogpt's: a multiprocessing Pool over documents (`imap`, chunksize 16), tiktoken's
`encode_ordinary` per document with `<|endoftext|>` prepended (so the stream starts with one), uint16 numpy
shards of exactly --shard-tokens tokens (documents split across shards), shard 0 named val. What is not: the
documents come from a .jsonl/.parquet text field or a text file (one document) instead of `load_dataset`.
"""

import argparse
import json
import multiprocessing as mp
import os

import numpy as np
import tiktoken
from tqdm import tqdm

enc = tiktoken.get_encoding("gpt2")
eot = enc._special_tokens["<|endoftext|>"]  # end of text token


def tokenize(doc):  # as build-nanogpt
    tokens = [eot]  # the special <|endoftext|> token delimits all documents
    tokens.extend(enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def documents(path):
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as parquet
        for batch in parquet.ParquetFile(path).iter_batches(columns=["text"]):
            yield from batch.to_pylist()
    else:
        with open(path, encoding="utf-8") as file:
            yield {"text": file.read()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() // 2))
    parser.add_argument("--shard-tokens", type=int, default=int(1e8))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    shard_size = args.shard_tokens
    with mp.Pool(args.workers) as pool:  # build-nanogpt's loop from here on
        shard_index = 0
        all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
        token_count = 0
        progress_bar = None
        for tokens in pool.imap(tokenize, documents(args.input), chunksize=16):
            if token_count + len(tokens) < shard_size:
                all_tokens_np[token_count:token_count + len(tokens)] = tokens
                token_count += len(tokens)
                if progress_bar is None:
                    progress_bar = tqdm(total=shard_size, unit="tokens", desc=f"Shard {shard_index}")
                progress_bar.update(len(tokens))
            else:
                split = "val" if shard_index == 0 else "train"
                filename = os.path.join(args.out, f"edufineweb_{split}_{shard_index:06d}")
                remainder = shard_size - token_count
                progress_bar.update(remainder)
                all_tokens_np[token_count:token_count + remainder] = tokens[:remainder]
                np.save(filename, all_tokens_np)
                shard_index += 1
                progress_bar = None
                all_tokens_np[0:len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count != 0:
            split = "val" if shard_index == 0 else "train"
            filename = os.path.join(args.out, f"edufineweb_{split}_{shard_index:06d}")
            np.save(filename, all_tokens_np[:token_count])


if __name__ == "__main__":
    main()
