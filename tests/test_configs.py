"""Every configs/*.py loads, validates on a plausible machine, and describes the model it says; the
bytes-against-BPE pairs differ only where the tokenizer makes them, at equal FLOPs."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import SHAKESPEARE

from gpt2_jax import sharding
from gpt2_jax.metrics import train_flops_per_token
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import get_tokenizer
from gpt2_jax.train_config import default_config, model_config, validate

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))
EXPECTED_PARAMS = {"gpt2_124m": 124.4e6, "gpt2_350m": 354.8e6, "gpt2_774m": 774.0e6, "gpt2_1558m": 1557.6e6}


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path):
    return load_module(path).get_config()


def vocab_of(path):
    return 257 if "byte" in path.stem else 50257


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_validates_and_shapes(path):
    config = load(path)
    assert set(config.keys()) == set(default_config().keys())  # no typo'd keys
    cpu_sized = path.stem.startswith(("shakespeare", "finetune"))
    validate(config, n_devices=2 if cpu_sized else 8, n_processes=1)
    vocab = vocab_of(path)
    model = GPT2(model_config(config, vocab, vocab - 1), vocab_pad_multiple=config.vocab_pad_multiple)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    count = sum(x.size for x in jax.tree.leaves(params)) - (params["wte"]["embedding"].shape[0] - vocab) * config.n_embd
    if path.stem in EXPECTED_PARAMS:
        assert count == pytest.approx(EXPECTED_PARAMS[path.stem], rel=1e-3)
    sharding.tree_shardings(sharding.make_mesh(config.fsdp), params)  # the rules place every param


def training_flops(path):
    config = load(path)
    return train_flops_per_token(model_config(config, vocab_of(path), vocab_of(path) - 1)), config


def differing_keys(a, b):
    return {key for key in a.keys() if a[key] != b[key]}


def test_the_shakespeare_pair_differs_only_by_tokenizer_at_equal_flops_and_text_per_window():
    configs = Path(__file__).parent.parent / "configs"
    (bpe_flops, bpe), (byte_flops, byte) = (training_flops(configs / f"shakespeare_{t}_pair.py")
                                            for t in ("bpe", "byte"))
    assert differing_keys(bpe, byte) == {"data_dir", "block_size", "vocab_pad_multiple", "tokens_per_step", "max_steps",
                                         "warmup_steps", "log_every", "eval_every", "eval_batches", "checkpoint_every"}
    assert bpe.tokens_per_step // bpe.block_size == byte.tokens_per_step // byte.block_size  # windows per step
    assert bpe_flops * bpe.tokens_per_step * bpe.max_steps == pytest.approx(
        byte_flops * byte.tokens_per_step * byte.max_steps, rel=1e-3)
    bpe_tokenizer = get_tokenizer("gpt2")
    tokens = bpe_tokenizer.encode(open(SHAKESPEARE, encoding="utf-8").read())
    train = tokens[: int(len(tokens) * 0.9)]  # nanoGPT's split, as prepare.py makes it
    bytes_per_token = bpe_tokenizer.token_bytes()[train].sum() / len(train)
    assert byte.block_size == round(bpe.block_size * bytes_per_token)  # the same text per window


def test_the_124m_byte_config_matches_the_bpe_recipes_flops_per_byte_and_bytes_per_step():
    configs = Path(__file__).parent.parent / "configs"
    bytes_per_token = load_module(configs / "gpt2_124m_byte.py").BYTES_PER_BPE_TOKEN
    (bpe_flops, bpe), (byte_flops, byte) = (training_flops(configs / f"{name}.py")
                                            for name in ("gpt2_124m", "gpt2_124m_byte"))
    assert byte_flops == pytest.approx(bpe_flops / bytes_per_token, rel=0.01)
    assert byte.tokens_per_step == pytest.approx(bpe.tokens_per_step * bytes_per_token, rel=0.001)
    assert byte.max_steps == bpe.max_steps and byte.block_size == bpe.block_size == 1024
    assert byte.eval_batches * byte.batch_size * byte.block_size == pytest.approx(
        bpe.eval_batches * bpe.batch_size * bpe.block_size * bytes_per_token, rel=0.01)
