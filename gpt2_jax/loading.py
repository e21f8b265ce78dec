"""Models on disk as (config, params): any model reference in, Hugging Face directories both ways.

A reference is a Hugging Face hub name (`gpt2`), a local HF directory (config.json +
model.safetensors or pytorch_model.bin, whole or in shards), a params directory written by
`python -m gpt2_jax.convert --from-hf`, or a training workdir (its latest good checkpoint).
A reference is resolved here (a hub name's files fetched with huggingface_hub); the files are hf_files.py's,
hf_weights.py's and checkpoint.py's; the key map is convert.py's.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from gpt2_jax import convert, hf_files, hf_weights, sharding
from gpt2_jax.config import GPT2Config, defaults_taken, read_json
from gpt2_jax.hf_files import WEIGHT_FILES, CheckpointFileError
from gpt2_jax.model import GPT2
from gpt2_jax.model_dirs import is_flax_dir, is_workdir_without_checkpoint
from gpt2_jax.tokenizer import Tokenizer, tokenizer_for_vocab


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    config: GPT2Config
    params: dict  # the real vocabulary's rows only, whatever training padded
    model_dir: Path  # where it was read from (a hub name's download)

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer of its vocabulary (tokenizer.py); GPT-2 BPE from the directory's files if it has them."""
        return tokenizer_for_vocab(self.config.vocab_size, hf_dir=self.model_dir)


def resolve_reference(reference: str) -> Path:
    """The local directory of a model reference: a params directory or workdir as given, an HF one resolved
    (a hub name's files fetched)."""
    return Path(reference) if is_flax_dir(Path(reference)) else resolve_hf(reference)


def resolve_hf(name_or_path: str) -> Path:
    """A local HF directory as is; otherwise a hub name, downloaded with huggingface_hub."""
    path = Path(name_or_path)
    if is_workdir_without_checkpoint(path):
        raise CheckpointFileError(f"{name_or_path}: a training workdir with no checkpoint in it (none saved yet: a run "
                                  "saves its first at step checkpoint_every; or checkpoints/ was removed)")
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.exists():
        raise CheckpointFileError(
            f"{name_or_path}: not a model directory (need config.json + {' or '.join(WEIGHT_FILES)}, "
            "a params directory, or a training workdir)"
        )
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise CheckpointFileError(f"{name_or_path}: no such directory")
    import huggingface_hub  # only for hub names

    try:  # config, tokenizer files, safetensors weights (whole, or in shards and their index); else .bin weights
        download = functools.partial(huggingface_hub.snapshot_download, name_or_path)
        path = Path(download(allow_patterns=["*.json", "*.txt", "model*.safetensors"]))
        return path if any(path.glob("model*.safetensors")) else Path(download(allow_patterns=["pytorch_model*.bin"]))
    except Exception as error:  # the hub's errors are many (network, auth, not found)
        raise CheckpointFileError(
            f"{name_or_path}: no such local directory, and the Hugging Face Hub did not provide it "
            f"({type(error).__name__}); pass a local directory with config.json + model.safetensors"
        ) from None


def load_config(reference: str) -> GPT2Config:
    """A model reference's config.json, without its weights."""
    return GPT2Config.from_json(resolve_reference(reference) / "config.json")


def load_model(reference: str, progress: bool = False) -> LoadedModel:
    """Load `reference` (see the module docstring); `progress` shows the conversion of an HF checkpoint."""
    model_dir = resolve_reference(reference)
    if is_flax_dir(model_dir):
        from gpt2_jax import checkpoint  # orbax, grain, tensorstore: 0.2 s of imports an HF model never uses

        config, params = checkpoint.load_params(model_dir)
        return LoadedModel(config, convert.without_vocab_padding(config, params), model_dir)
    return LoadedModel(*from_hf(str(model_dir), progress), model_dir)


def load_replicated(reference: str):
    """(loaded model, GPT2, mesh over all devices, params replicated on it) for a model reference."""
    loaded = load_model(reference)
    mesh = sharding.make_mesh(1)
    return loaded, GPT2(loaded.config), mesh, jax.device_put(loaded.params, NamedSharding(mesh, P()))


def from_hf(name_or_path: str, progress: bool = False) -> tuple[GPT2Config, dict]:
    """Load an HF GPT-2 (hub name or local directory) as (GPT2Config, params)."""
    model_dir = resolve_hf(name_or_path)
    values = read_json(model_dir / "config.json")
    config = GPT2Config.from_values(values, model_dir / "config.json")
    try:
        return config, convert.params_from_state_dict(config, hf_weights.read_tensors(model_dir), progress)
    except convert.ConversionError as error:  # the weights' shapes against a config.json that left some out?
        note = defaults_taken(values) if isinstance(error, convert.ShapeError) else ""
        raise convert.ConversionError(f"{model_dir}: {error}{note}") from None


def to_hf(config: GPT2Config, params: dict, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
          progress: bool = False, overwrite: bool = False) -> None:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel opens.

    Like transformers, no `lm_head.weight` is stored: the head is tied to `wte`; a padded vocabulary
    is cut to vocab_size. Tokenizer files (vocab.json, merges.txt, ...) are copied from `tokenizer_dir`
    if given. `out_dir` is written whole; one that holds something other than an HF model is refused
    unless `overwrite`.
    """
    hf_files.write_hf_dir(
        Path(out_dir), config.to_dict(), convert.state_dict_from_params(config, params, progress),
        Path(tokenizer_dir) if tokenizer_dir else None, overwrite,
    )
