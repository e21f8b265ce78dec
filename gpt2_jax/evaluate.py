"""Evaluate models from the command line: validation loss, bits per byte and HellaSwag, side by side.

    python -m gpt2_jax.evaluate --model gpt2 --model runs/gpt2_124m --tasks val_loss,hellaswag \\
        --data-dir data/fineweb_edu_10b [--val-tokens N] --hellaswag official [--limit N] [--out eval.json]

Each --model is a hub name, an HF directory, a params directory or a training workdir, of any
tokenizer: every model scores the same text of the val split, each with its own tokens, in bits
per byte (val_bpb; data.py says exactly how); val_loss where its tokenizer is the data's.

The evaluation itself is evaluator.py's, shared with training and report.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gpt2_jax import hellaswag, shards
from gpt2_jax.cli import argument_parser
from gpt2_jax.data import TextWindows, read_documents
from gpt2_jax.device_errors import out_of_memory_as_user_error
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.evaluator import Evaluator
from gpt2_jax.loading import load_config, load_replicated, resolve_reference
from gpt2_jax.outdir import write_file, writes_in_place
from gpt2_jax.tokenizer import tokenizer_for_vocab

TASKS = ("val_loss", "hellaswag")


def evaluate_model(reference: str, tasks: list[str], data_dir: str | None, hellaswag_path: str | None,
                   limit: int = 0, batch_size: int = 8, val_tokens: int = 0) -> dict:
    """{task: {"bpb", "bytes", "tokens", "loss"} or {"acc", "acc_norm", "n"}} for one model reference.

    val_loss: the text of the val split's first `val_tokens` tokens (0: all), read by the model with
    its own tokenizer and full context (data.py); "loss" only if that is the data's tokenizer, as
    per-token losses of different tokenizers are not comparable. HellaSwag: `limit` examples (0: all).
    """
    loaded, model, mesh, params = load_replicated(reference)
    documents = read_documents(data_dir, val_tokens, loaded.tokenizer) if "val_loss" in tasks else None
    val = TextWindows(documents, loaded.tokenizer, loaded.config.n_positions) if documents is not None else None
    examples = hellaswag.load_examples(hellaswag_path, limit) if "hellaswag" in tasks else ()
    results = Evaluator(model, mesh, loaded.tokenizer, batch_size, val, examples=examples)(params, progress=reference)
    if val is not None and shards.read_meta(data_dir)["tokenizer"] != loaded.tokenizer.name:
        del results["val_loss"]["loss"]
    return results


def results_table(results: dict, tasks: list[str]) -> str:
    """A markdown table, a row per model; val loss is "-" for a model of another tokenizer than the data's."""
    headers = {"val_loss": "val loss | val bpb | bytes", "hellaswag": "hellaswag acc | acc_norm | n"}
    formats = {"val_loss": "{loss} | {bpb:.4f} | {bytes:,}", "hellaswag": "{acc:.4f} | {acc_norm:.4f} | {n}"}
    lines = ["| model | " + " | ".join(headers[t] for t in tasks) + " |", "| --- |" + " ---: |" * 3 * len(tasks)]
    for model, result in results.items():
        values = {t: {**result[t], "loss": f"{result[t]['loss']:.4f}" if "loss" in result[t] else "-"}
                  if t == "val_loss" else result[t] for t in tasks}
        lines.append(f"| {model} | " + " | ".join(formats[t].format(**values[t]) for t in tasks) + " |")
    return "\n".join(lines)


# The JSON files of a model or data directory that its readers read (an index.json too): never an --out.
INPUT_JSON = {"config.json", "generation_config.json", "checksums.json", "train_config.json", "meta.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.json", "model.safetensors.index.json",
              "pytorch_model.bin.index.json"}


def check_out(out: Path, sources: list[str]) -> None:
    """Before evaluating: --out must be writable, and none of the files the evaluation reads (one was replaced by the
    results: the model then loaded as GPT-2 124M); a JSON of its own beside them (runs/NAME/eval.json) may be."""
    folder = out.absolute().parent
    written = out if writes_in_place(out) and out.exists() else folder  # as outdir.refuse_unwritable checks
    if out.is_dir() or not folder.is_dir() or not os.access(written, os.W_OK):
        raise UserError(f"--out {out}: a directory, or in a directory that is missing or read-only; give a file to "
                        "write (checked before evaluating)")
    target = out.resolve()
    for source in (Path(source).resolve() for source in sources if source and Path(source).exists()):  # not hub names
        own = target.parent == source and target.suffix == ".json" and target.name not in INPUT_JSON
        if target == source or source in target.parents and target.exists() and not own:
            raise UserError(f"--out {out} is {source} or one of its files, which this evaluation reads: writing it "
                            "would replace its own input; choose another --out")


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("evaluate", __doc__)
    parser.add_argument("--model", action="append", required=True,
                        help="hub name, HF directory, params directory or workdir; repeat to compare several models")
    parser.add_argument("--tasks", default="val_loss,hellaswag", help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument("--data-dir", help="prepared data whose val split val_loss reads "
                        "(default: none; val_loss needs it)")
    parser.add_argument("--hellaswag", default="official", help="hellaswag_val.jsonl, or `official` to download it")
    parser.add_argument("--limit", type=int, default=0, help="HellaSwag examples to score, 0 for all")
    parser.add_argument("--val-tokens", type=int, default=0, help="score the text of the first N val tokens, 0 for all")
    parser.add_argument("--batch-size", type=int, default=8, help="windows (val_loss) or examples (HellaSwag) a batch")
    parser.add_argument("--out", help="also write the results here as JSON (default: the table only)")
    args = parser.parse_args(argv)
    tasks = list(dict.fromkeys(filter(None, map(str.strip, args.tasks.split(",")))))  # each once, in order
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise UserError(f"--tasks {','.join(unknown) or repr(args.tasks)}: unknown; choose from {','.join(TASKS)}")
    if "val_loss" in tasks and not args.data_dir:
        raise UserError("--tasks val_loss needs --data-dir (prepared data whose val split it reads)")
    if args.val_tokens < 0:
        raise UserError(f"--val-tokens {args.val_tokens}: give a count of tokens, or 0 for the whole val split")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    if args.limit < 0:
        raise UserError(f"--limit {args.limit} must be >= 0 (0: all)")
    if args.out:
        check_out(Path(args.out), [*args.model, args.data_dir or "", args.hellaswag * (args.hellaswag != "official")])
    for reference in args.model:  # each model's config and tokenizer, before the first one is scored
        tokenizer_for_vocab(load_config(reference).vocab_size, hf_dir=resolve_reference(reference))
    results = {}
    try:
        with out_of_memory_as_user_error(f"lower --batch-size (now {args.batch_size})"):
            for model in dict.fromkeys(args.model):  # a model given twice is scored once (one row)
                results[model] = evaluate_model(model, tasks, args.data_dir, args.hellaswag, args.limit,
                                                args.batch_size, args.val_tokens)
    except KeyboardInterrupt:  # Ctrl-C: the models scored before it are kept (a model can take many minutes)
        if results:
            print(results_table(results, tasks))
        raise
    print(results_table(results, tasks))
    if args.out:  # whole or absent: a full disk is one line (outdir.write_file), not an empty file and a traceback
        write_file(Path(args.out), lambda path: path.write_text(json.dumps(results, indent=2)))


if __name__ == "__main__":
    main()
