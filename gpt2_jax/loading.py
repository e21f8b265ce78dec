"""Any model reference -> (config, params, tokenizer).

A reference is a Hugging Face hub name (`gpt2`), a local HF directory (config.json +
model.safetensors or pytorch_model.bin), a params directory written by
`python -m gpt2_jax.convert --from-hf`, or a training workdir (its latest good checkpoint).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gpt2_jax import checkpoint, convert, hf_files
from gpt2_jax.config import GPT2Config
from gpt2_jax.tokenizer import Tokenizer, tokenizer_for_vocab


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: GPT2Config
    params: dict
    tokenizer: Tokenizer


def load_model(reference: str, progress: bool = False) -> LoadedModel:
    """Load `reference` (see the module docstring); the tokenizer follows from the vocabulary size."""
    if checkpoint.is_flax_dir(Path(reference)):
        model_dir = Path(reference)
        config, params = checkpoint.load_params(model_dir)
        # Training may pad the embedding rows for speed; the real vocabulary is the first rows.
        params = {**params, "wte": {"embedding": params["wte"]["embedding"][: config.vocab_size]}}
    else:
        model_dir = hf_files.resolve(reference)
        config, params = convert.from_hf(str(model_dir), progress)
    return LoadedModel(config, params, tokenizer_for_vocab(config.vocab_size, hf_dir=model_dir))
