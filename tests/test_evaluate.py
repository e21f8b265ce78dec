"""Evaluation: HellaSwag, val_loss and val_bpb against independent transformers computations, the CLI,
evaluations inside a training run, the report and the plots."""

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import jax
import numpy as np
import pytest
import tiktoken
import torch
import transformers
from conftest import (SHAKESPEARE, assert_one_line_error, random_hf_model, read_only, run_main, tiny_run_config,
                      unprivileged)

from gpt2_jax import GPT2Config, evaluate, hellaswag, report, sharding, step, validation
from gpt2_jax.data import TextWindows
from gpt2_jax.errors import UserError
from gpt2_jax.evaluate import evaluate_model
from gpt2_jax.loading import load_model, load_replicated
from gpt2_jax.model import GPT2
from gpt2_jax.report import write_report
from gpt2_jax.tokenizer import get_tokenizer, write_gpt2_files
from gpt2_jax.train import train
from gpt2_jax.validation import LossEvaluator

def torch_hellaswag(model_dir, examples):
    """build-nanogpt's scoring, written again over transformers: per example (summed, mean) choices."""
    model, tokenizer = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval(), get_tokenizer("gpt2")
    choices = []
    for example in examples:
        context, sums, means = tokenizer.encode(example.context), [], []
        for ending in example.endings:
            ending_tokens = tokenizer.encode(" " + ending)
            row = torch.tensor([context + ending_tokens])
            with torch.no_grad():
                logits = model(row[:, :-1]).logits[0]
            losses = torch.nn.functional.cross_entropy(logits, row[0, 1:], reduction="none")[len(context) - 1 :]
            sums.append(losses.sum().item())
            means.append(losses.mean().item())
        choices.append((int(np.argmin(sums)), int(np.argmin(means))))
    return choices


def test_hellaswag_matches_an_independent_transformers_scoring(bpe_model_dir, hellaswag_file):
    examples = hellaswag.load_examples(str(hellaswag_file))
    loaded = load_model(str(bpe_model_dir))
    scorer = hellaswag.HellaSwagScorer(GPT2(loaded.config), sharding.make_mesh(1), examples_per_batch=5)
    ours = scorer.score(loaded.params, examples, loaded.tokenizer)
    theirs = torch_hellaswag(bpe_model_dir, examples)
    assert ours["predicted"] == [s for s, _ in theirs] and ours["predicted_norm"] == [m for _, m in theirs]
    labels = np.asarray([e.label for e in examples])
    assert ours["acc"] == np.mean(np.asarray([s for s, _ in theirs]) == labels)
    assert ours["acc_norm"] == np.mean(np.asarray([m for _, m in theirs]) == labels)
    assert ours["n"] == 12
    assert evaluate_model(str(bpe_model_dir), ["hellaswag"], None, str(hellaswag_file), limit=7)["hellaswag"]["n"] == 7


def test_hellaswag_batches_examples_of_like_length_padded_to_their_longest(bpe_model_dir):
    """Rows were padded to a power of two (45 tokens to 64) in the file's order (short examples padded to
    the long ones beside them); now examples are batched by length, each batch padded to its
    longest row (inputs to a multiple of 16), and the choices come back in the file's order."""
    loaded = load_model(str(bpe_model_dir))
    words = "speak famish resolved know Caius Marcius chief enemy people corn price verdict".split()
    short, long = "Before we proceed", "First Citizen: Before we proceed any further, hear me speak. " * 3
    examples = [hellaswag.Example(long if i % 2 else short, tuple(" ".join(words[i + j : i + j + 2]) for j in range(4)),
                                  i % 4) for i in range(8)]
    scorer = hellaswag.HellaSwagScorer(GPT2(loaded.config), sharding.make_mesh(1), examples_per_batch=4)
    shapes, compiled = [], scorer.losses
    scorer.losses = lambda params, tokens, *rest: shapes.append(tokens.shape) or compiled(params, tokens, *rest)
    ours = scorer.score(loaded.params, examples, loaded.tokenizer)
    assert shapes == [(16, 17), (16, 49)]  # rows of at most 8 tokens, and of 42-45
    theirs = torch_hellaswag(bpe_model_dir, examples)
    assert ours["predicted"] == [s for s, _ in theirs] and ours["predicted_norm"] == [m for _, m in theirs]


