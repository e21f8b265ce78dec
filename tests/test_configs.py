"""Every configs/*.py loads, validates on a plausible machine, and describes the model it says."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from gpt2_jax import sharding
from gpt2_jax.model import GPT2
from gpt2_jax.train_config import default_config, model_config, validate

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))
EXPECTED_PARAMS = {"gpt2_124m": 124.4e6, "gpt2_350m": 354.8e6, "gpt2_774m": 774.0e6, "gpt2_1558m": 1557.6e6}


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_validates_and_shapes(path):
    config = load(path)
    assert set(config.keys()) == set(default_config().keys())  # no typo'd keys
    validate(config, n_devices=2 if path.stem == "shakespeare_byte" else 8, n_processes=1)
    vocab = 257 if path.stem == "shakespeare_byte" else 50257
    model = GPT2(model_config(config, vocab, vocab - 1), vocab_pad_multiple=config.vocab_pad_multiple)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    count = sum(x.size for x in jax.tree.leaves(params)) - (params["wte"]["embedding"].shape[0] - vocab) * config.n_embd
    if path.stem in EXPECTED_PARAMS:
        assert count == pytest.approx(EXPECTED_PARAMS[path.stem], rel=1e-3)
    sharding.tree_shardings(sharding.make_mesh(config.fsdp), params)  # the rules place every param
