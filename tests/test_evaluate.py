"""Evaluation: HellaSwag and val_loss against independent transformers computations, the CLI,
evaluations inside a training run, and the report."""

import json
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import assert_one_line_error, tiny_run_config

from gpt2_jax import hellaswag, sharding
from gpt2_jax.data import WindowSource
from gpt2_jax.evaluate import evaluate_model
from gpt2_jax.loading import load_model
from gpt2_jax.model import GPT2
from gpt2_jax.report import write_report
from gpt2_jax.tokenizer import get_tokenizer
from gpt2_jax.train import train

WORDS = "the a man woman dog runs jumps slowly into water after before ball red green house".split()


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory):
    """Twelve examples in the official hellaswag_val.jsonl format, random words, random labels."""
    rng = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    lines = []
    for i in range(12):
        context = " ".join(rng.choice(WORDS, rng.randint(5, 25)))
        endings = [" ".join(rng.choice(WORDS, rng.randint(2, 12))) + "." for _ in range(4)]
        lines.append(json.dumps({"ind": i, "activity_label": "Test", "ctx_a": context, "ctx_b": "", "ctx": context,
                                 "split": "val", "split_type": "indomain", "label": int(rng.randint(4)),
                                 "endings": endings, "source_id": f"test~{i}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


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


def test_val_loss_equals_transformers_on_the_same_windows(byte_model_dir, shakespeare_bytes):
    ours = evaluate_model(str(byte_model_dir), ["val_loss"], str(shakespeare_bytes), None, limit=50, batch_size=6)
    source = WindowSource(shakespeare_bytes, "val", 64)
    windows = torch.from_numpy(np.stack([source[i] for i in range(50)])).long()
    model = transformers.GPT2LMHeadModel.from_pretrained(byte_model_dir).eval()
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, 257), windows[:, 1:].reshape(-1)).item()
    assert ours["val_loss"]["loss"] == pytest.approx(theirs, rel=1e-5)


def run_evaluate(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.evaluate", *args], capture_output=True, text=True)


def test_cli_compares_models_and_writes_json(bpe_model_dir, byte_model_dir, hellaswag_file, tmp_path):
    result = run_evaluate("--model", str(bpe_model_dir), "--model", str(byte_model_dir), "--tasks", "hellaswag",
                          "--hellaswag", str(hellaswag_file), "--limit", "4", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    assert f"| {bpe_model_dir} |" in result.stdout and f"| {byte_model_dir} |" in result.stdout
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) == {str(bpe_model_dir), str(byte_model_dir)}
    assert all(set(result["hellaswag"]) == {"acc", "acc_norm", "n"} for result in saved.values())


def test_cli_bad_input_is_one_line(bpe_model_dir, byte_model_dir, shakespeare_bytes, hellaswag_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(hellaswag_file.read_text().splitlines()[0] + "\n" + '{"ctx": "x", "endings": ["a"], "label": 0}\n')
    cases = [
        (["--model", str(tmp_path), "--tasks", "hellaswag", "--hellaswag", str(hellaswag_file)], "not a model directory"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(tmp_path / "none.jsonl")], "no such file"),
        (["--model", str(bpe_model_dir), "--tasks", "hellaswag", "--hellaswag", str(bad)], "bad.jsonl:2: not a HellaSwag example"),
        (["--model", str(bpe_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes)],
         "uses gpt2 tokens but"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss"], "val_loss needs --data-dir"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes), "--batch-size",
          "0"], "--batch-size 0 must be >= 1"),
        (["--model", str(byte_model_dir), "--tasks", "val_loss", "--data-dir", str(shakespeare_bytes), "--limit",
          "-1"], "--limit -1 >= 0"),
        # --out is checked before anything is evaluated: here the model would fail to load after it.
        (["--model", str(tmp_path / "none"), "--tasks", "hellaswag", "--out", str(tmp_path)], f"--out {tmp_path}: a directory"),
        (["--model", str(tmp_path / "none"), "--tasks", "hellaswag", "--out", str(tmp_path / "no" / "x.json")],
         "in a directory that is missing or read-only"),
    ]
    for args, message in cases:
        assert_one_line_error(run_evaluate(*args), message)


def test_val_loss_hellaswag_and_samples_run_inside_training_without_recompiling_the_step(
        shakespeare_bytes, hellaswag_file, tmp_path, capsys, caplog):
    config = tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=10, hellaswag=str(hellaswag_file),
                             hellaswag_limit=8, num_samples=2, sample_tokens=40, sample_prompt="ROMEO:")
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            logged = train(config, tmp_path)
    finally:
        jax.config.update("jax_log_compiles", False)
    evaluations = [row for row in logged if "val_loss" in row]
    assert [row["step"] for row in evaluations] == [10, 20, 30]
    assert all(0 <= row["hellaswag_acc_norm"] <= 1 and "hellaswag_acc" in row for row in evaluations)
    assert capsys.readouterr().out.count("> ROMEO:") == 3 * 2
    train_step_compiles = [r for r in caplog.records if "Compiling" in r.getMessage() and "train_step" in r.getMessage()]
    assert len(train_step_compiles) == 1


def test_report_compares_the_run_with_its_baseline(shakespeare_bytes, byte_model_dir, hellaswag_file, tmp_path):
    train(tiny_run_config(shakespeare_bytes, max_steps=30, eval_every=10, hellaswag=str(hellaswag_file),
                          hellaswag_limit=8, block_size=64, tokens_per_step=8 * 64), tmp_path)
    markdown, picture = write_report(tmp_path, str(byte_model_dir))
    text = markdown.read_text()
    assert "| val loss | lower |" in text and "| HellaSwag acc_norm | higher |" in text
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.report", "--workdir", str(tmp_path), "--baseline",
                             str(tmp_path / "nothing")], capture_output=True, text=True)
    assert_one_line_error(result, "no such directory")
