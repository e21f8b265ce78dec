"""Evaluation speed: gpt2_jax's HellaSwag and validation loss against transformers, same checkpoint.

Builds a random GPT-2 checkpoint (124M by default) with transformers, then from Tiny Shakespeare
(../shared/data/tinyshakespeare/input.txt) two sets to score:

- N synthetic HellaSwag examples (hellaswag_val.jsonl's format): a context of 30-60 GPT-2 tokens and
  4 endings of 15-40 tokens each (uniform), all cut at word starts from the text; the labelled ending is
  the text that follows the context, the 3 others come from elsewhere. HellaSwag's own file needs a
  network.
- K windows of the model's context + 1 tokens (1,025 for GPT-2) of the text's last 10% (nanoGPT's
  val split), read as `python -m gpt2_jax.evaluate` reads a val split (data.TextWindows).

Each of the four runs below is a fresh process that loads the model, scores its set twice and reports
both passes' times, its results, and the peak resident memory it added while scoring (Linux's VmHWM,
reset once the model and the data are loaded):

- gpt2_jax HellaSwag: evaluator.Evaluator's scorer, what `python -m gpt2_jax.evaluate` runs, batches
  of --batch-size examples.
- the peer: build-nanogpt's hellaswag.py loop over transformers' GPT2LMHeadModel in fp32: per example
  its 4 rows padded into one [4, L] batch, the logits of every position, the masked per-token losses,
  the lowest sum (acc) and mean (acc_norm).
- gpt2_jax val loss: evaluator.Evaluator's val loss over the K windows, batches of --batch-size.
- the peer: transformers' forward (fp32, torch.no_grad) over the same windows in the same batches,
  cross-entropy over every target.

The first pass holds what a single evaluation pays once (gpt2_jax compiles its programs: one per
padded HellaSwag shape, one for val loss); the table's speed is the second pass's. It also checks
that both sides chose the same ending for every example, and that the two val losses agree.

    python scripts/bench_evaluate.py          # ~5 minutes on 2 CPU cores; --examples N --windows K
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

import gpt2_jax
from gpt2_jax.cli import HelpFormatter, at_least
from gpt2_jax.config import PRESETS

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONTEXT_TOKENS, ENDING_TOKENS = (30, 60), (15, 40)  # uniform, both ends included


def write_examples(text: str, n: int, path: Path, seed: int = 0) -> str:
    """N HellaSwag examples cut from `text` at word starts (the module docstring), as JSON lines; returns
    their mean lengths in GPT-2 tokens, as the scorers tokenize them."""
    import tiktoken

    encoding = tiktoken.get_encoding("gpt2")
    ids = encoding.encode_ordinary(text)
    starts = [i for i, token in enumerate(ids) if encoding.decode_single_token_bytes(token)[:1] in (b" ", b"\n")]
    rng = np.random.RandomState(seed)

    def cut(start, length):
        return encoding.decode(ids[start : start + length]).strip()

    lengths = []
    with open(path, "w") as file:
        for i in range(n):
            context_start = starts[rng.randint(len(starts) - 200)]
            context_length = rng.randint(CONTEXT_TOKENS[0], CONTEXT_TOKENS[1] + 1)
            label = int(rng.randint(4))
            endings = [cut(context_start + context_length if j == label else starts[rng.randint(len(starts) - 200)],
                           rng.randint(ENDING_TOKENS[0], ENDING_TOKENS[1] + 1)) for j in range(4)]
            context = cut(context_start, context_length)
            lengths.append([len(encoding.encode(context)), *(len(encoding.encode(" " + e)) for e in endings)])
            file.write(json.dumps({"ind": i, "activity_label": "Tiny Shakespeare", "ctx_a": context, "ctx_b": "",
                                   "ctx": context, "split": "val", "split_type": "indomain", "label": label,
                                   "endings": endings, "source_id": f"tinyshakespeare~{i}"}) + "\n")
    lengths = np.asarray(lengths)
    return (f"context {lengths[:, 0].mean():.1f} tokens, ending {lengths[:, 1:].mean():.1f}, an example's longest "
            f"row {(lengths[:, :1] + lengths[:, 1:]).max(1).mean():.1f} (means)")


# Each run: (imports, setup: the model and data loaded, a function `score()` -> results). It runs in its own
# process with sys.argv[1:] = (HF directory, hellaswag jsonl, val text file, windows, batch size).
RUNS = {
    "gpt2_jax hellaswag": ("from gpt2_jax import hellaswag\n"
                           "from gpt2_jax.evaluator import Evaluator\n"
                           "from gpt2_jax.loading import load_replicated", """