def test_hellaswag_runs_the_head_at_the_endings_only(bpe_model_dir):
    """The head (50,257 logits a position) ran at every position of a row, the context's too, whose losses are
    thrown away; now at the endings' targets only: the same losses, and no logits of the whole rows."""
    loaded = load_model(str(bpe_model_dir))
    model, rng = GPT2(loaded.config), np.random.RandomState(3)
    tokens = rng.randint(0, 50257, (8, 49)).astype(np.int32)
    lengths, endings = rng.randint(20, 50, 8), rng.randint(1, 17, 8)  # rows padded to 49; endings of 1-16
    mask = ((np.arange(49) < lengths[:, None]) & (np.arange(49) >= (lengths - endings)[:, None])).astype(np.int32)
    summed, mean = step.ending_losses(model, loaded.params, tokens, mask, 16)
    losses = np.where(mask[:, 1:], step.window_losses(model, loaded.params, tokens), 0).sum(-1)
    np.testing.assert_allclose(summed, losses, rtol=1e-5)
    np.testing.assert_allclose(mean, losses / endings, rtol=1e-5)
    compiled = jax.jit(step.ending_losses, static_argnums=(0, 4)).lower(model, loaded.params, tokens, mask, 16).compile()
    largest = max(np.prod([int(d) for d in s.split(",")]) for s in re.findall(r"f32\[([\d,]+)\]", compiled.as_text()))
    assert largest == 8 * 16 * 50257  # the endings' logits; the rows' were 8 * 48 * 50257


VAL_BYTES = 3000  # the text of Tiny Shakespeare's first 3,000 val bytes (ASCII: 3,000 characters)


def shakespeare_val_text(n_bytes):
    data = open(SHAKESPEARE, "rb").read()
    return data[int(len(data) * 0.9) :][:n_bytes].decode()  # nanoGPT's 90/10 split, as prepare.py makes it


def torch_losses(model_dir, ids, context):
    """transformers' fp32 next-token losses of `ids`, read as windows of context + 1 tokens sharing one
    (the last one shorter): every token but the first a target once."""
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    losses = []
    for start in range(0, len(ids) - 1, context):
        window = torch.tensor(ids[start : start + context + 1])
        with torch.no_grad():
            logits = model(window[None, :-1]).logits[0]
        losses.append(torch.nn.functional.cross_entropy(logits, window[1:], reduction="none"))
    return torch.cat(losses).double()


def test_val_loss_and_bpb_of_a_byte_model_equal_transformers_and_each_other(byte_model_dir, shakespeare_bytes):
    ours = evaluate_model(str(byte_model_dir), ["val_loss"], str(shakespeare_bytes), None, batch_size=6,
                          val_tokens=VAL_BYTES)["val_loss"]
    theirs = torch_losses(byte_model_dir, [256, *shakespeare_val_text(VAL_BYTES).encode()], context=64)
    assert ours["loss"] == pytest.approx(theirs.mean().item(), rel=1e-5)
    assert ours["bytes"] == ours["tokens"] == VAL_BYTES
    assert ours["bpb"] == ours["loss"] / math.log(2)  # the same nats over the same count: exactly
    # A batch larger than the whole set is the whole set, not a 10^8-row allocation.
    whole = evaluate_model(str(byte_model_dir), ["val_loss"], str(shakespeare_bytes), None, batch_size=10**8,
                           val_tokens=VAL_BYTES)["val_loss"]
    assert whole["tokens"] == ours["tokens"] and whole["loss"] == pytest.approx(ours["loss"], rel=1e-6)


def test_bpb_of_a_bpe_model_on_byte_data_equals_transformers_over_the_same_text(bpe_model_dir, shakespeare_bytes):
    ours = evaluate_model(str(bpe_model_dir), ["val_loss"], str(shakespeare_bytes), None, batch_size=5,
                          val_tokens=VAL_BYTES)["val_loss"]
    text = shakespeare_val_text(VAL_BYTES)
    ids = [50256, *tiktoken.get_encoding("gpt2").encode_ordinary(text)]  # one document: no <|endoftext|> target
    theirs = torch_losses(bpe_model_dir, ids, context=64).sum().item() / (math.log(2) * len(text.encode()))
    assert "loss" not in ours  # per-token loss only for the data's own tokenizer
    assert ours["bytes"] == VAL_BYTES and ours["tokens"] == len(ids) - 1
    assert ours["bpb"] == pytest.approx(theirs, rel=1e-5)


def test_end_of_text_is_a_target_of_val_loss_but_no_text_in_val_bpb(bpe_model_dir):
    loaded, model, mesh, params = load_replicated(str(bpe_model_dir))
    documents = ["First Citizen:\nBefore we proceed", "", "any further, hear me speak. 😀 naïve"]
    scores = LossEvaluator(model, mesh, 3, loaded.tokenizer).evaluate(params, TextWindows(documents, loaded.tokenizer, 8))
    encoding = tiktoken.get_encoding("gpt2")
    ids = [token for document in documents for token in (50256, *encoding.encode_ordinary(document))]
    theirs = torch_losses(bpe_model_dir, ids, context=8)
    text = torch.tensor(ids[1:]) != 50256
    assert scores["loss"] == pytest.approx(theirs.mean().item(), rel=1e-5) and scores["tokens"] == len(ids) - 1
    n_bytes = len("".join(documents).encode())
    assert scores["bytes"] == n_bytes
    assert scores["bpb"] == pytest.approx(theirs[text].sum().item() / (math.log(2) * n_bytes), rel=1e-5)


