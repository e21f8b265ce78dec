"""Tokenize a corpus into shards: `python -m gpt2_jax.prepare --input PATH [PATH ...] --out DIR`.

Inputs are read by `corpus.py`: text files, folders, .jsonl / .parquet with a text field, or
`hf:NAME[:CONFIG]` for a Hugging Face dataset. Documents are tokenized in worker processes and
joined with `<|endoftext|>` between them; the last --val-fraction of the tokens is the
validation split. Rerunning the same command after an interruption resumes after the last
complete shard.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from gpt2_jax import shards
from gpt2_jax.cli import argument_parser
from gpt2_jax.corpus import absolute_inputs, check_inputs
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.shard_writer import tokenize_into_shards
from gpt2_jax.shards import DataError
from gpt2_jax.tokenizer import TOKENIZERS, get_tokenizer

SMALL_SPLIT = 1024  # train splits of at most this many tokens hold no window of GPT-2's context: warn


def prepare(inputs: list[str], out_dir: str | Path, tokenizer: str = "gpt2", val_fraction: float = 0.1,
            shard_tokens: int = 100_000_000, workers: int = 1, text_field: str = "text") -> dict:
    """Tokenize `inputs` into shards in `out_dir` (see the module docstring); returns meta.json's content."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1)")
    for name, value in (("shard_tokens", shard_tokens), ("workers", workers)):
        if value < 1:
            raise DataError(f"{name}={value} must be at least 1")
    chosen = get_tokenizer(tokenizer)
    eot, vocab_size = chosen.eot_token, chosen.vocab_size
    if not str(out_dir).strip():
        raise DataError("--out is empty: give the directory to write")
    out_dir, inputs = Path(out_dir), absolute_inputs(inputs)  # the same inputs, from whichever directory
    check_inputs(inputs, out_dir)  # before anything is made: no empty output, no progress bar
    created = _make_output_dir(out_dir)
    settings = dict(inputs=inputs, tokenizer=tokenizer, text_field=text_field, shard_tokens=shard_tokens)
    meta = {**settings, "vocab_size": vocab_size, "eot_token": eot, "documents": 0, "shards": []}
    if (out_dir / shards.META).exists():
        previous = shards.read_meta(out_dir, complete=False)
        previous["inputs"] = absolute_inputs(previous.get("inputs", []))  # older metas hold them as given
        if {key: previous.get(key) for key in settings} != settings:
            raise DataError(f"{out_dir} holds another preparation ({shards.META} differs); choose another --out")
        if previous.get("complete") and previous.get("val_fraction") != val_fraction:
            raise DataError(f"{out_dir} was split with val_fraction={previous.get('val_fraction')}; splitting it "
                            "again would change the data under every run that reads it: choose another --out")
        meta = previous
    if not meta.get("complete"):
        try:
            tokenize_into_shards(meta, out_dir, workers, eot)
        except BaseException:
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failure before the first shard leaves nothing behind
            raise
    total = sum(shard["tokens"] for shard in meta["shards"])
    splits = split_segments(meta["shards"], total - int(total * (1 - val_fraction)))  # nanoGPT's split
    meta.update(complete=True, val_fraction=val_fraction, splits={k: [vars(s) for s in v] for k, v in splits.items()})
    shards.write_meta(out_dir, meta)
    return meta


def split_segments(entries: list[dict], val_tokens: int) -> dict[str, list[shards.Segment]]:
    """Train is everything but the last `val_tokens` tokens of the shards (meta.json's entries); val is that tail."""
    total = sum(shard["tokens"] for shard in entries)
    boundary, offset, splits = total - val_tokens, 0, {"train": [], "val": []}
    for shard in entries:
        start, stop = offset, offset + shard["tokens"]
        if start < boundary:
            splits["train"].append(shards.Segment(shard["file"], 0, min(stop, boundary) - start))
        if stop > boundary:
            splits["val"].append(shards.Segment(shard["file"], max(start, boundary) - start, shard["tokens"]))
        offset = stop
    return splits


def _make_output_dir(out_dir: Path) -> bool:
    """Create `out_dir` if needed (True if it was); a file, other files or no right to write is a DataError."""
    created, ours = not out_dir.exists(), re.compile(r"(shard_\d+\.npy|meta\.json)(\.tmp)?")  # and a cut-short run's
    names = [path.name for path in out_dir.iterdir()] if out_dir.is_dir() else []
    if shards.META not in names and not all(map(ours.fullmatch, names)):
        raise DataError(f"--out {out_dir} holds other files and no prepared data ({shards.META}); "
                        "give a new or empty directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(13, "read-only")
    except FileExistsError:
        raise DataError(f"--out {out_dir} is a file; give a directory") from None
    except OSError as error:
        raise DataError(f"--out {out_dir}: cannot write there ({error.strerror or error})") from None
    return created


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("prepare", __doc__)
    parser.add_argument("--input", nargs="+", required=True, help="files, folders, or hf:NAME[:CONFIG]")
    parser.add_argument("--out", required=True, help="output data directory")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="gpt2", help="GPT-2 BPE, or raw UTF-8 bytes")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the last fraction of tokens for validation")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (at document ends)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="tokenizer processes")
    parser.add_argument("--text-field", default="text", help="the text field of .jsonl/.parquet/hf inputs")
    args = parser.parse_args(argv)
    meta = prepare(args.input, args.out, args.tokenizer, args.val_fraction, args.shard_tokens, args.workers,
                   args.text_field)
    sizes = {split: sum(s["stop"] - s["start"] for s in segments) for split, segments in meta["splits"].items()}
    print(f"{args.out}: {meta['documents']:,} documents, {sizes['train']:,} train + {sizes['val']:,} val "
          f"{meta['tokenizer']} tokens in {len(meta['shards'])} shard(s)")
    if sizes["train"] <= SMALL_SPLIT:
        print(f"warning: the train split holds only {sizes['train']:,} tokens, and a run needs block_size + 1 "
              f"(GPT-2's: 1,025) for one window; a smaller --val-fraction keeps more", file=sys.stderr)


if __name__ == "__main__":
    main()
