"""Bytes against GPT-2 BPE at equal training FLOPs on Tiny Shakespeare: prepare, train, evaluate, write docs/.

    python scripts/compare_tokenizers.py [--input ../shared/data/tinyshakespeare/input.txt] [--hellaswag PATH]

1. Prepares data/shakespeare_pair_bpe (nanoGPT's 90/10 split of the GPT-2 BPE tokens) and
   data/shakespeare_pair_byte (the same bytes on each side of the split), and checks that both
   val splits are the same text; and the quickstart's data/shakespeare_byte (90/10 in bytes, whose
   train split ends before that val text begins).
2. Trains configs/shakespeare_bpe_pair.py, configs/shakespeare_byte_pair.py and, as a check on the
   byte pair's recipe, the quickstart's configs/shakespeare_byte.py (64-byte context, a similar
   FLOP budget) into runs/pair_*, one after the other, each a whole `python -m gpt2_jax.train`
   process, timed. A run that already finished is not trained again (delete runs/pair_* to redo).
3. Scores the final models on the pair's whole val text with `gpt2_jax.evaluate`: every byte
   once, each model with its own tokenizer and context.
4. Writes the table into docs/bytes_vs_bpe.md (between its `<!-- table -->` markers) and
   docs/bytes_vs_bpe.png: val_bpb, as logged in training, against training FLOPs.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax

from gpt2_jax import data
from gpt2_jax.cli import HelpFormatter
from gpt2_jax.data import read_documents
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.evaluate import evaluate_model
from gpt2_jax.loading import load_model
from gpt2_jax.flops import train_flops_per_token
from gpt2_jax.metrics import read_metrics
from gpt2_jax.plot import plot_runs
from gpt2_jax.prepare import prepare
from gpt2_jax.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PAIR_DATA = {"gpt2": "data/shakespeare_pair_bpe", "byte": "data/shakespeare_pair_byte"}  # the same val text
RUNS = {"GPT-2 BPE": ("gpt2", "configs/shakespeare_bpe_pair.py", "runs/pair_bpe"),
        "bytes": ("byte", "configs/shakespeare_byte_pair.py", "runs/pair_byte"),
        "bytes, quickstart recipe": ("byte", "configs/shakespeare_byte.py", "runs/pair_quickstart")}
MARKERS = ("<!-- table -->", "<!-- /table -->")


def prepare_pair(text_file: str) -> None:
    """BPE with nanoGPT's split, bytes split at the same byte (the val texts checked equal), the quickstart's."""
    bpe_dir, byte_dir = ROOT / PAIR_DATA["gpt2"], ROOT / PAIR_DATA["byte"]
    prepare([text_file], bpe_dir, tokenizer="gpt2", val_fraction=0.1)
    total, val = Path(text_file).stat().st_size, sum(len(d.encode()) for d in read_documents(bpe_dir))
    prepare([text_file], byte_dir, tokenizer="byte", val_fraction=(val - 0.5) / total)  # int() rounds down
    if read_documents(bpe_dir) != read_documents(byte_dir):
        sys.exit(f"the val splits of {bpe_dir} and {byte_dir} differ: remove both and rerun")
    prepare([text_file], ROOT / "data/shakespeare_byte", tokenizer="byte", val_fraction=0.1)


def train(config: str, workdir: Path) -> float:
    """Wall seconds of the training process (recorded beside the run, so a finished run is not redone)."""
    record = workdir / "wall_seconds.json"
    if record.exists():
        return json.loads(record.read_text())["seconds"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gpt2_jax.train", f"--config={config}", f"--workdir={workdir}"],
                   cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds}) + "\n")
    return seconds


def bytes_per_token(data_dir: Path, tokenizer_name: str) -> float:
    """UTF-8 bytes per token of the train split (<|endoftext|> counted as a token of no bytes)."""
    tokens = data.read_split(data_dir, "train")[1]
    return get_tokenizer(tokenizer_name).token_bytes()[tokens].sum() / tokens.size


def measure(name: str, hellaswag: str | None) -> dict:
    tokenizer, config_file, workdir = RUNS[name]
    seconds = train(config_file, ROOT / workdir)
    train_config = json.loads((ROOT / workdir / "train_config.json").read_text())
    loaded = load_model(str(ROOT / workdir))
    params = sum(x.size for x in jax.tree.leaves(loaded.params))
    embeddings = loaded.params["wte"]["embedding"].size + loaded.params["wpe"]["embedding"].size
    tasks = ["val_loss", "hellaswag"] if hellaswag else ["val_loss"]
    # The pair's data of its own tokenizer: the same val text for all (prepare_pair checks), val_loss too.
    scores = evaluate_model(str(ROOT / workdir), tasks, str(ROOT / PAIR_DATA[tokenizer]), hellaswag, batch_size=16)
    flops_per_step = train_flops_per_token(loaded.config) * train_config["tokens_per_step"]
    rows = [{"train_flops": row["step"] * flops_per_step, "val_bpb": row["val_bpb"]}
            for row in read_metrics(ROOT / workdir) if "val_bpb" in row]
    ratio, block = bytes_per_token(ROOT / train_config["data_dir"], tokenizer), train_config["block_size"]
    context = f"{block} bytes" if tokenizer == "byte" else f"{block} tokens (~{block * ratio:.0f} bytes)"
    return {"name": name, "context": context,
            "params": params, "non_embedding": params - embeddings, "bytes_per_token": ratio,
            "flops_per_byte": train_flops_per_token(loaded.config) / ratio,
            "train_flops": train_config["max_steps"] * flops_per_step,
            "train_bytes": train_config["max_steps"] * train_config["tokens_per_step"] * ratio,
            "seconds": seconds, "val": scores["val_loss"], "hellaswag": scores.get("hellaswag"), "curve": rows}


def table(results: list[dict]) -> str:
    lines = ["| model | context | params | params w/o embeddings | bytes / token (train) | training FLOPs / byte | "
             "training FLOPs | bytes trained on | wall time (whole process) | val loss (own tokens) | **val bpb** | "
             "HellaSwag acc_norm |", "| --- |" + " ---: |" * 11]
    for r in results:
        loss = f"{r['val']['loss']:.4f}" if "loss" in r["val"] else "-"
        hellaswag = f"{r['hellaswag']['acc_norm']:.4f} (n={r['hellaswag']['n']})" if r["hellaswag"] else "not run"
        lines.append(f"| {r['name']} | {r['context']} | {r['params'] / 1e6:.2f}M | {r['non_embedding'] / 1e6:.3f}M | "
                     f"{r['bytes_per_token']:.3f} | {r['flops_per_byte'] / 1e6:.2f}M | {r['train_flops']:.3e} | "
                     f"{r['train_bytes'] / 1e6:.2f}M | {r['seconds']:.0f} s | {loss} | **{r['val']['bpb']:.4f}** | "
                     f"{hellaswag} |")
    assert len({r["val"]["bytes"] for r in results}) == 1, "the models scored different texts"
    tokens = "; ".join(f"{r['name']}: {r['val']['tokens']:,} tokens" for r in results)
    lines.append(f"\nval bpb: `python -m gpt2_jax.evaluate` over the pair's whole val split, "
                 f"{results[0]['val']['bytes']:,} bytes, the same for every model ({tokens}).")
    return "\n".join(lines)


@exit_on_user_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", default=str(ROOT.parent / "shared/data/tinyshakespeare/input.txt"), help="the text")
    parser.add_argument("--hellaswag", help="hellaswag_val.jsonl, to add HellaSwag (near chance at this size)")
    parser.add_argument("--doc", default=str(ROOT / "docs/bytes_vs_bpe.md"), help="the page to write the table into")
    args = parser.parse_args()
    if not Path(args.input).is_file():
        parser.error(f"{args.input}: no such file (Tiny Shakespeare's input.txt)")
    doc = Path(args.doc)  # checked before ~11 minutes of training, not after
    if not doc.parent.is_dir() or doc.exists() and not all(marker in doc.read_text() for marker in MARKERS):
        parser.error(f"--doc {doc}: needs an existing folder, and in an existing page the markers {' '.join(MARKERS)}")
    prepare_pair(args.input)
    results = [measure(name, args.hellaswag) for name in RUNS]
    markdown = table(results)
    print(markdown)
    text = doc.read_text() if doc.exists() else f"# Bytes against GPT-2 BPE\n\n{MARKERS[0]}\n{MARKERS[1]}\n"
    head, rest = text.split(MARKERS[0], 1)
    doc.write_text(f"{head}{MARKERS[0]}\n{markdown}\n{MARKERS[1]}{rest.split(MARKERS[1], 1)[1]}")
    picture = plot_runs({r["name"]: r["curve"] for r in results}, doc.with_suffix(".png"), x="train_flops")
    print(f"wrote {doc} and {picture}")


if __name__ == "__main__":
    main()