def test_counts_past_int32s_range_add_up_on_the_host(byte_model_dir):
    """The sums ran in int32 on the devices: past 2^31 bytes (FineWeb-Edu's val split read whole) val_bpb was
    negative. Here every byte counts 2^22 (the tokenizer's stand-in), 1,998 bytes: 8.4e9 in 500 batches."""
    loaded, model, mesh, params = load_replicated(str(byte_model_dir))
    heavy = types.SimpleNamespace(token_bytes=lambda: loaded.tokenizer.token_bytes() * 2**22)
    windows = TextWindows([Path(SHAKESPEARE).read_text()[:1998]], loaded.tokenizer, 4)
    heavy_scores, scores = (LossEvaluator(model, mesh, 1, tokenizer).evaluate(params, windows)
                            for tokenizer in (heavy, loaded.tokenizer))
    assert heavy_scores["bytes"] == scores["bytes"] * 2**22 == 1998 * 2**22
    assert heavy_scores["bpb"] == pytest.approx(scores["bpb"] / 2**22, rel=1e-6)
    assert heavy_scores["tokens"] == scores["tokens"]
    assert heavy_scores["loss"] == pytest.approx(scores["loss"], rel=1e-6)


def test_equal_models_share_the_compiled_evaluations(bpe_model_dir, hellaswag_file):
    # evaluate --model A --model B of one shape compiled each program once per model; now once per shape.
    loaded, model, mesh, params = load_replicated(str(bpe_model_dir))
    examples = hellaswag.load_examples(str(hellaswag_file))[:2]
    windows = TextWindows(["First Citizen:\nBefore we proceed any further"], loaded.tokenizer, 8)
    compiled = []
    for _ in range(2):
        same_shape = GPT2(loaded.config)  # a new module, equal to the last
        LossEvaluator(same_shape, mesh, 3, loaded.tokenizer).evaluate(params, windows)
        hellaswag.HellaSwagScorer(same_shape, mesh, examples_per_batch=2).score(params, examples, loaded.tokenizer)
        compiled.append((validation._compiled_accumulate._cache_size(), hellaswag._compiled_losses(mesh)._cache_size()))
    assert compiled[1] == compiled[0]  # the second model compiled nothing


def run_evaluate(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.evaluate", *args], capture_output=True, text=True)


def test_cli_compares_a_bpe_and_a_byte_model_on_the_same_bytes_and_writes_json(
        bpe_model_dir, byte_model_dir, shakespeare_bytes, hellaswag_file, tmp_path):
    result = run_evaluate("--model", str(bpe_model_dir), "--model", str(byte_model_dir), "--tasks", "val_loss,hellaswag",
                          "--data-dir", str(shakespeare_bytes), "--val-tokens", "2000", "--hellaswag", str(hellaswag_file),
                          "--limit", "4", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "eval.json").read_text())
    bpe, byte = saved[str(bpe_model_dir)], saved[str(byte_model_dir)]
    assert set(saved) == {str(bpe_model_dir), str(byte_model_dir)}
    assert bpe["val_loss"]["bytes"] == byte["val_loss"]["bytes"] == 2000  # the same text, each its own tokens
    assert set(bpe["val_loss"]) == {"bpb", "bytes", "tokens"} and byte["val_loss"]["tokens"] == 2000
    assert f"| {bpe_model_dir} | - | {bpe['val_loss']['bpb']:.4f} | 2,000 | " in result.stdout
    assert f"| {byte_model_dir} | {byte['val_loss']['loss']:.4f} | {byte['val_loss']['bpb']:.4f} | 2,000 | " in result.stdout
    assert all(set(result["hellaswag"]) == {"acc", "acc_norm", "n"} for result in saved.values())
    # Progress bars with totals: the byte model reads 2,000 tokens in 32 windows of 64, 4 batches of 8.
    assert re.search(rf"val_loss {re.escape(str(byte_model_dir))}: +\d+%\|.*\| [0-4]/4 \[", result.stderr), result.stderr


def test_running_out_of_memory_is_one_line(bpe_model_dir, shakespeare_bytes, monkeypatch):
    def out_of_memory(*args, **kwargs):  # what XLA raises when a batch does not fit the device
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.")

    monkeypatch.setattr(evaluate, "evaluate_model", out_of_memory)
    result = run_main(evaluate.main, "--model", str(bpe_model_dir), "--tasks", "val_loss", "--data-dir",
                      str(shakespeare_bytes), "--batch-size", "4096")
    assert_one_line_error(result, "out of memory on cpu (RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                          "9.1GiB.); lower --batch-size (now 4096)")


