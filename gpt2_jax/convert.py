"""Hugging Face GPT-2 state dicts <-> our params: the key map, and nothing of files or training.

The map is a rename: strip `transformer.`, `h.{i}` -> `h_{i}`, and `weight` ->
`kernel` (Conv1D, already [in, out] like a Dense kernel), `scale` (LayerNorm) or
`embedding` (wte, wpe). HF's own *Flax* checkpoints store kernels transposed: we read
PyTorch weights only. The files are read and written by loading.py (`from_hf`, `to_hf`);
`python -m gpt2_jax.convert` is convert_cli.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from gpt2_jax.config import GPT2Config
from gpt2_jax.errors import UserError
from gpt2_jax.model import GPT2

IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers: no parameters
TIED_HEAD = "lm_head.weight"  # wte's rows again (pytorch_model.bin files hold it; safetensors ones leave it out)


class ConversionError(UserError):
    """A checkpoint that does not map onto GPT2's params."""


class ShapeError(ConversionError):
    """A checkpoint whose params have other shapes than its config gives, or fewer of them."""


def hf_key_to_path(key: str) -> tuple[str, ...]:
    """`transformer.h.0.ln_1.weight` -> ("h_0", "ln_1", "scale")."""
    parts = key.removeprefix("transformer.").split(".")
    if parts[0] == "h" and len(parts) > 1:
        parts = [f"h_{parts[1]}", *parts[2:]]
    if parts[-1] == "weight" and len(parts) > 1:
        owner = parts[-2]
        parts[-1] = "embedding" if owner in ("wte", "wpe") else "scale" if owner.startswith("ln_") else "kernel"
    return tuple(parts)


def path_to_hf_key(path: tuple[str, ...]) -> str:
    """("h_0", "ln_1", "scale") -> `transformer.h.0.ln_1.weight`."""
    parts = list(path)
    if parts[0].startswith("h_"):
        parts = ["h", parts[0][2:], *parts[1:]]
    if parts[-1] in ("kernel", "scale", "embedding"):
        parts[-1] = "weight"
    return "transformer." + ".".join(parts)


def param_shapes(config: GPT2Config) -> dict:
    """The param tree of GPT2(config) as ShapeDtypeStructs, computed without allocating."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(GPT2(config).init, jax.random.key(0), ids)["params"]


def params_from_state_dict(config: GPT2Config, tensors: Iterable[tuple[str, np.ndarray]],
                           progress: bool = False) -> dict:
    """Rename an HF state dict's (name, array) pairs (`state_dict.items()`, or hf_weights.read_tensors' as they are
    read) into GPT2 params, checking every key and shape."""
    expected = traverse_util.flatten_dict(param_shapes(config))
    flat, head = {}, None
    for key, value in tqdm(tensors, desc="convert", unit="tensor", disable=not progress):
        if key == TIED_HEAD:
            head = value
        if key == TIED_HEAD or key.endswith(IGNORED_HF_SUFFIXES):
            continue
        path = hf_key_to_path(key)
        if path not in expected:
            raise ConversionError(f"unexpected key {key!r} in checkpoint (not a GPT-2 parameter)")
        if path in flat:  # two files of a checkpoint in files, or `wte.weight` beside `transformer.wte.weight`
            raise ConversionError(f"{key}: found twice in the checkpoint")
        if tuple(value.shape) != expected[path].shape:
            raise ShapeError(f"{key}: shape {tuple(value.shape)} does not match config ({expected[path].shape})")
        if not jnp.issubdtype(value.dtype, jnp.floating):  # bfloat16 too (ml_dtypes: not np.floating)
            raise ConversionError(f"{key}: holds {value.dtype} values, not floating-point weights")
        if not np.isfinite(value).all():
            raise ConversionError(f"{key}: holds {np.count_nonzero(~np.isfinite(value))} NaN or infinite values")
        flat[path] = jnp.asarray(value, dtype=jnp.float32)
    missing = sorted(path_to_hf_key(p) for p in expected.keys() - flat.keys())
    if missing:
        raise ShapeError(f"checkpoint is missing {len(missing)} parameter(s), e.g. {missing[0]}")
    if head is not None and not np.array_equal(np.asarray(head, np.float32), flat[("wte", "embedding")]):
        # transformers then unties them (its warning) and uses this head: an output head of its own is not GPT-2's
        raise ConversionError(f"{TIED_HEAD} differs from transformer.wte.weight: an untied output head is not "
                              "supported (GPT-2 ties it to the token embedding)")
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(config: GPT2Config, params: dict, progress: bool = False) -> dict[str, np.ndarray]:
    """GPT2 params -> HF state dict (float32; a padded vocabulary is cut to vocab_size)."""
    misfit = first_misfit(config, params)
    if misfit:  # else an export transformers cannot open, or one that silently left a layer out
        raise ConversionError(f"the params do not fit the config ({misfit[0]}: {misfit[1] or 'none'} in the params, "
                              f"the config gives {misfit[2] or 'none'}); pass the config they were made with")
    state_dict = {}
    flat = traverse_util.flatten_dict(without_vocab_padding(config, params))
    for path, value in tqdm(flat.items(), desc="convert", unit="tensor", disable=not progress):
        state_dict[path_to_hf_key(path)] = np.ascontiguousarray(np.asarray(jax.device_get(value), dtype=np.float32))
    return state_dict


def first_misfit(config: GPT2Config, params: dict) -> tuple[str, tuple | None, tuple | None] | None:
    """The first param that does not fit `config`: (its dotted name, its shape, the shape `config` gives; None
    where there is none), or None if all fit. The embedding may hold padded rows (model.py's vocab_pad_multiple)."""
    expected, found = (traverse_util.flatten_dict(tree) for tree in (param_shapes(config), params))
    for key in sorted(expected.keys() | found.keys(), key=lambda key: (key in expected, key)):  # unexpected first
        want, got = (tuple(getattr(tree[key], "shape", ())) if key in tree else None for tree in (expected, found))
        padded = key == ("wte", "embedding") and got and want and got[1:] == want[1:] and got[0] >= want[0]
        if got != want and not padded:
            return ".".join(map(str, key)), got, want
    return None


def without_vocab_padding(config: GPT2Config, params: dict) -> dict:
    """`params` with the embedding's first config.vocab_size rows only: training may pad the vocabulary for
    speed (model.py's vocab_pad_multiple), and the padded rows are never a token."""
    return {**params, "wte": {"embedding": params["wte"]["embedding"][: config.vocab_size]}}


if __name__ == "__main__":  # `python -m gpt2_jax.convert`: the command sits on top of the loader
    from gpt2_jax.convert_cli import main

    main()