loaded, model, mesh, params = load_replicated(model_dir)
examples = hellaswag.load_examples(hellaswag_file)
scorer = Evaluator(model, mesh, loaded.tokenizer, batch_size, examples=examples).scorer

def score():
    scores = scorer.score(params, examples, loaded.tokenizer)
    return {"acc": scores["acc"], "acc_norm": scores["acc_norm"],
            "predicted": list(zip(scores["predicted"], scores["predicted_norm"]))}
"""),
    "transformers hellaswag (build-nanogpt's loop)": ("import torch, tiktoken, transformers\n"
                                                      "from torch.nn import functional as F", """
model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
encoding = tiktoken.get_encoding("gpt2")
examples = [json.loads(line) for line in open(hellaswag_file)]

def render(example):  # build-nanogpt's render_example
    context = encoding.encode(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        ending_tokens = encoding.encode(" " + ending)
        rows.append(context + ending_tokens)
        masks.append([0] * len(context) + [1] * len(ending_tokens))
    length = max(len(row) for row in rows)
    tokens, mask = torch.zeros((4, length), dtype=torch.long), torch.zeros((4, length), dtype=torch.long)
    for i, (row, row_mask) in enumerate(zip(rows, masks)):
        tokens[i, : len(row)], mask[i, : len(row_mask)] = torch.tensor(row), torch.tensor(row_mask)
    return tokens, mask

@torch.no_grad()
def score():  # build-nanogpt's evaluate
    predicted = []
    for example in examples:
        tokens, mask = render(example)
        logits = model(tokens).logits
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                                 reduction="none").view(4, -1)
        shift_mask = mask[:, 1:]
        summed = (losses * shift_mask).sum(dim=1)
        predicted.append((summed.argmin().item(), (summed / shift_mask.sum(dim=1)).argmin().item()))
    labels = np.asarray([example["label"] for example in examples])
    return {"acc": float(np.mean(np.asarray(predicted)[:, 0] == labels)),
            "acc_norm": float(np.mean(np.asarray(predicted)[:, 1] == labels)), "predicted": predicted}
"""),
    "gpt2_jax val loss": ("from gpt2_jax.data import TextWindows\n"
                          "from gpt2_jax.evaluator import Evaluator\n"
                          "from gpt2_jax.loading import load_replicated", """
loaded, model, mesh, params = load_replicated(model_dir)
val = TextWindows([open(val_file).read()], loaded.tokenizer, loaded.config.n_positions)
evaluator = Evaluator(model, mesh, loaded.tokenizer, batch_size, val, val_windows=windows)

def score():
    return {"loss": evaluator(params)["val_loss"]["loss"]}
"""),
    "transformers val loss": ("import torch, transformers\n"
                              "from gpt2_jax.data import TextWindows\n"
                              "from gpt2_jax.tokenizer import get_tokenizer", """
model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
val = TextWindows([open(val_file).read()], get_tokenizer("gpt2"), model.config.n_positions)
windows_KxL = torch.from_numpy(np.stack([val[i] for i in range(windows)])).long()

@torch.no_grad()
def score():
    nats = 0.0
    for batch in windows_KxL.split(batch_size):
        logits = model(batch[:, :-1]).logits
        nats += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
    return {"loss": nats / windows_KxL[:, 1:].numel()}
"""),
}
MEASURE = """
import json, sys, time
import numpy as np
{imports}

def memory(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1]) * 1024

model_dir, hellaswag_file, val_file, windows, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
{setup}
open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here: what scoring adds to the loaded model and data
loaded_rss, seconds = memory("VmRSS"), []
for _ in range(2):
    start = time.perf_counter()
    results = score()
    seconds.append(time.perf_counter() - start)