def test_an_out_on_a_full_disk_is_one_line_and_no_file(bpe_model_dir, shakespeare_bytes, tmp_path, monkeypatch):
    """`--out eval.json` on a full disk: it was a traceback, exit 1, and an empty eval.json left behind."""
    real_open = io.open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).parent == tmp_path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_model", lambda *args: {"val_loss": {"loss": 3.25, "bpb": 1.5, "bytes": 1024}})
    monkeypatch.setattr(io, "open", full_disk)  # Path.write_text's
    monkeypatch.setattr("builtins.open", full_disk)
    result = run_main(evaluate.main, "--model", str(bpe_model_dir), "--tasks", "val_loss", "--data-dir",
                      str(shakespeare_bytes), "--out", str(tmp_path / "eval.json"))
    assert_one_line_error(result, f"cannot write {tmp_path / 'eval.json'}: No space left on device")
    assert list(tmp_path.iterdir()) == []  # no empty eval.json, no temporary file


def test_ctrl_c_keeps_the_models_scored_before_it(bpe_model_dir, byte_model_dir, shakespeare_bytes, monkeypatch):
    """Two models, Ctrl-C during the second: the first's results were thrown away, minutes of scoring."""
    def first_then_ctrl_c(model, *args):
        if model == str(byte_model_dir):
            raise KeyboardInterrupt
        return {"val_loss": {"loss": 3.25, "bpb": 1.5, "bytes": 1024}}

    monkeypatch.setattr(evaluate, "evaluate_model", first_then_ctrl_c)
    result = run_main(evaluate.main, "--model", str(bpe_model_dir), "--model", str(byte_model_dir), "--tasks",
                      "val_loss", "--data-dir", str(shakespeare_bytes))
    assert result.returncode == 130 and result.stderr == "interrupted\n", result.stderr
    assert f"| {bpe_model_dir} | 3.2500 |" in result.stdout and str(byte_model_dir) not in result.stdout


def test_a_model_given_twice_is_scored_once(bpe_model_dir, shakespeare_bytes, monkeypatch):
    scored = []
    monkeypatch.setattr(evaluate, "evaluate_model",
                        lambda model, *args: scored.append(model) or {"val_loss": {"loss": 3.25, "bpb": 1.5, "bytes": 1024}})
    result = run_main(evaluate.main, "--model", str(bpe_model_dir), "--model", str(bpe_model_dir), "--tasks",
                      "val_loss", "--data-dir", str(shakespeare_bytes))
    assert result.returncode == 0 and scored == [str(bpe_model_dir)], result.stderr
    assert result.stdout.count(f"| {bpe_model_dir} |") == 1


def test_a_model_with_its_own_gpt2_files_reads_bpe_data_without_tiktokens_files(bpe_model_dir, shakespeare_bpe,
                                                                                tmp_path):
    """The data's text was decoded with tiktoken's files even when the model directory carried the same two."""
    model = Path(shutil.copytree(bpe_model_dir, tmp_path / "model"))
    write_gpt2_files(model)  # vocab.json + merges.txt
    offline = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.evaluate", "--model", str(model), "--tasks", "val_loss",
                             "--data-dir", str(shakespeare_bpe), "--val-tokens", "300"],
                            capture_output=True, text=True, env=offline)
    assert result.returncode == 0 and "| val loss | val bpb |" in result.stdout, result.stderr


