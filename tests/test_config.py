"""GPT2Config: presets, transformers' config.json schema both ways, clear errors."""

import json

import pytest
import transformers

from gpt2_jax.config import ConfigError, GPT2Config


def test_presets_are_gpt2s_four_sizes():
    shapes = {name: (c.n_layer, c.n_head, c.n_embd) for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
              for c in [GPT2Config.preset(name)]}
    assert shapes == {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    assert GPT2Config.preset("gpt2", n_positions=256).n_positions == 256


def test_config_json_round_trips_through_transformers(tmp_path):
    ours = GPT2Config(vocab_size=257, n_positions=64, n_embd=48, n_layer=2, n_head=3, n_inner=100, layer_norm_epsilon=1e-6)
    ours.to_json(tmp_path / "config.json")
    theirs = transformers.GPT2Config.from_pretrained(tmp_path)
    assert (theirs.vocab_size, theirs.n_embd, theirs.n_inner, theirs.layer_norm_epsilon) == (257, 48, 100, 1e-6)
    assert theirs.tie_word_embeddings and theirs.model_type == "gpt2"
    theirs.save_pretrained(tmp_path / "back")
    assert GPT2Config.from_json(tmp_path / "back" / "config.json") == ours


@pytest.mark.parametrize("make, message", [
    (lambda: GPT2Config(n_embd=100, n_head=3), "n_embd=100 is not divisible by n_head=3"),
    (lambda: GPT2Config(n_layer=0), "n_layer=0 must be a positive integer"),
    (lambda: GPT2Config(activation_function="relu"), "activation_function='relu' is not supported"),
    (lambda: GPT2Config.preset("gpt3"), "unknown preset 'gpt3'"),
    (lambda: GPT2Config.preset("gpt2", n_layers=3), "unknown GPT2Config field"),
    (lambda: GPT2Config.from_dict({"model_type": "llama"}), "model_type='llama' is not gpt2"),
    (lambda: GPT2Config.from_dict({"add_cross_attention": True}), "add_cross_attention=True is not supported"),
    (lambda: GPT2Config.from_json("/no/such/config.json"), "no such file"),
    # Wrong types in a config.json: each one line here, never a traceback from deep in the model.
    (lambda: GPT2Config.from_dict({"layer_norm_epsilon": "abc"}), "layer_norm_epsilon='abc' must be a positive number"),
    (lambda: GPT2Config.from_dict([1, 2]), "a config must be a JSON object of GPT-2 fields, not a list"),
    (lambda: GPT2Config.from_dict({"eos_token_id": "50256"}), "eos_token_id='50256' must be a token id .* or null"),
    (lambda: GPT2Config.from_dict({"bos_token_id": -1}), r"bos_token_id=-1 must be a token id \(an integer >= 0\) or null"),
    (lambda: GPT2Config.from_dict({"n_layer": True}), "n_layer=True must be a positive integer"),
    (lambda: GPT2Config.from_dict({"n_inner": 3.5}), r"n_inner=3.5 must be a positive integer below 2\*\*31, or null"),
    (lambda: GPT2Config.from_dict({"initializer_range": float("nan")}), "initializer_range=nan must be a positive"),
    # was: an OverflowError traceback from jax.eval_shape, converting an int32 argument
    (lambda: GPT2Config.from_dict({"vocab_size": 10**12}),
     r"vocab_size=1000000000000 must be a positive integer below 2\*\*31"),
    (lambda: GPT2Config.from_dict({"n_inner": 2**40}), r"n_inner=1099511627776 must be a positive integer below 2\*\*31, or null"),
])
def test_errors_name_the_key_and_value(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_from_dict_ignores_transformers_only_fields():
    config = json.loads(transformers.GPT2Config(n_layer=2).to_json_string())
    assert GPT2Config.from_dict(config).n_layer == 2


def test_a_config_json_error_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"layer_norm_epsilon": "abc"}')
    with pytest.raises(ConfigError, match=f"{tmp_path / 'config.json'}: layer_norm_epsilon='abc'"):
        GPT2Config.from_json(tmp_path / "config.json")


def test_a_config_json_that_leaves_the_shape_out_is_named_where_that_matters(tmp_path):
    """GPT-2 124M's sizes fill what config.json leaves out (as in transformers): an error they cause says so."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"n_head": 5}))
    with pytest.raises(ConfigError, match=r"n_embd=768 is not divisible by n_head=5 \(config.json gives no n_embd: "
                                          r"GPT-2 124M's taken\)$"):
        GPT2Config.from_json(path)
    path.write_text(json.dumps({"model_type": "bert"}))  # an error of another key: no note
    with pytest.raises(ConfigError, match="model_type='bert' is not gpt2$"):
        GPT2Config.from_json(path)
