"""HellaSwag, scored as build-nanogpt and llm.c score it: the completion with the lowest loss.

Each of an example's 4 endings is tokenized as " " + ending after the context's tokens and
scored by the cross-entropy of its own tokens only: `acc` picks the lowest summed loss,
`acc_norm` the lowest mean loss per token. Pretrained GPT-2 124M scores acc_norm 0.2955 on
the 10,042 validation examples this way. A context too long for the model keeps its end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import urllib.request
from pathlib import Path

import jax
import numpy as np

from gpt2_jax import outdir, sharding, step
from gpt2_jax.errors import UserError
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import Tokenizer

OFFICIAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
OFFICIAL_CACHE = Path("~/.cache/gpt2_jax/hellaswag_val.jsonl").expanduser()


class HellaSwagError(UserError):
    """A HellaSwag file that is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, str, str, str]
    label: int


def load_examples(path: str, limit: int = 0) -> list[Example]:
    """Examples of a hellaswag_*.jsonl file; `official` downloads the validation set once."""
    if path == "official":
        def download(temporary: Path) -> None:  # no network, no such host: not "cannot write" the cache (write_file's)
            try:
                urllib.request.urlretrieve(OFFICIAL_URL, temporary)
            except urllib.request.URLError as error:
                raise HellaSwagError(f"cannot download {OFFICIAL_URL} ({error.reason}); pass a local copy") from None

        if not OFFICIAL_CACHE.exists():
            try:  # a temporary file of this process's own, renamed when whole: two runs may download at once
                OFFICIAL_CACHE.parent.mkdir(parents=True, exist_ok=True)
                outdir.write_file(OFFICIAL_CACHE, download)
            except (OSError, outdir.OutputError) as error:  # the cache's folder or file (a reset, a full disk)
                raise HellaSwagError(f"cannot download {OFFICIAL_URL} into {OFFICIAL_CACHE.parent} ({error}); "
                                     "pass a local hellaswag_val.jsonl") from None
        path = str(OFFICIAL_CACHE)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HellaSwagError(f"{path}: no such file (give a hellaswag_*.jsonl, or 'official' to download it)") from None
    except IsADirectoryError:
        raise HellaSwagError(f"{path} is a directory, not a hellaswag_*.jsonl file; give the file") from None
    except UnicodeDecodeError as error:
        raise HellaSwagError(f"{path}: not UTF-8 text (byte {error.start}); need a hellaswag_*.jsonl") from None
    except OSError as error:
        raise HellaSwagError(f"{path}: cannot read it ({error.strerror})") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            examples.append(_parse(line, f"{path}:{number}"))
        if limit and len(examples) == limit:
            break
    if not examples:
        raise HellaSwagError(f"{path}: no examples")
    return examples


def _parse(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
        endings, label = record["endings"], record["label"]
        if not (isinstance(record["ctx"], str) and len(endings) == 4 and all(isinstance(e, str) for e in endings)
                and type(label) is int and 0 <= label < 4):  # not True/False, which are ints too
            raise ValueError
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise HellaSwagError(f"{where}: not a HellaSwag example (need ctx, 4 endings and a label 0-3)") from None
    return Example(record["ctx"], tuple(endings), int(label))


def render(example: Example, tokenizer: Tokenizer, max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """(tokens, ending mask) of the 4 rows: context + " " + ending, each at most max_len tokens."""
    context = tokenizer.encode(example.context)
    rows, masks = [], []
    for ending in example.endings:
        ending_tokens = tokenizer.encode(" " + ending)
        keep = max(max_len - len(ending_tokens), 1)  # the context's end, if it must be cut
        row = (context[-keep:] + ending_tokens)[-max_len:]
        rows.append(row)
        masks.append([0] * (len(row) - len(ending_tokens)) + [1] * min(len(ending_tokens), len(row)))
    return rows, masks


class HellaSwagScorer:
    """Scores examples in batches over the mesh: examples of similar lengths together, each batch padded
    to its longest row and its endings' targets each to a multiple of 16 tokens, so one program compiles per
    pair of those lengths (a handful)."""

    def __init__(self, model: GPT2, mesh: jax.sharding.Mesh, examples_per_batch: int = 8):
        self.model, self.examples_per_batch = model, max(examples_per_batch, 1)
        self.rows = -(-4 * self.examples_per_batch // mesh.size) * mesh.size  # padded rows have mask 0
        self.rows_sharding = sharding.batch_sharding(mesh)
        self.losses = functools.partial(_compiled_losses(mesh), model)  # one compile per shape, not per model

    def score(self, params, examples: list[Example], tokenizer: Tokenizer, progress=None) -> dict:
        """{"acc", "acc_norm", "n", "predicted", "predicted_norm"}: the accuracies over `examples` and
        each example's chosen ending by summed and by mean loss."""
        max_len = self.model.config.n_positions + 1  # inputs are the first n_positions tokens
        rendered = [render(example, tokenizer, max_len) for example in examples]
        # Short with short, long with long: in the file's order every batch is padded near its longest example.
        by_length = sorted(range(len(examples)), key=lambda i: max(map(len, rendered[i][0])))
        batches = [by_length[i : i + self.examples_per_batch] for i in range(0, len(examples), self.examples_per_batch)]
        summed_Ex4, mean_Ex4 = np.zeros((2, len(examples), 4), np.float32)
        for batch in batches if progress is None else progress(batches):
            rows = [row for i in batch for row in rendered[i][0]]
            masks = [mask for i in batch for mask in rendered[i][1]]
            # The model reads a row but its last token, and the head reads the endings' targets: each padded to a
            # multiple of 16, so a handful of shapes compile.
            length = min(_multiple_of_16(max(map(len, rows)) - 1) + 1, max_len)
            tokens_NxL, mask_NxL = np.zeros((2, self.rows, length), np.int32)
            for i, (row, mask) in enumerate(zip(rows, masks)):
                tokens_NxL[i, : len(row)], mask_NxL[i, : len(mask)] = row, mask
            ending_targets = min(_multiple_of_16(mask_NxL[:, 1:].sum(-1).max()), length - 1)
            summed_Ex4[batch], mean_Ex4[batch] = (np.asarray(x)[: len(rows)].reshape(-1, 4) for x in self.losses(
                params, *(jax.device_put(a, self.rows_sharding) for a in (tokens_NxL, mask_NxL)), ending_targets))
        predicted, predicted_norm = summed_Ex4.argmin(-1), mean_Ex4.argmin(-1)
        labels = np.asarray([example.label for example in examples])
        return {"acc": float(np.mean(predicted == labels)), "acc_norm": float(np.mean(predicted_norm == labels)),
                "n": len(examples), "predicted": predicted.tolist(), "predicted_norm": predicted_norm.tolist()}


def _multiple_of_16(n) -> int:
    return max(-(-int(n) // 16), 1) * 16


@functools.cache
def _compiled_losses(mesh: jax.sharding.Mesh):
    """step.ending_losses compiled for `mesh` (the model static: equal models share each shape's program). Replicated
    out: every process reads all rows' losses (several processes cannot read a split array)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(step.ending_losses, static_argnums=(0, 4), out_shardings=(replicated, replicated))