def test_cli_bad_input_is_one_line(bpe_model_dir, byte_model_dir, shakespeare_bytes, hellaswag_file, tmp_path):
    model, data = (Path(shutil.copytree(source, tmp_path / name)) for source, name in ((byte_model_dir, "model"),
                                                                                    (shakespeare_bytes, "data")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(hellaswag_file.read_text().splitlines()[0] + "\n" + '{"ctx": "x", "endings": ["a"], "label": 0}\n')
    binary, bool_label = tmp_path / "binary.jsonl", tmp_path / "bool.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    bool_label.write_text('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": true}\n')
    cases = [
        (["--model", str(tmp_path), "--tasks", "hellaswag", "--hellaswag", str(hellaswag_file)], "not a model directory"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(tmp_path / "none.jsonl")],
         "none.jsonl: no such file (give a hellaswag_*.jsonl, or 'official' to download it)"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(tmp_path)],
         f"{tmp_path} is a directory, not a hellaswag_*.jsonl file; give the file"),  # was: "no such file"
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(bad)], "bad.jsonl:2: not a HellaSwag example"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss"], "--tasks val_loss needs --data-dir"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss,bogus", "--data-dir", str(shakespeare_bytes)],
         "--tasks bogus: unknown; choose from val_loss,hellaswag"),
        (["--model", str(byte_model_dir), "--tasks", ",", "--data-dir", str(shakespeare_bytes)],
         "--tasks ',': unknown; choose from val_loss,hellaswag"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(binary)], "binary.jsonl: not UTF-8 text"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(bool_label)],
         "bool.jsonl:1: not a HellaSwag example"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes), "--val-tokens",
          "-5"], "--val-tokens -5: give a count"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes), "--batch-size",
          "0"], "--batch-size 0 must be >= 1"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes), "--limit",
          "-1"], "--limit -1 must be >= 0"),
        # --out is checked before anything is evaluated: here the model would fail to load after it.
        (["--model", str(tmp_path / "none"), "--tasks", "hellaswag", "--out", str(tmp_path)], f"--out {tmp_path}: a directory"),
        (["--model", str(tmp_path / "none"), "--tasks", "hellaswag", "--out", str(tmp_path / "no" / "x.json")],
         "in a directory that is missing or read-only"),
        (["--model", str(tmp_path / "none"), "--tasks", "hellaswag", "--out", str(bad / "x.json")],
         "in a directory that is missing or read-only"),  # under a file: a traceback after the whole evaluation
        # its own inputs: they were replaced by the results (the model then loaded as 124M, the data "unfinished")
        (["--model", str(model), "--tasks", "val_loss", "--data-dir", str(data), "--out", str(model / "config.json")],
         "which this evaluation reads: writing it would replace its own input"),
        (["--model", str(model), "--tasks", "val_loss", "--data-dir", str(data), "--out", str(data / "meta.json")],
         "which this evaluation reads: writing it would replace its own input"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(bad), "--out", str(bad)],
         "which this evaluation reads"),
    ]
    for args, message in cases:
        assert_one_line_error(run_main(evaluate.main, *args), message)
    assert (model / "config.json").read_bytes() == (byte_model_dir / "config.json").read_bytes()
    (model / "eval.json").write_text("{}")  # an earlier evaluation's results beside the model: written again
    assert run_main(evaluate.main, "--model", str(model), "--tasks", "val_loss", "--data-dir", str(data),
                    "--val-tokens", "200", "--out", str(model / "eval.json")).returncode == 0
    assert str(model) in json.loads((model / "eval.json").read_text())


def test_files_this_user_may_not_read_are_named_as_such(byte_model_dir, shakespeare_bytes, tmp_path):
    """a shard was "corrupt", a config.json a PermissionError traceback"""
    data, model = shutil.copytree(shakespeare_bytes, tmp_path / "data"), shutil.copytree(byte_model_dir, tmp_path / "m")
    for name, folder in (("shard_000000.npy", data), ("config.json", model)):
        (folder / name).chmod(0)
        result = subprocess.run([*unprivileged(), sys.executable, "-m", "gpt2_jax.evaluate", "--model", str(model),
                                 "--tasks", "val_loss", "--data-dir", str(data)], capture_output=True, text=True)
        assert_one_line_error(result, f"{folder / name}: cannot read {'the shard' * (folder == data) or 'it'} "
                                      "(Permission denied)")
        (folder / name).chmod(0o644)


def test_bad_data_is_one_line_not_a_traceback_or_wrong_numbers(byte_model_dir, shakespeare_bytes, tmp_path):
    """A val split prepared empty, a meta.json naming a shard it does not list, ids outside the vocabulary."""
    from gpt2_jax.prepare import prepare

    empty, unlisted, garbage = tmp_path / "empty", tmp_path / "unlisted", tmp_path / "garbage"
    prepare([SHAKESPEARE], empty, tokenizer="byte", val_fraction=0.0)
    shutil.copytree(shakespeare_bytes, unlisted)
    shutil.copy(unlisted / "shard_000000.npy", unlisted / "other.npy")
    meta = json.loads((unlisted / "meta.json").read_text())
    meta["shards"][0]["file"] = "other.npy"
    (unlisted / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(shakespeare_bytes, garbage)
    tokens = np.load(garbage / "shard_000000.npy")
    tokens[::7] = 60000
    np.save(garbage / "shard_000000.npy", tokens)
    for data_dir, message in [(empty, f"{empty}: the val split has no tokens; prepare the data into a new --out"),
                              (unlisted, "splits.train[0] reads 'shard_000000.npy', which is not in shards"),
                              (garbage, "shard_000000.npy: corrupt shard (token 60000 at offset 1003856 is outside the "
                                        "vocabulary of 257)")]:
        result = run_main(evaluate.main, "--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir",
                          str(data_dir), "--val-tokens", "5000")
        assert_one_line_error(result, message)


def test_every_models_tokenizer_is_found_before_the_first_is_scored(byte_model_dir, hellaswag_file, tmp_path,
                                                                     monkeypatch):
    odd_vocab = tmp_path / "odd_vocab"
    random_hf_model(vocab_size=300).save_pretrained(odd_vocab)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *args, **kwargs: pytest.fail("a model was scored first"))
    result = run_main(evaluate.main, "--model", str(byte_model_dir), "--model", str(odd_vocab), "--tasks", "hellaswag",
                      "--hellaswag", str(hellaswag_file))
    assert_one_line_error(result, "vocab_size=300 matches no known tokenizer")


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def evaluated_run(shakespeare_bytes, hellaswag_file, tmp_path_factory):
    """(workdir, logged rows, console, compile log) of a 20-step run that evaluates val loss, HellaSwag and
    samples every 10 steps: one run for the tests of evaluations in training and of the report."""
    workdir = tmp_path_factory.mktemp("evaluated_run")
    config = tiny_run_config(shakespeare_bytes, max_steps=20, eval_every=10, hellaswag=str(hellaswag_file),
                             hellaswag_limit=8, num_samples=2, sample_tokens=40, sample_prompt="ROMEO:",
                             block_size=64, tokens_per_step=8 * 64)
    compiles, console = Messages(), io.StringIO()
    logging.getLogger().addHandler(compiles)
    jax.config.update("jax_log_compiles", True)
    try:
        with contextlib.redirect_stdout(console):
            logged = train(config, workdir)
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger().removeHandler(compiles)
    return workdir, logged, console.getvalue(), compiles.messages