print(json.dumps({{**results, "seconds": seconds, "added": memory("VmHWM") - loaded_rss}}))
"""


def run(name: str, scratch: str, *args) -> dict:
    """One run in a fresh process that imports this process's gpt2_jax (not one in its working directory)."""
    imports, setup = RUNS[name]
    program = MEASURE.format(imports=imports, setup=setup)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(gpt2_jax.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True,
                            cwd=scratch, env=env)
    if result.returncode:
        sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="gpt2", choices=list(PRESETS), help="the model shape (GPT2Config.preset)")
    parser.add_argument("--examples", type=at_least(1), default=120, help="synthetic HellaSwag examples (N)")
    parser.add_argument("--windows", type=at_least(1), default=8, help="val loss windows of context + 1 tokens (K)")
    parser.add_argument("--batch-size", type=at_least(1), default=8,
                        help="examples (HellaSwag) or windows (val loss) a batch: gpt2_jax.evaluate's default")
    parser.add_argument("--tasks", default="hellaswag,val_loss", help="comma-separated, from hellaswag,val_loss")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if not tasks or set(tasks) - {"hellaswag", "val_loss"}:
        parser.error(f"--tasks {args.tasks}: choose from hellaswag,val_loss")
    try:  # the peer: needed to run, not to read --help
        import tiktoken
        import torch
        import transformers
    except ImportError as error:
        parser.error(f"the transformers peer needs {error.name} (pip install torch==2.13.0 transformers)")

    text = SHAKESPEARE.read_text()
    val_text, context = text[int(len(text) * 0.9) :], transformers.GPT2Config(**PRESETS[args.preset]).n_positions
    whole_windows = len(tiktoken.get_encoding("gpt2").encode_ordinary(val_text)) // context  # after <|endoftext|>
    if args.windows > whole_windows:
        parser.error(f"--windows {args.windows}: Tiny Shakespeare's val text holds {whole_windows} windows of {context + 1} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, hellaswag_file, val_file = Path(tmp) / "hf_model", Path(tmp) / "hellaswag.jsonl", Path(tmp) / "val.txt"
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**PRESETS[args.preset])).save_pretrained(model_dir)
        example_lengths = write_examples(text[: int(len(text) * 0.9)], args.examples, hellaswag_file)
        val_file.write_text(val_text)
        common = (model_dir, hellaswag_file, val_file, args.windows, args.batch_size)
        print(f"# {args.preset}, fp32, batch {args.batch_size}; jax {jax.__version__} ({jax.devices()[0].platform}), "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(f"# HellaSwag examples: {example_lengths}; speed from the second pass")
        print("| task | gpt2_jax | transformers | ratio | first pass s (gpt2_jax / transformers) "
              "| memory added MiB (gpt2_jax / transformers) | results |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        if "hellaswag" in tasks:
            ours = run("gpt2_jax hellaswag", tmp, *common)
            theirs = run("transformers hellaswag (build-nanogpt's loop)", tmp, *common)
            agree = sum(tuple(a) == tuple(b) for a, b in zip(ours["predicted"], theirs["predicted"]))
            row(f"HellaSwag, {args.examples} examples (examples/s)", args.examples, ours, theirs,
                f"acc {ours['acc']:.4f} / {theirs['acc']:.4f}, acc_norm {ours['acc_norm']:.4f} / "
                f"{theirs['acc_norm']:.4f}; same choices in {agree}/{args.examples} examples")
        if "val_loss" in tasks:
            tokens = args.windows * context
            ours = run("gpt2_jax val loss", tmp, *common)
            theirs = run("transformers val loss", tmp, *common)
            row(f"val loss, {args.windows} windows of {tokens // args.windows} (tokens/s)", tokens, ours, theirs,
                f"loss {ours['loss']:.6f} / {theirs['loss']:.6f}")


def row(task: str, work: int, ours: dict, theirs: dict, results: str) -> None:
    ours_rate, theirs_rate = work / ours["seconds"][1], work / theirs["seconds"][1]
    print(f"| {task} | {ours_rate:,.{2 if ours_rate < 100 else 0}f} | {theirs_rate:,.{2 if theirs_rate < 100 else 0}f} | "
          f"{ours_rate / theirs_rate:.2f}x | "
          f"{ours['seconds'][0]:.1f} / {theirs['seconds'][0]:.1f} | "
          f"{ours['added'] / 2**20:,.0f} / {theirs['added'] / 2**20:,.0f} | {results} |", flush=True)


if __name__ == "__main__":
    main()
