"""Fine-tuning's start (`--config.init_from=REF`): a pretrained model as a run's shape and first params.

REF is anything loading.py reads: a hub name, an HF directory, a params directory or a training
workdir. Its config.json gives the shape; the run's shape keys may only repeat it (a key left at
its default follows REF); block_size may be shorter than REF's context (its first positions are
kept, as nanoGPT's crop_block_size does); the data's tokenizer must be REF's. The embedding is
padded with zero rows as training pads it (the loss never reads them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from gpt2_jax import train_config
from gpt2_jax.config import ConfigError, GPT2Config
from gpt2_jax.loading import load_config, load_model

SHAPE_KEYS = ("n_layer", "n_head", "n_embd")


def model_config(config, meta: dict, workdir: Path) -> GPT2Config:
    """The fine-tuned model's config: REF's (or, on a resume, the run's own: REF may be gone), with
    n_positions = block_size; ConfigError on a disagreement with the run's settings or data (meta.json)."""
    saved = workdir / "config.json"
    pretrained = GPT2Config.from_json(saved) if saved.is_file() else load_config(config.init_from)
    source = f"this run's {saved} (its shape since its first start)" if saved.is_file() else config.init_from
    defaults = train_config.default_config()
    for key in SHAPE_KEYS:
        if config[key] not in (getattr(pretrained, key), defaults[key]):
            # "set", not "drop --config.KEY": the config file may be what set it, not the command line
            raise ConfigError(f"{key}={config[key]} disagrees with {source} ({key}={getattr(pretrained, key)}); with "
                              f"init_from the model's shape comes from its config.json: set {key} to "
                              f"{getattr(pretrained, key)} or back to its default {defaults[key]}, which takes the "
                              f"model's own, in the config file or --config.{key}")
    if config.block_size > pretrained.n_positions:
        raise ConfigError(f"block_size={config.block_size} exceeds the {pretrained.n_positions} positions of "
                          f"{source}; lower --config.block_size")
    if meta["vocab_size"] != pretrained.vocab_size:
        raise ConfigError(f"the data in {config.data_dir} is {meta['tokenizer']} tokens ({meta['vocab_size']} ids), but "
                          f"{config.init_from} reads {pretrained.vocab_size} ids; prepare the data with its tokenizer")
    return dataclasses.replace(pretrained, n_positions=config.block_size)


def initial_params(reference: str, model_config: GPT2Config, abstract_params) -> dict:
    """REF's params shaped like `abstract_params` (the run's): positions cut, embedding rows padded."""
    params = load_model(reference).params
    wte, wpe = params["wte"]["embedding"], params["wpe"]["embedding"]
    padded_rows = abstract_params["wte"]["embedding"].shape[0]
    params = {**params, "wte": {"embedding": np.pad(np.asarray(wte), ((0, padded_rows - wte.shape[0]), (0, 0)))},
              "wpe": {"embedding": np.asarray(wpe)[: model_config.n_positions]}}
    expected = jax.tree_util.tree_structure(abstract_params)
    if jax.tree_util.tree_structure(params) != expected or any(
            np.shape(a) != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(abstract_params))):
        raise ConfigError(f"{reference}: its parameters do not fit the model this run trains ({model_config.n_layer} "
                          f"layers, {model_config.n_embd} wide: a workdir keeps the shape of its first start); "
                          "use a new --workdir, or the init_from it started with")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)