def test_val_loss_hellaswag_and_samples_run_inside_training_without_recompiling_the_step(evaluated_run):
    _, logged, out, compiles = evaluated_run
    evaluations = [row for row in logged if "val_loss" in row]
    assert [row["step"] for row in evaluations] == [10, 20]  # training goes on after an evaluation
    assert all(row["val_bpb"] == row["val_loss"] / math.log(2) for row in evaluations)  # bytes, one document
    assert all(0 <= row["hellaswag_acc_norm"] <= 1 and "hellaswag_acc" in row for row in evaluations)
    assert out.count("> ROMEO:") == 2 * 2 and out.count(" | val bpb ") == 2
    assert len([m for m in compiles if "Compiling" in m and "train_step" in m]) == 1


def test_report_compares_the_run_with_its_baseline_or_with_itself(evaluated_run, byte_model_dir, bpe_model_dir,
                                                                  monkeypatch, capsys):
    workdir, logged, _, _ = evaluated_run
    markdown, picture = write_report(workdir, str(byte_model_dir))
    text = markdown.read_text()
    assert "| val loss | lower |" in text and "| val bpb | lower |" in text and "| HellaSwag acc_norm | higher |" in text
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A baseline of another tokenizer: bits per byte over the text of the run's 2 x 8 windows of 64 bytes.
    text = write_report(workdir, str(bpe_model_dir))[0].read_text()
    run_text = shakespeare_val_text(16 * 64 + 1)
    ids = [50256, *tiktoken.get_encoding("gpt2").encode_ordinary(run_text)]
    theirs = torch_losses(bpe_model_dir, ids, context=64).sum().item() / (math.log(2) * len(run_text))
    assert "| val loss |" not in text and "val loss not compared" in text
    assert f"| val bpb | lower | {logged[-1]['val_bpb']:.4f} (20) | {theirs:.4f} |" in text
    # No baseline: the run's own numbers and curves, and no model loaded (nothing from the hub).
    monkeypatch.setattr(report, "load_replicated", lambda reference: pytest.fail(f"loaded {reference}"))
    report.main(["--workdir", str(workdir)])
    evaluations = [row for row in logged if "val_bpb" in row]
    best = min(evaluations, key=lambda row: row["val_bpb"])
    text = (workdir / "report.md").read_text()
    assert text.startswith(f"# {workdir.name}\n") and text in capsys.readouterr().out
    assert f"| val bpb | lower | {logged[-1]['val_bpb']:.4f} (20) | {best['val_bpb']:.4f} ({best['step']}) |" in text
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.report", "--workdir", str(workdir), "--baseline",
                             str(workdir / "nothing")], capture_output=True, text=True)
    assert_one_line_error(result, "no such directory")


