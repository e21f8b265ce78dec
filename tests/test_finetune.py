"""Fine-tuning (`init_from`): a pretrained model's shape and params, a lower val loss, an export that
transformers reads, and the mistakes users make, each one line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, config_flags_of, tiny_run_config

from gpt2_jax import GPT2
from gpt2_jax.config import GPT2Config
from gpt2_jax.loading import load_model
from gpt2_jax.sharding import make_mesh
from gpt2_jax.train import train
from gpt2_jax.validation import LossEvaluator
from gpt2_jax.data import WindowSource

ROOT = Path(__file__).parent.parent


def finetune_config(data_dir, init_from, **overrides):
    # The shape keys stay at their defaults (124M): init_from's config.json decides them.
    config = tiny_run_config(data_dir, init_from=str(init_from), max_steps=30, learning_rate=3e-3, warmup_steps=0,
                             min_lr_ratio=1.0, eval_every=30, eval_batches=4, log_every=10)
    config.n_layer, config.n_head, config.n_embd = 12, 12, 768
    config.update(overrides)
    return config


def val_loss(reference, data_dir, windows=32):
    loaded = load_model(str(reference))
    evaluator = LossEvaluator(GPT2(loaded.config), make_mesh(1), 8, loaded.tokenizer)
    return evaluator.evaluate(loaded.params, WindowSource(data_dir, "val", 32), windows)["loss"]


@pytest.fixture(scope="module")
def finetuned(bpe_model_dir, shakespeare_bpe, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finetuned")
    logged = train(finetune_config(shakespeare_bpe, bpe_model_dir), workdir)
    return workdir, logged


def test_finetuning_takes_the_pretrained_shape_and_lowers_its_val_loss(finetuned, bpe_model_dir, shakespeare_bpe):
    workdir, logged = finetuned
    shape = GPT2Config.from_json(workdir / "config.json")
    pretrained = GPT2Config.from_json(bpe_model_dir / "config.json")
    assert (shape.n_layer, shape.n_head, shape.n_embd, shape.vocab_size) == (2, 2, 16, 50257)
    assert shape.n_positions == 32 < pretrained.n_positions  # block_size 32: the first 32 positions kept
    before = val_loss(bpe_model_dir, shakespeare_bpe)
    after = [row["val_loss"] for row in logged if "val_loss" in row][-1]
    assert after < 0.9 * before, (before, after)


def test_the_finetuned_model_exports_to_transformers(finetuned, tmp_path):
    import torch
    import transformers

    workdir, _ = finetuned
    export = subprocess.run([sys.executable, "-m", "gpt2_jax.convert", "--to-hf", str(workdir), "--out",
                             str(tmp_path / "hf")], capture_output=True, text=True, cwd=ROOT)
    assert export.returncode == 0, export.stderr
    loaded = load_model(str(workdir))
    ids = np.random.RandomState(0).randint(0, 50257, (2, 32))
    ours = np.asarray(GPT2(loaded.config).apply({"params": loaded.params}, ids))
    with torch.no_grad():
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_resumed_finetune_resumes_from_its_own_checkpoints(bpe_model_dir, shakespeare_bpe, tmp_path):
    reference = tmp_path / "pretrained"
    reference.symlink_to(bpe_model_dir)
    train(finetune_config(shakespeare_bpe, reference, max_steps=20, eval_every=0), tmp_path / "run")
    reference.unlink()  # gone: a resume must not need it
    logged = train(finetune_config(shakespeare_bpe, reference, max_steps=30, eval_every=0), tmp_path / "run")
    assert [row["step"] for row in logged if "train_loss" in row] == [30]
    # Its shape is the run's own now: a longer block is refused naming the run's config.json, not REF.
    longer = finetune_config(shakespeare_bpe, bpe_model_dir, block_size=48, tokens_per_step=8 * 48, max_steps=40)
    assert_one_line_error(run_cli(longer, tmp_path / "run"), f"block_size=48 exceeds the 32 positions of this run's "
                                                            f"{tmp_path / 'run' / 'config.json'}")


def run_cli(config, workdir):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.train", f"--config={ROOT / 'configs' / 'shakespeare_byte.py'}",
                           f"--workdir={workdir}", *config_flags_of(config)], capture_output=True, text=True, cwd=ROOT)


def test_a_shape_key_that_disagrees_is_one_line(bpe_model_dir, shakespeare_bpe, tmp_path):
    config = finetune_config(shakespeare_bpe, bpe_model_dir, n_layer=3)
    assert_one_line_error(run_cli(config, tmp_path), f"n_layer=3 disagrees with {bpe_model_dir} (n_layer=2); with "
                          "init_from the model's shape comes from its config.json: set n_layer to 2 or back to its "
                          "default 12, which takes the model's own, in the config file or --config.n_layer")
    config = finetune_config(shakespeare_bpe, bpe_model_dir, block_size=128, tokens_per_step=8 * 128)
    assert_one_line_error(run_cli(config, tmp_path), "block_size=128 exceeds the 64 positions")
    assert not (tmp_path / "config.json").exists()


def test_data_of_another_tokenizer_is_one_line(bpe_model_dir, shakespeare_bytes, tmp_path):
    config = finetune_config(shakespeare_bytes, bpe_model_dir)
    assert_one_line_error(run_cli(config, tmp_path), "is byte tokens (257 ids), but")


def test_the_finetune_config_loads_and_names_a_pretrained_model():
    from gpt2_jax.train_flags import parse_flags

    config, _ = parse_flags(["train", f"--config={ROOT / 'configs' / 'finetune_shakespeare.py'}", "--workdir=x"])
    assert config.init_from == "gpt2" and config.min_lr_ratio == 1.0 and config.warmup_steps == 0