def test_a_report_against_a_baseline_names_what_the_run_settings_lack(evaluated_run, byte_model_dir, tmp_path):
    """The baseline is evaluated on the run's data and windows: a train_config.json without them (or with values
    a run never writes), or a data_dir that now holds other data, is one line."""
    workdir = Path(shutil.copytree(evaluated_run[0], tmp_path / "run"))
    settings = json.loads((workdir / "train_config.json").read_text())
    lacking = {key: value for key, value in settings.items() if key not in ("data_dir", "eval_batches")}
    (workdir / "train_config.json").write_text(json.dumps(lacking))
    assert_one_line_error(run_main(report.main, "--workdir", str(workdir), "--baseline", str(byte_model_dir)),
                          "train_config.json: unreadable (it lacks data_dir, eval_batches)")
    for edit, message in (({"block_size": "64"}, "train_config.json: unreadable (values a run never writes: "
                                                  "block_size '64')"),
                          ({"data_fingerprint": "0123456789abcdef"}, f"{settings['data_dir']} no longer holds the "
                                                                      f"data that the run in {workdir} evaluated on"),
                          ({"data_dir": "data/elsewhere"}, "the run's data_dir data/elsewhere (train_config.json) is "
                                                            "relative to where it trained, and not found from")):
        (workdir / "train_config.json").write_text(json.dumps({**settings, **edit}))
        assert_one_line_error(run_main(report.main, "--workdir", str(workdir), "--baseline", str(byte_model_dir)),
                              message)


def fake_run(workdir, vocab_size, val_bpb=True):
    workdir.mkdir()
    GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2).to_json(workdir / "config.json")
    rows = [{"step": s, "train_loss": 5.0 - s / 100, **({"val_loss": 4.0, "val_bpb": 1.5} if s % 50 == 0 else {})}
            for s in range(10, 110, 10)]
    rows = [{k: v for k, v in row.items() if val_bpb or k != "val_bpb"} for row in rows]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(workdir)


def test_a_report_that_cannot_be_written_is_one_line_before_the_baseline_is_scored(tmp_path, monkeypatch):
    """A report.md that is a directory, or a read-only workdir, is refused before the baseline is loaded (minutes
    for GPT-2 with HellaSwag); a write that fails late leaves the report before it whole, and no temporary file."""
    workdir = Path(fake_run(tmp_path / "run", 257))
    (workdir / "train_config.json").write_text("{}")
    monkeypatch.setattr(report, "load_replicated", lambda reference: pytest.fail(f"loaded {reference}"))
    (workdir / "report.md").mkdir()
    assert_one_line_error(run_main(report.main, "--workdir", str(workdir), "--baseline", "gpt2"),
                          f"{workdir / 'report.md'} is a directory; move it away")
    (workdir / "report.md").rmdir()
    writable = read_only(workdir)
    try:
        assert_one_line_error(run_main(report.main, "--workdir", str(workdir), "--baseline", "gpt2"),
                              f"cannot write {workdir / 'report.md'}: {workdir} is read-only here")
    finally:
        writable()
    assert run_main(report.main, "--workdir", str(workdir)).returncode == 0
    before = {path.name: path.read_bytes() for path in workdir.iterdir() if path.is_file()}

    def full_disk(figure, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG, a part")
        raise OSError(28, "No space left on device")

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert_one_line_error(run_main(report.main, "--workdir", str(workdir)),
                          f"cannot write {workdir / 'report.png'}: No space left on device")
    assert {path.name: path.read_bytes() for path in workdir.iterdir() if path.is_file()} == before


def test_a_report_on_no_run_or_a_run_not_yet_evaluated_says_which(tmp_path):
    """Both were 'not a training workdir with evaluations', a run trained with eval_every=0 too."""
    assert_one_line_error(run_main(report.main, "--workdir", str(tmp_path / "none")),
                          "none: not a training workdir (no train_config.json)")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "train_config.json").write_text("{}")
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 10, "train_loss": 5.0}) + "\n")
    assert_one_line_error(run_main(report.main, "--workdir", str(workdir)),
                          "run: no evaluation yet (no val_loss in metrics.jsonl)")


def test_plot_of_rows_with_nothing_to_draw_is_one_line(tmp_path):
    from gpt2_jax.plot import plot_runs

    with pytest.raises(UserError, match="nothing to plot: no metrics.jsonl row of run has train_loss, val_loss"):
        plot_runs({"run": [{"step": 1, "lr": 0.1}]}, tmp_path / "curves.png")  # was matplotlib's ValueError


@pytest.mark.parametrize("suffix, start", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_writes_the_format_its_name_says(tmp_path, suffix, start):
    from gpt2_jax.plot import plot_runs

    rows = [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.5, "val_loss": 2.7}]
    path = plot_runs({"run": rows}, tmp_path / f"curves{suffix}")
    assert path.read_bytes().startswith(start) and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_plot_draws_runs_of_different_tokenizers_in_bits_per_byte(tmp_path):
    plot = [sys.executable, "scripts/plot.py", "--out", str(tmp_path / "curves.png")]
    byte, bpe = fake_run(tmp_path / "byte", 257), fake_run(tmp_path / "bpe", 50257)
    same = subprocess.run([*plot, byte, fake_run(tmp_path / "byte2", 257)], capture_output=True, text=True)
    assert same.returncode == 0 and "bits per byte" not in same.stdout, same.stderr
    mixed = subprocess.run([*plot, byte, bpe], capture_output=True, text=True)
    assert mixed.returncode == 0 and "different tokenizers (byte, gpt2): drawing bits per byte" in mixed.stdout
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = subprocess.run([*plot, byte, fake_run(tmp_path / "old", 50257, val_bpb=False)], capture_output=True, text=True)
    assert old.returncode == 2 and "not all logged val_bpb" in old.stderr
    for out, message in [(tmp_path / "no" / "c.png", "in a directory that is missing"), (tmp_path / "c.txt", "give a file ending")]:
        assert_one_line_error(subprocess.run([sys.executable, "scripts/plot.py", "--out", str(out), byte],
                                             capture_output=True, text=True), message)
    assert_one_line_error(subprocess.run([*plot, str(tmp_path / "none")], capture_output=True, text=True),
                          f"{tmp_path / 'none'}: no such directory")
    assert_one_line_error(subprocess.run([*plot, str(tmp_path)], capture_output=True, text=True),
                          f"{tmp_path}: no metrics.jsonl (not a training workdir?)")
    assert_one_line_error(subprocess.run([*plot, byte, "--bogus"], capture_output=True, text=True),  # was 2 lines
                          "plot: error: unrecognized arguments: --bogus; python scripts/plot.py --help lists the")


BACKEND_AFTER_A_PLOT = """
import sys, matplotlib
matplotlib.use("svg")  # the importer's own choice, as a notebook's inline backend is
import gpt2_jax.train
from gpt2_jax.plot import plot_runs
plot_runs({"run": [{"step": 1, "train_loss": 3.0}]}, sys.argv[1])
print(matplotlib.get_backend())
"""


def test_training_and_plotting_leave_the_importers_matplotlib_backend_alone(tmp_path):
    """plot.py chose Agg for the whole process when imported (train.py imports it): a notebook's plots stopped."""
    drawn = subprocess.run([sys.executable, "-c", BACKEND_AFTER_A_PLOT, str(tmp_path / "c.png")], capture_output=True,
                           text=True)
    assert drawn.stdout.strip() == "svg", drawn.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_panel_labels_both_axes():
    from gpt2_jax.plot import figure

    rows = [{"step": 10, "train_loss": 3.0}, {"step": 20, "train_loss": 2.5, "val_loss": 2.6, "val_bpb": 1.2,
                                              "hellaswag_acc_norm": 0.3}]
    drawn = figure({"run": rows}, {"gpt2": {"val_loss": 2.0, "val_bpb": 1.0}})
    labels = [(axis.get_title(), axis.get_xlabel(), axis.get_ylabel()) for axis in drawn.axes]
    assert labels == [("loss", "step", "nats per token"), ("val bits per byte", "step", "bits per byte"),
                      ("HellaSwag", "step", "acc_norm")]


def test_the_official_hellaswag_file_is_downloaded_whole_or_not_at_all(tmp_path, monkeypatch, hellaswag_file):
    """Downloaded into a temporary file of the process's own, renamed when whole (it was one fixed
    `hellaswag_val.tmp`: two runs downloading at once could rename the other's half-written file into place)."""
    cache = tmp_path / "cache" / "hellaswag_val.jsonl"
    monkeypatch.setattr(hellaswag, "OFFICIAL_CACHE", cache)
    seen = []

    def broken_download(url, to):
        seen.append(Path(to))
        Path(to).write_text(Path(hellaswag_file).read_text()[:100])
        raise OSError("connection reset")

    monkeypatch.setattr(hellaswag.urllib.request, "urlretrieve", broken_download)
    with pytest.raises(hellaswag.HellaSwagError, match=r"cannot download .*connection reset.*; pass a local"):
        hellaswag.load_examples("official")
    offline = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setattr(hellaswag.urllib.request, "urlretrieve", lambda url, to: (_ for _ in ()).throw(offline))
    with pytest.raises(hellaswag.HellaSwagError) as raised:  # the network's error, not "cannot write" the cache
        hellaswag.load_examples("official")
    assert "cannot write" not in str(raised.value) and "Name or service not known" in str(raised.value)
    monkeypatch.setattr(hellaswag.urllib.request, "urlretrieve", lambda url, to: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))  # the cache's disk, not the network: named as such
    with pytest.raises(hellaswag.HellaSwagError, match=f"cannot download .* into {cache.parent} .*No space left"):
        hellaswag.load_examples("official")
    assert os.listdir(cache.parent) == []  # no half file kept, under either name
    assert seen[0].parent == cache.parent and str(os.getpid()) in seen[0].name
    monkeypatch.setattr(hellaswag.urllib.request, "urlretrieve", lambda url, to: shutil.copy(hellaswag_file, to))
    assert hellaswag.load_examples("official") == hellaswag.load_examples(str(hellaswag_file))
    assert os.listdir(cache.parent) == [cache.name]
